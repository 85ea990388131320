"""The operator runs a Job per wave for the acceptance tests, reads their results from the pod log, writes Gate S.

The Kubernetes API server is the mocked part (kmock-based fake): nothing real can run here. This test plays
the Job controller and kubelet for it: it runs the released Job's command, the real `mge acceptance-job`, as a
subprocess on the real ConfigMap, and serves its stdout as the pod log. Postgres, the executor, the LLM server
and the sandboxed test runs are real.
"""

import asyncio
import base64
import contextlib
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from prometheus_client import REGISTRY

from mge.acceptance.requirements import parse_requirements
from mge.acceptance.templates import GeneratedTest
from mge.adapters.acceptance_job import JOB_LABEL, AcceptanceJobConfig
from mge.adapters.llm import ExamplesReplayLLM
from mge.adapters.store.acceptance import AcceptanceStore
from mge.adapters.store.store import Store
from mge.cost.pricing import DEFAULT_PRICES
from mge.executor.validation import CodeValidator
from mge.executor.worker import Executor, ExecutorConfig
from mge.models.masterplan import Language
from tests.support.executor import running_executor
from tests.support.kube_api import KubeAPI
from tests.support.operator import eventually, fake_cluster, running_operator

pytestmark = pytest.mark.component

REPO = Path(__file__).resolve().parents[2]
NS = "team-a"
GROUP_PATH = f"/apis/mge.devmatrix.io/v1alpha1/namespaces/{NS}"
CONFIG = AcceptanceJobConfig(image="mge:test", active_deadline_s=300, ttl_after_finished_s=600, workers=2)

# Spec-derived tests for the hello example; MUST-2 is deliberately wrong (greet rejects an empty name).
TESTS = {
    "MUST-1": (
        1,
        "from hello.greet import greet\n\ndef test_must_1():\n    assert greet('Ada') == 'Hello, Ada!'\n",
    ),
    "MUST-2": (1, "from hello.greet import greet\n\ndef test_must_2():\n    assert greet('') == ''\n"),
    "MUST-3": (
        3,
        "import runpy, sys\n\ndef test_must_3(capsys, monkeypatch):\n"
        "    monkeypatch.setattr(sys, 'argv', ['hello', 'Ada'])\n"
        "    try:\n        runpy.run_module('hello', run_name='__main__')\n"
        "    except SystemExit as stop:\n        assert stop.code in (0, None)\n"
        "    assert capsys.readouterr().out.strip() == 'Hello, Ada!'\n",
    ),
    "SHOULD-1": (
        1,
        "from hello.greet import greet\n\ndef test_should_1():\n    assert greet('Ada', language='es') == '¡Hola, Ada!'\n",
    ),
    "SHOULD-2": (
        1,
        "from hello.greet import greet\n\ndef test_should_2():\n    assert greet('Ada', language='xx') == 'Hello, Ada!'\n",
    ),
}


FIXED_MUST_2 = (
    "import pytest\nfrom hello.greet import greet\n\ndef test_must_2():\n"
    "    with pytest.raises(ValueError):\n        greet('')\n"
)


def hello() -> dict[str, Any]:
    body = yaml.safe_load((REPO / "examples" / "hello" / "masterplan.yaml").read_text())
    body["metadata"]["namespace"] = NS
    return body


def _masterplan(api: KubeAPI) -> dict[str, Any]:
    return next(o for o in api.objects_of("masterplans", NS) if o["metadata"]["name"] == "hello")


def _condition(api: KubeAPI, type_: str) -> dict[str, Any] | None:
    conditions = (_masterplan(api).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == type_), None)


def _reason(api: KubeAPI, type_: str) -> str | None:
    condition = _condition(api, type_)
    return f"{condition['status']}/{condition['reason']}" if condition else None


async def _store_tests(
    store: Store, accept: AcceptanceStore, plan_id: Any, markdown: str, chosen: dict[str, tuple[int, str]]
) -> None:
    """What an executor's test generation stores (the LLM part is PIPELINE's and tested there)."""
    assert await accept.claim_generation("generator", 60, plan_id) == plan_id
    requirements = {r.id: r for r in parse_requirements(markdown).requirements}
    trace = await store.pool.fetchval("SELECT trace_id FROM masterplans WHERE id = $1", plan_id)
    tests = [
        (
            GeneratedTest(
                rid, Language.PYTHON, f"acceptance_tests/test_{rid.lower().replace('-', '_')}.py", code
            ),
            requirements[rid],
            wave,
        )
        for rid, (wave, code) in chosen.items()
    ]
    await accept.delete_tests_except(plan_id, list(chosen))
    await accept.save_tests(plan_id, trace, tests)
    assert await accept.finish_generation(plan_id, "generator")


async def _generate_tests(dsn: str, chosen: dict[str, tuple[int, str]]) -> None:
    store = await Store.connect(dsn)
    try:
        accept = AcceptanceStore(store.pool)
        plan_id = await eventually(lambda: store.live_run(NS, "hello"))
        await eventually(lambda: accept.generation_state(plan_id), timeout=20)
        await _store_tests(store, accept, plan_id, hello()["spec"]["requirements"], chosen)
    finally:
        await store.close()


def _per_run(name: str) -> str:
    """A Job's name without the run id suffix, which differs on every run of the test."""
    return name.rsplit("-", 1)[0]


async def _kubelet(api: KubeAPI, workdir: Path, ran: list[str], killed: frozenset[str]) -> None:
    """Run each released Job's container command for real and publish its stdout as the pod's log.

    Jobs in `killed` end as the Job controller ends one past activeDeadlineSeconds: Failed, no pod left.
    `ran` and `killed` name Jobs without their run id suffix.
    """
    while True:
        for job in api.objects_of("jobs", NS):
            name = job["metadata"]["name"]
            if job["spec"].get("suspend") or _per_run(name) in ran:
                continue
            ran.append(_per_run(name))
            if _per_run(name) in killed:
                failed = {
                    "type": "Failed",
                    "status": "True",
                    "reason": "DeadlineExceeded",
                    "message": "too slow",
                }
                await api.client.patch(
                    f"/apis/batch/v1/namespaces/{NS}/jobs/{name}/status",
                    json={"status": {"failed": 1, "conditions": [failed]}},
                    headers={"Content-Type": "application/merge-patch+json"},
                )
                continue
            (cm,) = [c for c in api.objects_of("configmaps", NS) if c["metadata"]["name"] == name]
            bundle = workdir / f"{name}.tar.gz"
            bundle.write_bytes(base64.b64decode(cm["binaryData"]["bundle.tar.gz"]))
            args = list(job["spec"]["template"]["spec"]["containers"][0]["args"])
            args[args.index("--input") + 1] = str(bundle)
            args[args.index("--workdir") + 1] = str(workdir / name)
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "mge.cli", *args, stdout=asyncio.subprocess.PIPE
            )
            stdout, _ = await process.communicate()
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"{name}-p", "labels": {JOB_LABEL: name}},
            }
            response = await api.client.post(f"/api/v1/namespaces/{NS}/pods", json=pod)
            assert response.status_code == 201, response.text
            api.pod_logs[(NS, f"{name}-p")] = stdout.decode()
            status = {"status": {"succeeded": 1} if process.returncode == 0 else {"failed": 1}}
            response = await api.client.patch(
                f"/apis/batch/v1/namespaces/{NS}/jobs/{name}/status",
                json=status,
                headers={"Content-Type": "application/merge-patch+json"},
            )
            assert response.status_code == 200, response.text
        await asyncio.sleep(0.1)


@pytest.fixture
async def cluster():
    import httpx

    async with fake_cluster() as api, httpx.AsyncClient(base_url=str(api.url)) as client:
        api.client = client
        yield api


def _with_jobs(deps: Any) -> None:
    deps.acceptance = CONFIG


async def _rerun_wave_1_with_a_fixed_must_2(api: KubeAPI, dsn: str) -> None:
    """What an approver does after fixing a test: regenerate it, then POST /api/v2/testing/run/<id>:1."""
    store = await Store.connect(dsn)
    try:
        accept = AcceptanceStore(store.pool)
        plan_id = await eventually(lambda: store.live_run(NS, "hello"))
        (stored,) = [t for t in await accept.tests(plan_id, 1) if t.requirement.id == "MUST-2"]
        fixed = GeneratedTest("MUST-2", Language.PYTHON, stored.test.path, FIXED_MUST_2)
        trace = await store.pool.fetchval("SELECT trace_id FROM masterplans WHERE id = $1", plan_id)
        await accept.save_tests(plan_id, trace, [(fixed, stored.requirement, 1)])
        assert await accept.request_wave_run(plan_id, 1) == 2
        await accept.clear_verdict(plan_id)
    finally:
        await store.close()


async def _run(
    api: KubeAPI,
    dsn: str,
    tests: dict[str, tuple[int, str]],
    until: str,
    killed: frozenset[str] = frozenset(),
    rerun_until: str | None = None,
    then: Callable[[KubeAPI, str], Awaitable[None]] = _rerun_wave_1_with_a_fixed_must_2,
) -> list[str]:
    """Apply hello, store its tests, let a real executor generate the atoms; the Jobs this took, in order."""
    response = await api.client.post(f"{GROUP_PATH}/masterplans", json=hello())
    assert response.status_code == 201, response.text
    ran: list[str] = []
    with tempfile.TemporaryDirectory() as workdir:
        async with running_operator(api, dsn, [NS], customize=_with_jobs):
            await _generate_tests(dsn, tests)
            kubelet = asyncio.create_task(_kubelet(api, Path(workdir), ran, killed))
            try:
                async with running_executor(dsn, REPO / "examples" / "hello" / "responses.jsonl"):
                    type_, reason = until.split("=")
                    await eventually(lambda: _reason(api, type_) == reason, timeout=90)
                if rerun_until is not None:
                    await then(api, dsn)
                    again_type, again_reason = rerun_until.split("=")
                    await eventually(lambda: _reason(api, again_type) == again_reason, timeout=60)
                # A few more ticks: nothing is created or saved twice.
                await asyncio.sleep(1.5)
            finally:
                kubelet.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await kubelet
    return ran


async def test_rerunning_a_wave_with_a_fixed_test_completes_the_plan(cluster, pg):
    ran = await _run(
        cluster, pg, TESTS, "Failed=True/GateSFailed", rerun_until="Complete=True/AllRequirementsPassed"
    )

    assert ran == ["hello-accept-w1-r1", "hello-accept-w3-r1", "hello-accept-w1-r2"]
    status = _masterplan(cluster)["status"]
    assert (status["phase"], status["gate"]["status"]) == ("Succeeded", "Passed")
    assert _reason(cluster, "GateSPassed") == "True/AllRequirementsPassed"
    assert _reason(cluster, "Failed") == "False/AcceptanceTestsRunning"
    assert status["precision"]["spec"] == 100.0


async def _drop_must_2_from_the_spec(api: KubeAPI, dsn: str) -> None:
    """kubectl apply of the spec without MUST-2; then an executor's generation of the new tests."""
    body = hello()
    lines = body["spec"]["requirements"].splitlines()
    body["spec"]["requirements"] = (
        "\n".join(line for line in lines if "rejects an empty name" not in line) + "\n"
    )
    response = await api.client.patch(
        f"{GROUP_PATH}/masterplans/hello",
        json={"spec": {"requirements": body["spec"]["requirements"]}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert response.status_code == 200, response.text
    store = await Store.connect(dsn)
    try:
        accept = AcceptanceStore(store.pool)
        plan_id = await eventually(lambda: store.live_run(NS, "hello"))
        await eventually(lambda: _requested(accept, plan_id), timeout=20)
        renumbered = {
            "MUST-1": TESTS["MUST-1"],
            "MUST-2": TESTS["MUST-3"],
            **{k: TESTS[k] for k in ("SHOULD-1", "SHOULD-2")},
        }
        await _store_tests(store, accept, plan_id, body["spec"]["requirements"], renumbered)
    finally:
        await store.close()


async def _requested(accept: AcceptanceStore, plan_id: Any) -> bool:
    return await accept.generation_state(plan_id) == "requested"


async def test_changed_requirements_are_tested_again_and_decide_a_new_gate(cluster, pg):
    ran = await _run(
        cluster,
        pg,
        TESTS,
        "Failed=True/GateSFailed",
        rerun_until="Complete=True/AllRequirementsPassed",
        then=_drop_must_2_from_the_spec,
    )

    assert ran == ["hello-accept-w1-r1", "hello-accept-w3-r1", "hello-accept-w1-r2", "hello-accept-w3-r2"]
    assert _masterplan(cluster)["status"]["gate"]["status"] == "Passed"


async def test_a_job_killed_at_its_deadline_records_errors_and_fails_the_gate(cluster, pg):
    await _run(cluster, pg, TESTS, "Failed=True/GateSFailed", killed=frozenset({"hello-accept-w1-r1"}))

    gate = _condition(cluster, "GateSPassed")
    assert "MUST-1" in gate["message"]
    assert "MUST-1 (error)" in gate["message"]
    warnings = [e for e in cluster.objects_of("events", NS) if e.get("reason") == "AcceptanceJobFailed"]
    assert len(warnings) == 1
    assert "DeadlineExceeded" in warnings[0]["message"]


async def test_wave_jobs_run_restricted_and_a_failing_must_test_fails_the_plan_naming_it(cluster, pg):
    ran = await _run(cluster, pg, TESTS, "Failed=True/GateSFailed")

    assert ran == ["hello-accept-w1-r1", "hello-accept-w3-r1"]
    jobs = {_per_run(j["metadata"]["name"]): j for j in cluster.objects_of("jobs", NS)}
    assert sorted(jobs) == ran
    pod = jobs["hello-accept-w1-r1"]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    assert jobs["hello-accept-w1-r1"]["metadata"]["ownerReferences"][0]["kind"] == "Masterplan"
    policies = cluster.objects_of("networkpolicies", NS)
    assert sorted(_per_run(p["metadata"]["name"]) for p in policies) == ran
    assert all(
        p["spec"]["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in p["spec"] for p in policies
    )
    assert "--integration" in jobs["hello-accept-w3-r1"]["spec"]["template"]["spec"]["containers"][0]["args"]

    status = _masterplan(cluster)["status"]
    gate = _condition(cluster, "GateSPassed")
    assert (gate["status"], gate["reason"]) == ("False", "MustRequirementFailed")
    assert "MUST-2" in gate["message"]
    assert "MUST-2" in _condition(cluster, "Failed")["message"]
    assert _condition(cluster, "Complete") is None
    assert status["gate"] == {
        "status": "Failed",
        "mustPassRate": pytest.approx(66.67, abs=0.01),
        "shouldPassRate": 100.0,
    }
    assert status["phase"] == "Failed"
    precision = status["precision"]
    assert precision["integration"] == 100.0
    assert 0 < precision["spec"] < 100
    assert precision["score"] == pytest.approx(
        0.5 * precision["spec"] + 0.3 * precision["integration"] + 0.2 * precision["validation"], abs=0.01
    )
    wave1 = next(w for w in cluster.objects_of("waves", NS) if w["metadata"]["name"] == "hello-wave-1")
    assert wave1["status"]["tests"] == {
        "total": 4,
        "passed": 3,
        "failed": 1,
        "mustPassRate": 50.0,
        "shouldPassRate": 100.0,
    }
    store = await Store.connect(pg)
    try:
        results = await AcceptanceStore(store.pool).results(await store.live_run(NS, "hello"))
    finally:
        await store.close()
    # The failed MUST-2 ran again with the last wave, on the finished project, and failed again.
    assert sorted(r.requirement_id for r in results) == sorted([*TESTS, "MUST-2"])
    assert [(r.wave, r.status.value) for r in results if r.requirement_id == "MUST-2"] == [
        (1, "failed"),
        (3, "failed"),
    ]
    reasons = {e.get("reason") for e in cluster.objects_of("events", NS)}
    assert {"AcceptanceJobStarted", "AcceptanceTestsReported", "GateSFailed"} <= reasons
    labels = {"namespace": NS, "masterplan": "hello"}
    assert REGISTRY.get_sample_value("v2_gate_s_status", labels) == 0
    assert REGISTRY.get_sample_value("v2_precision_score", labels) == precision["score"]
    assert (
        REGISTRY.get_sample_value("v2_precision_score_components", {**labels, "component": "integration"})
        == 100
    )


async def _tests_not_passing(dsn: str) -> list[tuple[str, str, str]]:
    """(requirement, status, output) of every acceptance test run that did not pass: what a failure shows."""
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT requirement_id, status, output FROM acceptance_test_results WHERE status <> 'passed'"
        )
    finally:
        await connection.close()
    return [(r["requirement_id"], r["status"], r["output"]) for r in rows]


@pytest.mark.parametrize(("example", "atoms"), [("hello", 6), ("ts-utils", 16)])
async def test_demo_mode_runs_an_example_unchanged_to_gate_s_labelled_as_a_replay(
    cluster, pg, example, atoms
):
    """What `helm install --set demo.enabled=true` does: the operator labels the plan, executors replay the
    packaged examples (test generation included), the Jobs run the bundles the operator builds."""
    body = yaml.safe_load((REPO / "examples" / example / "masterplan.yaml").read_text())
    body["metadata"]["namespace"] = NS
    response = await cluster.client.post(f"{GROUP_PATH}/masterplans", json=body)
    assert response.status_code == 201, response.text
    examples = str(REPO / "examples")

    def demo(deps: Any) -> None:
        deps.acceptance = CONFIG
        deps.llm_replay = examples

    def condition(type_: str) -> dict[str, Any] | None:
        plan = next(o for o in cluster.objects_of("masterplans", NS) if o["metadata"]["name"] == example)
        return next(
            (c for c in (plan.get("status") or {}).get("conditions") or [] if c["type"] == type_), None
        )

    def reason(type_: str) -> str | None:
        found = condition(type_)
        return f"{found['status']}/{found['reason']}" if found else None

    ran: list[str] = []
    with tempfile.TemporaryDirectory() as workdir:
        async with running_operator(cluster, pg, [NS], customize=demo):
            kubelet = asyncio.create_task(_kubelet(cluster, Path(workdir), ran, frozenset()))
            store = await Store.connect(pg)
            validator = CodeValidator()
            stop = asyncio.Event()
            worker = asyncio.create_task(
                Executor(
                    store,
                    ExamplesReplayLLM(REPO / "examples"),
                    validator,
                    DEFAULT_PRICES,
                    ExecutorConfig("demo-1"),
                ).run(stop)
            )
            try:
                ended = ("True/AllRequirementsPassed", "True/GateSFailed", "True/AtomsFailed")
                await eventually(lambda: {reason("Complete"), reason("Failed")} & set(ended), timeout=300)
            finally:
                stop.set()
                await worker
                await validator.close()
                await store.close()
                kubelet.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await kubelet

    plan = next(o for o in cluster.objects_of("masterplans", NS) if o["metadata"]["name"] == example)
    not_passing = await _tests_not_passing(pg)
    assert reason("Complete") == "True/AllRequirementsPassed", (plan["status"]["conditions"], not_passing)
    assert plan["status"]["progress"] == f"{atoms}/{atoms}"
    assert (plan["status"]["phase"], plan["status"]["gate"]["status"]) == ("Succeeded", "Passed")
    assert reason("GateSPassed") == "True/AllRequirementsPassed"
    replay = condition("LLMReplay")
    assert replay is not None
    assert (replay["status"], replay["reason"]) == ("True", "RecordedAnswers")
    assert examples in replay["message"]
    assert ran
