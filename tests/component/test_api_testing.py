"""/api/v2/testing and /api/v2/precision on real Postgres: requests, gate, results, precision, clear 4xx errors."""

import uuid

import pytest

from mge.acceptance.gate import GateVerdict, TestStatus
from mge.acceptance.requirements import Priority, Requirement
from mge.acceptance.templates import GeneratedTest
from mge.adapters.sandbox import TestRunResult
from mge.adapters.store.acceptance import AcceptanceStore
from mge.adapters.store.store import Store
from mge.models.masterplan import Language
from mge.plan.dag import plan_dag
from mge.precision.score import IntegrationCheck, PrecisionScore
from tests.builders import atom, spec, succeed
from tests.support.api import api_client

pytestmark = pytest.mark.component

NS = "team-a"
MUST_1 = Requirement("MUST-1", Priority.MUST, "greets", 3)
SHOULD_1 = Requirement("SHOULD-1", Priority.SHOULD, "in Spanish", 5)


@pytest.fixture
async def api(pg):
    grants = [
        (NS, "masterplans", "get"),
        (NS, "masterplans/acceptance", "generate"),
        (NS, "masterplans/acceptance", "run"),
    ]
    async with api_client(pg, grants) as client:
        yield client


@pytest.fixture
async def plan(pg):
    """A registered two-wave plan (a0 <- a1) whose first wave succeeded and has two tests."""
    store = await Store.connect(pg)
    try:
        atoms = [atom("a0"), atom("a1", "a0")]
        plan_id, _ = await store.register_plan(
            namespace=NS,
            name="shop",
            trace_id="00000000-0000-4000-8000-0000000000aa",
            generation=1,
            spec=spec(*atoms),
            atoms=atoms,
            plan=plan_dag((a.id, a.depends_on) for a in atoms),
        )
        for claimed in await store.claim("ex", 1, 30):
            await succeed(store, claimed, "ex", "X = 1\n")
        accept = AcceptanceStore(store.pool)
        tests = [
            (
                GeneratedTest(
                    "MUST-1", Language.PYTHON, "acceptance_tests/test_must_1.py", "def test_must_1(): ..."
                ),
                MUST_1,
                0,
            ),
            (
                GeneratedTest(
                    "SHOULD-1",
                    Language.PYTHON,
                    "acceptance_tests/test_should_1.py",
                    "def test_should_1(): ...",
                ),
                SHOULD_1,
                0,
            ),
        ]
        await accept.save_tests(plan_id, "00000000-0000-4000-8000-0000000000aa", tests)
        yield plan_id, accept
    finally:
        await store.close()


async def test_gate_and_precision_are_pending_until_the_verdict_then_report_it(api, plan):
    plan_id, accept = plan
    pending = await api.get(f"/api/v2/testing/gate/{plan_id}")
    not_yet = await api.get(f"/api/v2/precision/{plan_id}")
    verdict = GateVerdict(False, 0.0, 100.0, ("MUST-1",), (), 0, "Gate S failed: MUST 0/1")
    await accept.save_verdict(
        plan_id,
        verdict,
        PrecisionScore(score=45.0, spec=33.33, integration=50.0, validation=50.0),
        [
            IntegrationCheck("python-compiles", True, "ok"),
            IntegrationCheck("python-imports", False, "no module x"),
        ],
    )

    gate = (await api.get(f"/api/v2/testing/gate/{plan_id}")).json()
    precision = (await api.get(f"/api/v2/precision/{plan_id}")).json()

    assert (pending.status_code, pending.json()["status"]) == (200, "pending")
    assert not_yet.status_code == 409
    assert "not computed yet" in not_yet.json()["detail"]
    assert (gate["status"], gate["failed_must"], gate["must_pass_rate"]) == ("failed", ["MUST-1"], 0.0)
    assert gate["message"] == "Gate S failed: MUST 0/1"
    assert (precision["score"], precision["weights"]) == (
        45.0,
        {"spec": 50.0, "integration": 30.0, "validation": 20.0},
    )
    assert [c["name"] for c in precision["integration_checks"] if not c["passed"]] == ["python-imports"]
    assert precision["gate_passed"] is False


async def test_results_are_paged_oldest_first(api, plan):
    plan_id, accept = plan
    await accept.save_results(
        plan_id,
        0,
        [
            TestRunResult("MUST-1", TestStatus.FAILED, 0.5, "assert 1 == 2"),
            TestRunResult("SHOULD-1", TestStatus.PASSED, 0.25, ""),
        ],
    )

    first = (await api.get(f"/api/v2/testing/results/{plan_id}", params={"limit": 1})).json()
    second = (
        await api.get(f"/api/v2/testing/results/{plan_id}", params={"limit": 1, "after": first["next_after"]})
    ).json()

    assert [(r["requirement_id"], r["status"], r["output"]) for r in first["results"]] == [
        ("MUST-1", "failed", "assert 1 == 2")
    ]
    assert [r["requirement_id"] for r in second["results"]] == ["SHOULD-1"]


async def test_rerunning_a_finished_wave_names_its_job_and_clears_the_verdict(api, plan):
    plan_id, accept = plan
    await accept.save_verdict(
        plan_id, GateVerdict(True, 100.0, 100.0, (), (), 0, "ok"), PrecisionScore(90, 90, 90, 90)
    )

    response = await api.post(f"/api/v2/testing/run/{plan_id}:0")

    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["wave"], body["request"], body["job"]) == (0, 1, f"shop-accept-w0-r1-{plan_id.hex[:5]}")
    assert await accept.verdict(plan_id) is None
    assert 0 not in await accept.result_waves(plan_id)


async def test_a_wave_whose_atoms_have_not_succeeded_cannot_run_yet(api, plan):
    plan_id, _ = plan

    response = await api.post(f"/api/v2/testing/run/{plan_id}:1")

    assert response.status_code == 409
    assert "wave 1 has 0/1 atoms succeeded" in response.json()["detail"]


@pytest.mark.parametrize(
    ("path", "code", "says"),
    [
        ("/api/v2/testing/run/not-a-wave", 422, "wave_id must be <masterplanId>:<wave index>"),
        ("/api/v2/testing/run/{plan}:7", 404, "there is no wave 7"),
        (f"/api/v2/testing/run/{uuid.UUID(int=5)}:0", 404, "no Masterplan with id"),
        ("/api/v2/testing/generate/nope", 422, "masterplan_id must be a UUID"),
    ],
)
async def test_bad_requests_name_the_field_or_the_missing_thing(api, plan, path, code, says):
    plan_id, _ = plan

    response = await api.post(path.format(plan=plan_id))

    assert response.status_code == code
    assert says in response.json()["detail"]


async def test_generation_is_requested_once_per_call_and_refused_while_running(api, plan):
    plan_id, accept = plan

    first = await api.post(f"/api/v2/testing/generate/{plan_id}")
    await accept.claim_generation("ex-1", 60, plan_id)
    busy = await api.post(f"/api/v2/testing/generate/{plan_id}")

    assert (first.status_code, first.json()["request"]) == (202, 1)
    assert await accept.generation_state(plan_id) == "running"
    assert busy.status_code == 409
    assert "being generated right now" in busy.json()["detail"]


async def test_unknown_plans_are_404_on_every_read(api):
    missing = uuid.UUID(int=9)

    for path in (
        f"/api/v2/testing/gate/{missing}",
        f"/api/v2/testing/results/{missing}",
        f"/api/v2/precision/{missing}",
    ):
        response = await api.get(path)
        assert response.status_code == 404, path
