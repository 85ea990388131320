"""The real kopf operator against the fake Kubernetes API (kmock-based) and a real Postgres.

The Kubernetes API server is the one mocked part: nothing real can run here. Executors, Postgres and
the LLM server in these tests are real processes/servers.
"""

import asyncio
import copy
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from prometheus_client import REGISTRY

from mge.adapters.store.store import Store
from tests.support.executor import running_executor
from tests.support.operator import eventually, running_operator
from tests.support.postgres import with_database

pytestmark = pytest.mark.component

REPO = Path(__file__).resolve().parents[2]
HELLO_RECORDING = REPO / "examples" / "hello" / "responses.jsonl"
NS = "team-a"
GROUP_PATH = f"/apis/mge.devmatrix.io/v1alpha1/namespaces/{NS}"


def hello() -> dict[str, Any]:
    body = yaml.safe_load((REPO / "examples" / "hello" / "masterplan.yaml").read_text())
    body["metadata"]["namespace"] = NS
    return body


def _condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    conditions = ((obj or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == type_), None)


def _metric(name: str, **labels: str) -> float | None:
    """The operator runs in this process (its own thread), so its metrics are in the default registry."""
    return REGISTRY.get_sample_value(name, {"namespace": NS, "masterplan": "hello", **labels})


def _masterplan(api, name: str = "hello") -> dict[str, Any] | None:
    return next((o for o in api.objects_of("masterplans", NS) if o["metadata"]["name"] == name), None)


def _reason(api, type_: str, name: str = "hello") -> str | None:
    condition = _condition(_masterplan(api, name), type_)
    return f"{condition['status']}/{condition['reason']}" if condition else None


async def _apply(api, body: dict[str, Any]) -> None:
    response = await api.client.post(f"{GROUP_PATH}/masterplans", json=body)
    assert response.status_code == 201, response.text


async def _patch(api, name: str, patch: dict[str, Any]) -> None:
    response = await api.client.patch(
        f"{GROUP_PATH}/masterplans/{name}",
        json=patch,
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert response.status_code == 200, response.text


async def test_applied_masterplan_gets_owned_waves_conditions_trace_id_and_events(cluster, pg):
    await _apply(cluster, hello())

    async with running_operator(cluster, pg, [NS]):
        await eventually(lambda: _reason(cluster, "Progressing") == "False/AwaitingExecutors")
        waves = cluster.objects_of("waves", NS)
        masterplan = _masterplan(cluster)

    assert [w["metadata"]["name"] for w in waves] == [f"hello-wave-{i}" for i in range(4)]
    assert waves[0]["spec"]["atomIds"] == ["languages", "validation"]
    owner = waves[0]["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "Masterplan",
        "hello",
        masterplan["metadata"]["uid"],
    )
    assert owner["controller"] is True
    assert waves[0]["metadata"]["labels"]["mge.devmatrix.io/masterplan"] == "hello"
    status = masterplan["status"]
    assert _condition(masterplan, "Planned")["status"] == "True"
    assert (status["phase"], status["progress"], status["waves"]["total"], status["observedGeneration"]) == (
        "Planned",
        "0/6",
        4,
        1,
    )
    assert len(status["traceId"]) == 36
    events = cluster.objects_of("events", NS)
    assert {"Planned", "AwaitingExecutors"} <= {e.get("reason") for e in events}
    # Every Event about the plan leads back to its trace.
    plan_events = [e for e in events if e["involvedObject"]["kind"] == "Masterplan"]
    assert plan_events
    assert {e["metadata"]["annotations"]["mge.devmatrix.io/trace-id"] for e in plan_events} == {
        status["traceId"]
    }
    assert {e["involvedObject"]["uid"] for e in plan_events} == {masterplan["metadata"]["uid"]}


async def test_cyclic_plan_is_planned_false_with_the_cycle_and_no_waves(cluster, pg):
    body = hello()
    body["spec"]["atoms"][0]["dependsOn"] = ["tests"]  # languages -> tests -> ... -> languages

    await _apply(cluster, body)
    async with running_operator(cluster, pg, [NS]):
        await eventually(lambda: _reason(cluster, "Planned") == "False/DependencyCycle")
        planned = _condition(_masterplan(cluster), "Planned")

    assert "languages" in planned["message"]
    assert "tests" in planned["message"]
    assert cluster.objects_of("waves", NS) == []
    assert _masterplan(cluster)["status"]["phase"] == "Invalid"
    warnings = [e for e in cluster.objects_of("events", NS) if e.get("type") == "Warning"]
    assert [e["reason"] for e in warnings] == ["DependencyCycle"]


async def test_restarting_the_operator_changes_nothing(cluster, pg):
    await _apply(cluster, hello())
    async with running_operator(cluster, pg, [NS]):
        await eventually(lambda: _reason(cluster, "Progressing") == "False/AwaitingExecutors")
        await asyncio.sleep(1.0)  # let the progress timer settle too
    before = copy.deepcopy(cluster.store)

    async with running_operator(cluster, pg, [NS]):
        await asyncio.sleep(2.0)  # a resume handler and several timer ticks would have written by now

    def versions(store):
        return {
            key[1:]: obj["metadata"]["resourceVersion"]
            for key, obj in store.items()
            if key[0].plural != "events"
        }

    assert versions(cluster.store) == versions(before)


async def test_shrinking_the_plan_deletes_the_extra_waves_and_keeps_the_trace_id(cluster, pg):
    await _apply(cluster, hello())
    async with running_operator(cluster, pg, [NS]):
        await eventually(lambda: _reason(cluster, "Planned") == "True/Planned")
        trace = _masterplan(cluster)["status"]["traceId"]
        atoms = hello()["spec"]["atoms"][:3]  # languages, validation, greet

        await _patch(cluster, "hello", {"spec": {"atoms": atoms}})
        await eventually(lambda: len(cluster.objects_of("waves", NS)) == 2)
        await eventually(lambda: _masterplan(cluster)["status"]["observedGeneration"] == 2)

    assert _masterplan(cluster)["status"]["traceId"] == trace
    assert _masterplan(cluster)["status"]["atoms"]["total"] == 3


async def test_suspend_sets_the_condition_and_stops_claims(cluster, pg):
    body = hello()
    body["spec"]["suspend"] = True
    await _apply(cluster, body)

    async with running_operator(cluster, pg, [NS]):
        await eventually(lambda: _reason(cluster, "Suspended") == "True/SuspendedByUser")
        store = await Store.connect(pg)
        try:
            claimed_while_suspended = await store.claim("probe", 10, 30)
            await _patch(cluster, "hello", {"spec": {"suspend": False}})
            await eventually(lambda: _reason(cluster, "Suspended") == "False/NotSuspended")
            claimed_after_resume = await store.claim("probe", 10, 30)
        finally:
            await store.close()

    assert claimed_while_suspended == []
    assert {c.atom_id for c in claimed_after_resume} == {"languages", "validation"}
    assert _masterplan(cluster)["status"]["phase"] != "Suspended"


async def test_missing_atoms_config_map_is_reported_then_picked_up(cluster, pg):
    body = hello()
    atoms = body["spec"].pop("atoms")
    body["spec"]["atomsFrom"] = {"configMapKeyRef": {"name": "hello-atoms", "key": "atoms.yaml"}}
    await _apply(cluster, body)

    async with running_operator(cluster, pg, [NS]):
        await eventually(lambda: _reason(cluster, "Planned") == "False/AtomsSourceNotFound")
        config_map = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "hello-atoms", "namespace": NS},
            "data": {"atoms.yaml": yaml.safe_dump(atoms)},
        }
        response = await cluster.client.post(f"/api/v1/namespaces/{NS}/configmaps", json=config_map)
        assert response.status_code == 201
        await eventually(lambda: _reason(cluster, "Planned") == "True/Planned", timeout=20)

    assert len(cluster.objects_of("waves", NS)) == 4


async def test_store_outage_is_a_condition_and_the_operator_recovers(cluster, pg):
    late = with_database(pg, "not_created_yet")
    await _apply(cluster, hello())

    async with running_operator(cluster, late, [NS]):
        await eventually(lambda: _reason(cluster, "Progressing") == "False/StoreUnavailable")
        assert _reason(cluster, "Planned") == "True/Planned"
        admin = await asyncpg.connect(pg)
        try:
            await admin.execute('CREATE DATABASE "not_created_yet"')
        finally:
            await admin.close()
        # The operator retries the store with backoff; on a loaded machine 40 s was not always enough.
        await eventually(lambda: _reason(cluster, "Progressing") == "False/AwaitingExecutors", timeout=90)

    admin = await asyncpg.connect(pg)
    try:
        await admin.execute('DROP DATABASE "not_created_yet" WITH (FORCE)')
    finally:
        await admin.close()


async def test_executors_complete_the_plan_and_status_follows(cluster, pg):
    await _apply(cluster, hello())

    async with running_operator(cluster, pg, [NS]):
        await eventually(lambda: _reason(cluster, "Planned") == "True/Planned")
        async with running_executor(pg, HELLO_RECORDING):
            await eventually(lambda: _reason(cluster, "Complete") == "True/AllAtomsSucceeded", timeout=30)
            await eventually(
                lambda: all(
                    w.get("status", {}).get("phase") == "Succeeded" for w in cluster.objects_of("waves", NS)
                )
            )

    status = _masterplan(cluster)["status"]
    assert (status["phase"], status["progress"], status["waves"]["complete"]) == ("Succeeded", "6/6", 4)
    assert status["cost"]["currentUSD"] > 0
    assert status["completedAt"]
    assert _condition(_masterplan(cluster), "Progressing")["reason"] == "AllAtomsSucceeded"


async def test_hard_cap_suspends_the_plan_and_an_override_resumes_it_to_completion(cluster, pg):
    body = hello()
    body["spec"]["budget"] = {"limitUSD": 0.0005}  # room for one worst-case reservation at a time
    await _apply(cluster, body)

    async with running_operator(cluster, pg, [NS]):
        await eventually(lambda: _reason(cluster, "Planned") == "True/Planned")
        async with running_executor(pg, HELLO_RECORDING, max_tokens=512):
            await eventually(lambda: _reason(cluster, "Suspended") == "True/HardCapReached", timeout=30)
            held = _masterplan(cluster)["status"]
            await eventually(lambda: _metric("v2_masterplan_paused_budget") == 1)
            hard_caps = _metric("v2_cost_guardrail_triggered_total", kind="hard")
            override = {"limitUSD": 1, "approvedBy": "alice", "reason": "demo"}
            await _patch(cluster, "hello", {"spec": {"budget": {"override": override}}})
            await eventually(lambda: _reason(cluster, "Complete") == "True/AllAtomsSucceeded", timeout=30)
            await eventually(lambda: _metric("v2_masterplan_paused_budget") == 0)

    assert hard_caps == 1
    assert _metric("v2_budget_limit_usd") == 1.0
    assert _metric("mge_masterplan_spent_usd") == _masterplan(cluster)["status"]["cost"]["currentUSD"]
    suspended = _condition(_masterplan(cluster), "Suspended")
    assert held["phase"] == "Suspended"
    assert held["cost"]["currentUSD"] <= 0.0005
    assert (
        "kubectl patch masterplan hello --type merge" in _condition({"status": held}, "Suspended")["message"]
    )
    assert (suspended["status"], suspended["reason"]) == ("False", "OverrideApproved")
    assert "by alice" in suspended["message"]
    assert _masterplan(cluster)["status"]["cost"]["limitUSD"] == 1.0
    reasons = [e.get("reason") for e in cluster.objects_of("events", NS)]
    assert {"HardCapReached", "OverrideApproved", "AllAtomsSucceeded"} <= set(reasons)
