"""spec.context in the cluster: the operator reads the named ConfigMaps into Postgres, or says which is missing.

The Kubernetes API server is the one mocked part (kmock): nothing real can run here.
"""

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from mge.adapters.store.store import Store
from tests.support.operator import eventually, running_operator

pytestmark = pytest.mark.component

REPO = Path(__file__).resolve().parents[2]
NS = "team-a"


def _example() -> tuple[dict[str, Any], dict[str, Any]]:
    config_map, plan = yaml.safe_load_all((REPO / "examples" / "pricing" / "masterplan.yaml").read_text())
    return config_map, plan


def _reason(api: Any, type_: str) -> str | None:
    plan = next(o for o in api.objects_of("masterplans", NS) if o["metadata"]["name"] == "pricing")
    found = [c for c in (plan.get("status") or {}).get("conditions") or [] if c["type"] == type_]
    return f"{found[0]['status']}/{found[0]['reason']}" if found else None


async def _documents(dsn: str) -> dict[str, str]:
    store = await Store.connect(dsn)
    try:
        rows = await store.pool.fetch(
            """SELECT d.origin, d.body FROM context_documents d JOIN masterplans m ON m.id = d.masterplan_id
               WHERE m.namespace = $1 AND m.retired_at IS NULL""",
            NS,
        )
        return {r["origin"]: r["body"] for r in rows}
    finally:
        await store.close()


async def test_context_configmaps_are_read_into_the_store_and_a_missing_one_is_named(cluster, pg):
    config_map, plan = _example()
    async with running_operator(cluster, pg, [NS]):
        response = await cluster.client.post(
            f"/apis/mge.devmatrix.io/v1alpha1/namespaces/{NS}/masterplans", json=plan
        )
        assert response.status_code == 201, response.text
        await eventually(lambda: _reason(cluster, "Planned") == "False/ContextSourceNotFound")
        plan_object = next(o for o in cluster.objects_of("masterplans", NS))
        message = next(c for c in plan_object["status"]["conditions"] if c["type"] == "Planned")["message"]
        assert "kubectl create configmap pricing-handbook" in message
        assert await _documents(pg) == {}

        response = await cluster.client.post(
            f"/api/v1/namespaces/{NS}/configmaps", json=copy.deepcopy(config_map)
        )
        assert response.status_code == 201, response.text
        await eventually(lambda: _reason(cluster, "Planned") == "True/Planned", timeout=15)
        documents = await eventually(_documents_present(pg))
        assert set(documents) == {
            "configmap/pricing-handbook/pricing.md",
            "configmap/pricing-handbook/style.md",
        }
        assert "ROUND_HALF_UP" in documents["configmap/pricing-handbook/pricing.md"]


def _documents_present(dsn: str) -> Any:
    async def check() -> dict[str, str] | None:
        return await _documents(dsn) or None

    return check
