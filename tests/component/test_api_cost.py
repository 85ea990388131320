"""/api/v2/cost on real Postgres, with overrides authenticated and authorized by the (fake) Kubernetes API.

The Kubernetes API server is the mocked part (tests/support/kube_api.py answers TokenReview and
SubjectAccessReview like a real one would for the users it is given).
"""

from decimal import Decimal

import httpx
import pytest

from mge.adapters.kube import Kube, load_client_configuration
from mge.adapters.store.ledger import CostLedger
from mge.adapters.store.store import Store
from mge.api.app import create_app
from mge.plan.dag import plan_dag
from tests.builders import atom, spec, succeed
from tests.support.operator import fake_cluster

pytestmark = pytest.mark.component

NS = "team-a"
READER = {"Authorization": "Bearer bob-token"}


@pytest.fixture
async def api(pg):
    async with fake_cluster() as cluster:
        cluster.tokens = {"alice-token": ("alice", ["devs"]), "bob-token": ("bob", ["devs"])}
        cluster.grants = {("alice", NS, "masterplans/budget", "approve"), ("bob", NS, "masterplans", "get")}
        kube = Kube(load_client_configuration(str(cluster.url)))
        app = create_app(pg, kube)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                client.cluster = cluster
                yield client
        kube.close()


async def _spent_plan(pg: str, spent: str, limit: float = 10.0) -> str:
    """A Masterplan with 4 atoms, 2 finished, `spent` USD settled."""
    store = await Store.connect(pg)
    try:
        atoms = [atom(f"a{i}") for i in range(4)]
        plan_id, _ = await store.register_plan(
            namespace=NS,
            name="shop",
            trace_id="00000000-0000-4000-8000-0000000000ee",
            generation=1,
            spec=spec(*atoms, budget={"limitUSD": limit}),
            atoms=atoms,
            plan=plan_dag((a.id, a.depends_on) for a in atoms),
        )
        ledger = CostLedger(store.pool)
        for claimed in await store.claim("ex", 2, 30):
            reservation = await ledger.reserve(claimed, "ex", Decimal(spent) / 2)
            await ledger.settle(
                reservation, claimed, amount=Decimal(spent) / 2, prompt_tokens=1, completion_tokens=1
            )
            await succeed(store, claimed, "ex", "X = 1\n")
    finally:
        await store.close()
    return str(plan_id)


async def test_cost_status_reports_spend_caps_and_projection(api, pg):
    plan_id = await _spent_plan(pg, "8")

    response = await api.get(f"/api/v2/cost/{plan_id}", headers=READER)

    assert response.status_code == 200
    body = response.json()
    assert (body["namespace"], body["name"], body["status"]) == (NS, "shop", "soft_cap_exceeded")
    assert Decimal(body["current_cost_usd"]) == Decimal(8)
    assert Decimal(body["soft_cap_usd"]) == Decimal(7)
    assert Decimal(body["utilization_percentage"]) == Decimal(80)
    assert Decimal(body["projected_total_cost_usd"]) == Decimal(16)  # 2 of 4 atoms cost 8
    assert body["will_exceed_budget"] is True


@pytest.mark.parametrize(
    ("path", "code"), [("00000000-0000-4000-8000-000000000000", 404), ("not-a-uuid", 422)]
)
async def test_unknown_or_malformed_ids_are_client_errors(api, path, code):
    response = await api.get(f"/api/v2/cost/{path}", headers=READER)

    assert response.status_code == code
    assert "masterplan" in response.json()["detail"].lower()


async def test_events_are_paginated_oldest_first(api, pg):
    plan_id = await _spent_plan(pg, "2")

    first = (await api.get(f"/api/v2/cost/{plan_id}/events", params={"limit": 3}, headers=READER)).json()
    rest = (
        await api.get(f"/api/v2/cost/{plan_id}/events", params={"after": first["next_after"]}, headers=READER)
    ).json()

    kinds = [e["kind"] for e in first["events"] + rest["events"]]
    assert kinds == ["reserve", "settle", "reserve", "settle"]
    assert first["next_after"] == first["events"][-1]["id"]
    assert rest["next_after"] is None


async def test_override_needs_a_bearer_token_the_cluster_accepts(api, pg):
    plan_id = await _spent_plan(pg, "2")
    body = {"limit_usd": "20", "reason": "more"}

    missing = await api.post(f"/api/v2/cost/{plan_id}/override", json=body)
    rejected = await api.post(
        f"/api/v2/cost/{plan_id}/override", json=body, headers={"Authorization": "Bearer nope"}
    )

    assert (missing.status_code, rejected.status_code) == (401, 401)
    assert "TokenReview" in rejected.json()["detail"]


async def test_override_by_a_non_approver_is_forbidden(api, pg):
    plan_id = await _spent_plan(pg, "2")

    response = await api.post(
        f"/api/v2/cost/{plan_id}/override",
        json={"limit_usd": "20", "reason": "more"},
        headers={"Authorization": "Bearer bob-token"},
    )

    assert response.status_code == 403
    assert "approve on masterplans/budget" in response.json()["detail"]


async def test_override_below_spend_is_rejected_naming_the_field(api, pg):
    plan_id = await _spent_plan(pg, "8")

    response = await api.post(
        f"/api/v2/cost/{plan_id}/override",
        json={"limit_usd": "5", "reason": "cut"},
        headers={"Authorization": "Bearer alice-token"},
    )

    assert response.status_code == 400
    assert "limitUSD" in response.json()["detail"]


async def test_override_without_a_reason_is_rejected_naming_the_field(api, pg):
    plan_id = await _spent_plan(pg, "2")

    response = await api.post(
        f"/api/v2/cost/{plan_id}/override",
        json={"limit_usd": "20"},
        headers={"Authorization": "Bearer alice-token"},
    )

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "reason"]


async def test_approver_override_patches_the_masterplan_as_the_caller(api, pg):
    plan_id = await _spent_plan(pg, "8")
    cluster = api.cluster
    async with httpx.AsyncClient(base_url=str(cluster.url)) as kube_client:
        body = {
            "apiVersion": "mge.devmatrix.io/v1alpha1",
            "kind": "Masterplan",
            "metadata": {"name": "shop", "namespace": NS},
            "spec": {"atoms": [], "budget": {"limitUSD": 10}},
        }
        assert (
            await kube_client.post(f"/apis/mge.devmatrix.io/v1alpha1/namespaces/{NS}/masterplans", json=body)
        ).status_code == 201

    response = await api.post(
        f"/api/v2/cost/{plan_id}/override",
        json={"limit_usd": "25", "reason": "two more waves"},
        headers={"Authorization": "Bearer alice-token"},
    )

    assert response.status_code == 200, response.text
    assert response.json()["approved_by"] == "alice"
    (masterplan,) = cluster.objects_of("masterplans", NS)
    assert masterplan["spec"]["budget"] == {
        "limitUSD": 10,
        "override": {"limitUSD": 25.0, "approvedBy": "alice", "reason": "two more waves"},
    }
