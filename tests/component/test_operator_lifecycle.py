"""A Masterplan's run lifecycle against the fake Kubernetes API and a real Postgres: delete, re-create, restart.

The Kubernetes API server is the one mocked part (kmock): nothing real can run here. It does no
ownerReference garbage collection, so Waves of a deleted Masterplan stay behind as they do while a real
cluster's collector lags.
"""

import asyncio
import json
import uuid
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from mge.adapters.llm import OpenAICompatibleLLM
from mge.adapters.store.acceptance import AcceptanceStore
from mge.adapters.store.errors import StoreUnavailable
from mge.adapters.store.ledger import CostLedger
from mge.adapters.store.store import LazyStore, Store
from mge.controller.deps import ControllerDeps
from mge.cost.pricing import DEFAULT_PRICES
from mge.executor.worker import Executor, ExecutorConfig
from tests.builders import succeed
from tests.component.test_operator import (
    GROUP_PATH,
    HELLO_RECORDING,
    NS,
    _apply,
    _masterplan,
    _patch,
    _reason,
    hello,
)
from tests.support.executor import running_executor
from tests.support.fake_llm import FakeLLM, FakeLLMConfig
from tests.support.operator import eventually, running_operator

pytestmark = pytest.mark.component


async def _delete(api: Any, name: str = "hello") -> None:
    response = await api.client.delete(f"{GROUP_PATH}/masterplans/{name}")
    assert response.status_code == 200, response.text


def _run_id(api: Any, name: str = "hello") -> str | None:
    return ((_masterplan(api, name) or {}).get("status") or {}).get("masterplanId")


async def _retired(store: Store, plan_id: str) -> bool:
    retired = await store.pool.fetchval(
        "SELECT retired_at IS NOT NULL FROM masterplans WHERE id = $1", uuid.UUID(plan_id)
    )
    return bool(retired)


async def test_a_deleted_masterplan_created_again_is_a_new_run_and_the_old_one_keeps_its_cost_events(
    cluster, pg
):
    await _apply(cluster, hello())
    store = await Store.connect(pg)
    try:
        async with running_operator(cluster, pg, [NS]):
            await eventually(lambda: _reason(cluster, "Planned") == "True/Planned")
            async with running_executor(pg, HELLO_RECORDING) as llm:
                await eventually(lambda: _reason(cluster, "Complete") == "True/AllAtomsSucceeded", timeout=30)
                old = _masterplan(cluster)
                old_id = old["status"]["masterplanId"]
                old_events = await store.pool.fetchval(
                    "SELECT count(*) FROM cost_events WHERE masterplan_id = $1", uuid.UUID(old_id)
                )
                calls_before = llm.stats.requests

                await _delete(cluster)
                await eventually(lambda: _retired(store, old_id))
                await _apply(cluster, hello())
                # The new object runs from the start: its own run id, trace and atoms, all paid again.
                await eventually(lambda: _run_id(cluster) not in (None, old_id))
                fresh = _masterplan(cluster)["status"]
                await eventually(lambda: _reason(cluster, "Complete") == "True/AllAtomsSucceeded", timeout=30)

            new = _masterplan(cluster)
    finally:
        kept = await store.pool.fetchval(
            "SELECT count(*) FROM cost_events WHERE masterplan_id = $1", uuid.UUID(old_id)
        )
        old_atoms = await store.pool.fetchval(
            "SELECT count(*) FROM atoms WHERE masterplan_id = $1", uuid.UUID(old_id)
        )
        new_id = uuid.UUID(new["status"]["masterplanId"])
        new_uid = await store.pool.fetchval("SELECT uid FROM masterplans WHERE id = $1", new_id)
        await store.close()

    assert new["status"]["masterplanId"] == new["metadata"]["uid"] == new_uid
    assert new["status"]["traceId"] != old["status"]["traceId"]
    assert fresh["progress"] in ("0/6", "1/6", "2/6")  # never the old run's 6/6
    assert fresh.get("completedAt") is None
    assert llm.stats.requests >= calls_before + 6
    assert (kept, old_atoms) == (old_events, 0)
    # The re-created plan's Waves are its own, not the deleted one's left behind.
    owners = {w["metadata"]["ownerReferences"][0]["uid"] for w in cluster.objects_of("waves", NS)}
    assert owners == {new["metadata"]["uid"]}


async def test_a_masterplan_deleted_while_the_operator_is_down_is_retired_at_start_up(cluster, pg):
    await _apply(cluster, hello())
    async with running_operator(cluster, pg, [NS]):
        await eventually(lambda: _reason(cluster, "Planned") == "True/Planned")
        await eventually(lambda: _run_id(cluster))
        plan_id = _run_id(cluster)
        assert not _masterplan(cluster)["metadata"].get("finalizers")
    await _delete(cluster)
    # No finalizer: the object is gone at once, although no operator is running to release it.
    assert _masterplan(cluster) is None

    store = await Store.connect(pg)
    try:
        assert not await _retired(store, plan_id)
        async with running_operator(cluster, pg, [NS]):
            await eventually(lambda: _retired(store, plan_id))
        ready = await store.claim("probe", 10, 30)
    finally:
        await store.close()
    assert ready == []


async def test_an_executor_mid_call_on_a_deleted_plan_stops_and_its_reservation_is_released(
    cluster, pg, validator
):
    server = FakeLLM(FakeLLMConfig(base_latency_s=60))  # every call hangs until the plan is deleted
    server.load_recording(HELLO_RECORDING)
    await server.start()
    store = await Store.connect(pg)
    llm = OpenAICompatibleLLM(server.url, "k")
    executor = Executor(store, llm, validator, DEFAULT_PRICES, ExecutorConfig("ex-1"))
    stop = asyncio.Event()
    await _apply(cluster, hello())
    try:
        async with running_operator(cluster, pg, [NS]):
            await eventually(lambda: _reason(cluster, "Planned") == "True/Planned")
            plan_id = uuid.UUID(_run_id(cluster))
            worker = asyncio.create_task(executor.run(stop))
            await eventually(lambda: server.stats.in_flight == 2)  # both atoms of the first wave
            reserved = await store.pool.fetchval(
                "SELECT count(*) FROM cost_reservations WHERE masterplan_id = $1", plan_id
            )

            await _delete(cluster)
            await eventually(lambda: executor.gate.in_flight == 0, timeout=5)
            calls = server.stats.requests
            await eventually(lambda: executor.gate.queue.size == 0)
        stop.set()
        await worker
        plan = await store.pool.fetchrow(
            "SELECT reserved_cost_usd, retired_at FROM masterplans WHERE id = $1", plan_id
        )
        left = await store.pool.fetchval(
            "SELECT count(*) FROM cost_reservations WHERE masterplan_id = $1", plan_id
        )
        released = await store.pool.fetch(
            "SELECT detail FROM cost_events WHERE masterplan_id = $1 AND kind = 'release'", plan_id
        )
    finally:
        stop.set()
        await llm.close()
        await store.close()
        await server.stop()

    assert reserved == 2
    assert plan["retired_at"] is not None
    assert (plan["reserved_cost_usd"], left) == (Decimal(0), 0)
    assert len(released) == reserved
    assert all('"deleted"' in r["detail"] for r in released)
    assert server.stats.requests == calls  # nothing else was asked of the LLM


async def test_postgres_going_away_under_an_open_pool_is_store_unavailable(pg):
    """A server restart (here: every backend terminated mid-query) is an outage, not a query error."""
    lazy = LazyStore(pg, max_size=1)
    admin = await asyncpg.connect(pg)

    async def query_while_postgres_restarts() -> None:
        async with lazy.session() as store:
            slow = asyncio.create_task(store.pool.fetchval("SELECT pg_sleep(30)"))
            await eventually(
                lambda: admin.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%'"
                )
            )
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            await slow

    try:
        with pytest.raises(StoreUnavailable, match="Postgres"):
            await query_while_postgres_restarts()
    finally:
        await admin.close()
        await lazy.close()


NOW_CALLS: list[int] = []


def _counting_now(deps: ControllerDeps) -> None:
    """Counts the handlers' passes: each reconcile and each progress tick asks for the time once."""
    real = deps.now

    def now() -> Any:
        NOW_CALLS.append(1)
        return real()

    deps.now = now


async def _spend(store: Store, finish: set[uuid.UUID]) -> None:
    """Executor work without an LLM: pay for and succeed every plan's first wave, and all of `finish`."""
    ledger = CostLedger(store.pool)
    await store.pool.execute("DELETE FROM plan_ramps")
    first = True
    while True:
        claimed = await store.claim("probe", 1000, 300)
        work = [a for a in claimed if first or a.masterplan_id in finish]
        for atom in claimed:
            if atom not in work:
                await store.release(atom, "probe")
        for atom in work:
            reservation = await ledger.reserve(atom, "probe", Decimal("0.01"))
            assert reservation is not None
            await ledger.settle(
                reservation, atom, amount=Decimal("0.000317"), prompt_tokens=10, completion_tokens=5
            )
            await succeed(store, atom, "probe", "VALUE = 1\n")
        first = False
        if not work:
            return


async def test_restarting_the_operator_writes_nothing_for_plans_with_spend(cluster, pg):
    names = [f"plan-{i:02d}" for i in range(15)]
    for name in names:
        body = hello()
        body["metadata"]["name"] = name
        await _apply(cluster, body)
    store = await Store.connect(pg)
    try:
        async with running_operator(cluster, pg, [NS]):
            await eventually(lambda: all(_run_id(cluster, n) for n in names), timeout=60)
            # Three stages: running (a wave done, more to claim), suspended with spend, complete.
            await _spend(store, {uuid.UUID(_run_id(cluster, n)) for n in names[2::3]})
            for name in names[1::3]:
                await _patch(cluster, name, {"spec": {"suspend": True}})
            settled = {
                **dict.fromkeys(names[0::3], "True/AtomsRunning"),
                **dict.fromkeys(names[1::3], "False/SuspendedByUser"),
                **dict.fromkeys(names[2::3], "False/AllAtomsSucceeded"),
            }
            await eventually(
                lambda: all(_reason(cluster, "Progressing", n) == r for n, r in settled.items()), timeout=60
            )
            await eventually(
                lambda: all(_masterplan(cluster, n)["status"]["cost"]["currentUSD"] > 0 for n in names),
                timeout=30,
            )
            # The check of a finished run's imports runs in the background and lands a tick later.
            await eventually(
                lambda: all(_reason(cluster, "DependenciesVerified", n) for n in names[2::3]), timeout=30
            )

            async def quiet() -> bool:
                # The Waves' lane and the Events trail the Masterplans' status: on a loaded machine they were
                # still being written when the operator stopped, and the restarted one finished them.
                before = cluster.writes
                await asyncio.sleep(1.5)  # 3 progress intervals
                return cluster.writes == before

            await eventually(quiet, timeout=60)
        writes, version = cluster.writes, cluster._latest_version
        NOW_CALLS.clear()
        async with running_operator(cluster, pg, [NS], customize=_counting_now):
            # Every plan resumed and ticked at least twice (each pass asks the time once).
            await eventually(lambda: len(NOW_CALLS) >= 3 * len(names), timeout=60)
    finally:
        await store.close()

    changed = cluster.writes - writes
    events = [e for e in cluster.objects_of("events", NS) if int(e["metadata"]["resourceVersion"]) > writes]
    written = sorted(  # what the restarted operator wrote, for the failure message
        f"{obj.get('kind')}/{obj['metadata'].get('name')}"
        for obj in cluster.store.values()
        if int(obj["metadata"].get("resourceVersion", 0)) > version
    )
    assert (changed, [e.get("reason") for e in events]) == (0, []), written


class _SpecChangeMidTick:
    """Makes one progress tick race a spec change: the tick reads the store (an atom was claimed just before,
    so its status changes), then the user suspends the plan and the update handler writes generation 2's
    conditions, and only then does the tick go on to write what it computed from generation 1."""

    def __init__(self) -> None:
        self.armed = self.read = self.patched = self.done = False

    def install(self, deps: ControllerDeps) -> None:
        kube, lazy = deps.kube, deps.store
        real_list_waves, real_get = kube.list_waves, lazy.get
        deps.sweep_interval_s = 3600  # only the tick asks for the store once armed

        async def get() -> Store:
            store = await real_get()
            if self.armed and not self.read:
                self.read = True
                await store.claim("probe", 1, 300)
            return store

        async def observed_two(namespace: str, name: str) -> bool:
            plan = await kube._call(  # the operator's loop cannot read the fake API's objects directly
                "GET", f"/apis/mge.devmatrix.io/v1alpha1/namespaces/{namespace}/masterplans/{name}"
            )
            return bool((plan.get("status") or {}).get("observedGeneration") == 2)

        async def list_waves(namespace: str, masterplan: str) -> list[dict[str, Any]]:
            if self.read and not self.patched:  # the tick; the update handler's own call passes through
                self.patched = True
                await kube.patch_masterplan_spec(namespace, masterplan, {"suspend": True})
                await eventually(lambda: observed_two(namespace, masterplan), timeout=20)
                self.done = True
            return await real_list_waves(namespace, masterplan)

        lazy.get = get  # type: ignore[method-assign]
        kube.list_waves = list_waves  # type: ignore[method-assign]


async def test_a_progress_tick_never_writes_over_a_newer_generations_conditions(cluster, pg):
    race = _SpecChangeMidTick()
    await _apply(cluster, hello())

    async with running_operator(cluster, pg, [NS], customize=race.install):
        await eventually(lambda: _reason(cluster, "Progressing") == "False/AwaitingExecutors")
        race.armed = True
        await eventually(lambda: race.done, timeout=30)
        # Written by the racing tick (before) or by the next one, which reads generation 2's status.
        await eventually(lambda: _masterplan(cluster)["status"]["atoms"]["running"] == 1, timeout=20)
        await eventually(lambda: _reason(cluster, "Progressing") == "False/SuspendedByUser")

    assert _masterplan(cluster)["status"]["observedGeneration"] == 2
    assert _reason(cluster, "Suspended") == "True/SuspendedByUser"


async def test_the_finalizer_an_earlier_release_put_on_a_masterplan_is_removed(cluster, pg):
    """Releases before the progress loop ran a kopf timer per Masterplan, which adds kopf's finalizer."""
    plan = hello()
    plan["metadata"]["finalizers"] = ["mge.devmatrix.io/finalizer"]
    await _apply(cluster, plan)
    async with running_operator(cluster, pg, [NS]):
        await eventually(lambda: _reason(cluster, "Planned") == "True/Planned")
        await eventually(lambda: not _masterplan(cluster)["metadata"].get("finalizers"))
    await _delete(cluster)
    assert _masterplan(cluster) is None


async def test_status_sync_works_from_the_watch_and_does_not_list_masterplans_on_every_tick(cluster, pg):
    """Hundreds of plans with inline atoms: a LIST of full objects every 10 s would load the API server."""
    await _apply(cluster, hello())
    async with running_operator(cluster, pg, [NS], progress_interval=0.1):
        await eventually(lambda: _reason(cluster, "Planned") == "True/Planned")
        await eventually(lambda: (_masterplan(cluster)["status"].get("atoms") or {}).get("total") == 6)
        lists_before = cluster.lists["masterplans"]
        await asyncio.sleep(1.0)  # a window of about 10 progress ticks, then count what they listed
        assert cluster.lists["masterplans"] - lists_before <= 1  # at most the 60 s sweep's own list


async def test_a_failing_read_of_all_plans_does_not_stop_the_progress_loop(cluster, pg, monkeypatch):
    """The tick reads every due plan at once; an error there (a query cancelled, a bug) must leave each plan to
    read its own rows, not end the loop that keeps every status. The first such read fails here; only the
    progress loop writes the run's end, so the plan completes only if the loop survived it."""
    from mge.controller import masterplan

    read = masterplan.TickReads.read
    calls = 0

    async def failing_first(store: Any, plan_ids: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("canceling statement due to statement timeout")
        return await read(store, plan_ids)

    monkeypatch.setattr(masterplan.TickReads, "read", failing_first)
    await _apply(cluster, hello())
    async with running_operator(cluster, pg, [NS], progress_interval=0.1):
        await eventually(lambda: _reason(cluster, "Planned") == "True/Planned")
        async with running_executor(pg, HELLO_RECORDING):
            await eventually(lambda: _reason(cluster, "Complete") == "True/AllAtomsSucceeded", timeout=30)
    assert calls > 1


async def test_a_masterplans_status_keeps_up_while_writes_to_its_waves_hang(cluster, pg):
    """With a thousand plans ending at once, their Waves are ten writes each: a tick that waited for them held
    every Masterplan's status back for minutes. Here the API server stalls every Wave status write; the
    Masterplan's status must still follow its run to the end (the import check is reported on a tick after the
    one that saw the run end), and the Waves catch up once writes go through."""
    await _apply(cluster, hello())
    async with running_operator(cluster, pg, [NS], progress_interval=0.1):
        await eventually(lambda: _reason(cluster, "Planned") == "True/Planned")
        stall = cluster.stalled[("waves", "status")] = asyncio.Event()
        try:
            async with running_executor(pg, HELLO_RECORDING):
                await eventually(lambda: _reason(cluster, "Complete") == "True/AllAtomsSucceeded", timeout=30)
            # The import check's result comes on a later tick than the run's end.
            await eventually(lambda: _reason(cluster, "DependenciesVerified"), timeout=15)
            assert not any(
                (w.get("status") or {}).get("phase") == "Succeeded" for w in cluster.objects_of("waves", NS)
            )
        finally:
            stall.set()
        await eventually(
            lambda: all(
                (w.get("status") or {}).get("phase") == "Succeeded" for w in cluster.objects_of("waves", NS)
            ),
            timeout=15,
        )


async def test_a_finished_plan_costs_no_api_calls_on_later_ticks_until_something_asks_for_it(cluster, pg):
    """The progress loop's cost must not grow with finished plans: no write, no LIST of Waves, no sync at all
    (each sync asks the time once), until its object changes or its acceptance tests are asked for again."""
    await _apply(cluster, hello())
    NOW_CALLS.clear()
    async with running_operator(cluster, pg, [NS], progress_interval=0.1, customize=_counting_now):
        await eventually(lambda: _reason(cluster, "Planned") == "True/Planned")
        async with running_executor(pg, HELLO_RECORDING):
            await eventually(lambda: _reason(cluster, "Complete") == "True/AllAtomsSucceeded", timeout=30)

        async def settled() -> bool:
            before = (cluster.writes, len(NOW_CALLS))
            await asyncio.sleep(0.3)
            return (cluster.writes, len(NOW_CALLS)) == before

        await eventually(settled)  # the completion's own writes (status, Waves, Events, imports) are done
        assert _reason(cluster, "DependenciesVerified")
        before = (cluster.writes, cluster.lists["waves"], len(NOW_CALLS))
        await asyncio.sleep(1.0)  # a window of about 10 progress ticks
        assert (cluster.writes, cluster.lists["waves"], len(NOW_CALLS)) == before

        # POST /api/v2/testing/generate/<id> on a finished plan: the next tick syncs it again.
        store = await Store.connect(pg)
        try:
            await AcceptanceStore(store.pool).request_generation(uuid.UUID(_run_id(cluster)))
        finally:
            await store.close()
        await eventually(lambda: len(NOW_CALLS) > before[2], timeout=5)
        # A change of the object (here a label) makes it due again as well.
        calls = len(NOW_CALLS)
        await _patch(cluster, "hello", {"metadata": {"labels": {"team": "a"}}})
        await eventually(lambda: len(NOW_CALLS) > calls, timeout=5)


async def test_a_plan_whose_atoms_outgrow_the_annotation_limit_is_planned_and_updated(cluster, pg):
    """kopf keeps the last handled spec in an annotation; a full copy of 600 inline atoms (~360 KB) would be
    refused by the API server (annotations total at most 256 KiB) and the plan never planned."""
    plan = hello()
    plan["metadata"]["name"] = "large"
    text = "Return the constant asked for, documented, typed and tested. " * 9
    plan["spec"]["atoms"] = [
        {"id": f"a{i}", "file": f"pkg/m{i}.py", "language": "python", "description": f"{i}: {text}"}
        for i in range(600)
    ]
    await _apply(cluster, plan)
    async with running_operator(cluster, pg, [NS]):
        await eventually(lambda: _reason(cluster, "Planned", "large") == "True/Planned", timeout=30)
        assert _masterplan(cluster, "large")["status"]["atoms"]["total"] == 600
        # An edit of the atoms is still seen as a change of the spec and planned again.
        await _patch(cluster, "large", {"spec": {"atoms": plan["spec"]["atoms"][:300]}})
        await eventually(lambda: _masterplan(cluster, "large")["status"]["atoms"]["total"] == 300, timeout=30)


async def test_after_an_upgrade_from_a_full_copy_of_the_spec_a_plan_is_reconciled_once_without_changes(
    cluster, pg
):
    key = "mge.devmatrix.io/last-handled-configuration"
    await _apply(cluster, hello())
    async with running_operator(cluster, pg, [NS]):
        await eventually(lambda: _reason(cluster, "Planned") == "True/Planned")
        await eventually(lambda: (_masterplan(cluster)["status"].get("atoms") or {}).get("total") == 6)
    stored = next(o for (r, _, n), o in cluster.store.items() if r.plural == "masterplans" and n == "hello")
    assert "sha256" in stored["metadata"]["annotations"][key]
    # What an earlier release left: kopf's usual full copy of the spec.
    stored["metadata"]["annotations"][key] = json.dumps({"spec": stored["spec"]})
    status_before = _masterplan(cluster)["status"]
    events_before = len(cluster.objects_of("events", NS))

    async with running_operator(cluster, pg, [NS]):
        await eventually(lambda: "sha256" in _masterplan(cluster)["metadata"]["annotations"][key])

    assert _masterplan(cluster)["status"] == status_before
    assert len(cluster.objects_of("events", NS)) == events_before


async def test_a_rejected_override_is_reported_once_not_again_at_each_operator_restart(cluster, pg):
    await _apply(cluster, hello())
    async with running_operator(cluster, pg, [NS]):
        await eventually(lambda: _reason(cluster, "Planned") == "True/Planned")
        plan_id = uuid.UUID(_run_id(cluster))
        store = await Store.connect(pg)
        try:  # what the plan has spent so far
            await store.pool.execute("UPDATE masterplans SET current_cost_usd = 0.5 WHERE id = $1", plan_id)
        finally:
            await store.close()
        override = {"limitUSD": 0.1, "approvedBy": "alice", "reason": "too low"}
        await _patch(cluster, "hello", {"spec": {"budget": {"override": override}}})
        await eventually(lambda: _rejections(cluster) == 1)

    async with running_operator(cluster, pg, [NS]):
        await eventually(lambda: _masterplan(cluster)["status"].get("masterplanId"))
        await asyncio.sleep(1.0)  # a window for a re-post on resume, then count
    assert _rejections(cluster) == 1


def _rejections(cluster: Any) -> int:
    return sum(1 for e in cluster.objects_of("events", NS) if e.get("reason") == "OverrideRejected")


async def test_many_plans_applied_at_once_are_planned_a_bounded_number_at_a_time(cluster, pg):
    """Each plan being planned holds its parsed atoms and plan: 1,000 at once would hold them all."""
    names = [f"burst-{i:02d}" for i in range(12)]
    creating: dict[str, int] = {}  # Masterplan name -> its Wave creations in flight
    most, most_of_one_plan = 0, 0

    def customize(deps: ControllerDeps) -> None:
        deps.planning_slots = asyncio.Semaphore(3)
        real_create = deps.kube.create_wave

        async def create_wave(namespace: str, body: Any) -> dict[str, Any]:
            # Only planning creates Waves: the plans with a creation in flight are plans being planned.
            nonlocal most, most_of_one_plan
            plan = body["metadata"]["labels"]["mge.devmatrix.io/masterplan"]
            creating[plan] = creating.get(plan, 0) + 1
            most = max(most, sum(1 for count in creating.values() if count))
            most_of_one_plan = max(most_of_one_plan, creating[plan])
            try:
                await asyncio.sleep(0.05)
                return await real_create(namespace, body)
            finally:
                creating[plan] -= 1

        deps.kube.create_wave = create_wave  # type: ignore[method-assign]

    for name in names:
        body = hello()
        body["metadata"]["name"] = name
        await _apply(cluster, body)
    async with running_operator(cluster, pg, [NS], customize=customize):
        await eventually(
            lambda: all(_reason(cluster, "Planned", n) == "True/Planned" for n in names), timeout=60
        )
    assert 2 <= most <= 3, most
    # A plan's own Waves are created side by side, not one round trip after another.
    assert most_of_one_plan == _masterplan(cluster, names[0])["status"]["waves"]["total"], most_of_one_plan
