"""The Postgres store on a real server: migrations, registration, claiming with leases, readiness."""

import asyncio
import contextlib
import uuid
import warnings
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import pytest

from mge.adapters import metrics
from mge.adapters.store.errors import StoreUnavailable, retry_transient
from mge.adapters.store.ledger import CostLedger
from mge.adapters.store.migrate import migrate, migration_files
from mge.adapters.store.queue import (
    READY_CHANNEL,
    RETIRED_CHANNEL,
    AttemptRecord,
    ClaimRequest,
    GiveUp,
    Succeed,
    _ReadyListener,
)
from mge.adapters.store.settlement import Settlement
from mge.adapters.store.store import Store
from mge.concurrency.ramp import RampPolicy
from mge.plan.dag import plan_dag
from tests.builders import atom, end_ramps, ramp_allowance, spec, succeed

pytestmark = pytest.mark.component


async def _store(pg: str) -> Store:
    return await Store.connect(pg, max_size=20)


async def _register(store: Store, *atoms, name: str = "shop", **fields):
    plan_spec = spec(*atoms, **fields)
    plan = plan_dag((a.id, a.depends_on) for a in atoms)
    plan_id, _ = await store.register_plan(
        namespace="ns",
        name=name,
        trace_id="00000000-0000-4000-8000-000000000001",
        generation=1,
        spec=plan_spec,
        atoms=list(atoms),
        plan=plan,
    )
    return plan_id


async def _finish(store: Store, claimed, executor="ex-1", output="code"):
    return await succeed(store, claimed, executor, output)


async def test_migrations_apply_once_and_record_their_versions(empty_pg):
    connection = await asyncpg.connect(empty_pg)
    try:
        first = await migrate(connection)
        second = await migrate(connection)
        recorded = await connection.fetch("SELECT version FROM schema_migrations ORDER BY version")
    finally:
        await connection.close()

    assert first == [version for version, _ in migration_files()]
    assert second == []
    assert [r["version"] for r in recorded] == first


async def test_every_table_carries_a_trace_id(pg):
    store = await _store(pg)
    try:
        tables = await store.pool.fetch(
            """SELECT table_name FROM information_schema.tables
               WHERE table_schema = 'public' AND table_name <> 'schema_migrations'"""
        )
        with_trace = await store.pool.fetch(
            """SELECT table_name FROM information_schema.columns
               WHERE table_schema = 'public' AND column_name = 'trace_id' AND data_type = 'uuid'"""
        )
    finally:
        await store.close()

    assert {t["table_name"] for t in tables} == {t["table_name"] for t in with_trace}


async def test_only_atoms_without_unmet_dependencies_are_claimed_critical_path_first(pg):
    store = await _store(pg)
    try:
        await _register(store, atom("lone"), atom("root"), atom("mid", "root"), atom("leaf", "mid"))

        claimed = await store.claim("ex-1", 10, lease_seconds=30)
    finally:
        await store.close()

    assert [c.atom_id for c in claimed] == ["root", "lone"]


async def test_success_makes_dependents_ready_only_when_all_their_dependencies_succeeded(pg):
    store = await _store(pg)
    try:
        await _register(store, atom("a"), atom("b"), atom("c", "a", "b"))
        first = {c.atom_id: c for c in await store.claim("ex-1", 10, 30)}

        await _finish(store, first["a"])
        after_a = await store.claim("ex-1", 10, 30)
        await _finish(store, first["b"])
        after_b = await store.claim("ex-1", 10, 30)
    finally:
        await store.close()

    assert after_a == []
    assert [c.atom_id for c in after_b] == ["c"]


async def test_concurrent_executors_never_claim_the_same_atom(pg):
    store = await _store(pg)
    try:
        await _register(store, *[atom(f"a{i}") for i in range(200)])
        await end_ramps(store)

        batches = await asyncio.gather(*[store.claim(f"ex-{n}", 7, 30) for n in range(16)])
    finally:
        await store.close()

    claimed = [c.atom_id for batch in batches for c in batch]
    assert len(claimed) == len(set(claimed)) == 16 * 7


async def test_a_new_plan_ramps_fleet_wide_while_a_plan_past_its_ramp_takes_what_is_free(pg):
    store = await _store(pg)
    try:
        running = await _register(store, *[atom(f"r{i}") for i in range(10)], name="running")
        await end_ramps(store)
        fresh = await _register(store, *[atom(f"n{i}") for i in range(10)], name="fresh")

        first = await store.claim("ex-1", 4, 30)
        second = await store.claim("ex-2", 8, 30)  # another executor: the new plan's room is used up
    finally:
        await store.close()

    claimed = first + second
    per_plan = {plan: sum(c.masterplan_id == plan for c in claimed) for plan in (running, fresh)}
    assert per_plan == {running: 10, fresh: 2}


async def test_racing_claims_never_exceed_a_ramping_plan_allowance_nor_share_an_atom(pg):
    store = await _store(pg)
    try:
        plans = [await _register(store, *[atom(f"a{i}") for i in range(40)], name=f"p{n}") for n in range(3)]

        # Twelve executors woken by the same notification claim at once, as after a `kubectl apply`.
        batches = await asyncio.gather(*[store.claim(f"ex-{n}", 6, 30) for n in range(12)])
    finally:
        await store.close()

    claimed = [(c.masterplan_id, c.atom_id) for batch in batches for c in batch]
    assert len(claimed) == len(set(claimed))
    assert all(sum(plan == p for plan, _ in claimed) <= 2 for p in plans)


async def test_a_ramp_grows_by_one_per_answer_and_ends_when_it_no_longer_limits(pg):
    store = await _store(pg)
    policy = RampPolicy(ends_at=4)
    try:
        plan = await _register(store, *[atom(f"a{i}") for i in range(20)])
        allowances = [await ramp_allowance(store, plan)]
        capped = await store.claim("ex", 20, 30)
        ramping = [await store.grow_ramp(plan, policy)]
        allowances.append(await ramp_allowance(store, plan))
        ramping.append(await store.grow_ramp(plan, policy))  # 3 -> 4 is where it ends
        allowances.append(await ramp_allowance(store, plan))
        ramping.append(await store.grow_ramp(plan, policy))
        claimed = await store.claim("ex", 20, 30)
    finally:
        await store.close()

    assert len(capped) == 2
    assert allowances == [2, 3, None]
    assert ramping == [True, False, False]
    assert len(claimed) == 18  # no ramp: only the claim's own limit applies


async def test_new_work_and_a_resume_restart_the_ramp_but_keep_what_runs(pg):
    store = await _store(pg)
    try:
        plan = await _register(store, *[atom(f"a{i}") for i in range(10)])
        await end_ramps(store)
        running = await store.claim("ex", 5, 30)
        await store.set_suspended(plan, True)
        await store.set_suspended(plan, False)
        after_resume = await ramp_allowance(store, plan)
        await end_ramps(store)
        await _register(store, *[atom(f"a{i}") for i in range(10)])  # same atoms: no new work, no ramp
        unchanged = await ramp_allowance(store, plan)
        await _register(store, *[atom(f"a{i}") for i in range(12)])  # two new atoms
        after_change = await ramp_allowance(store, plan)
    finally:
        await store.close()

    assert len(running) == 5
    assert (after_resume, unchanged, after_change) == (5, None, 5)


async def test_expired_lease_is_reclaimed_and_the_old_holder_cannot_finish(pg):
    store = await _store(pg)
    try:
        await _register(store, atom("a"))
        (held,) = await store.claim("dead-executor", 1, lease_seconds=0.05)
        assert await store.claim("ex-2", 1, 30) == []
        await asyncio.sleep(0.1)  # let the short lease run out: the behaviour under test is expiry itself

        (reclaimed,) = await store.claim("ex-2", 1, 30)
        stale_write = await succeed(store, held, "dead-executor", "stale")
        fresh_write = await _finish(store, reclaimed, executor="ex-2", output="fresh")
        outputs = await store.outputs(reclaimed.masterplan_id)
    finally:
        await store.close()

    assert reclaimed.claims == 2
    assert (stale_write, fresh_write) == (False, True)
    assert [o.output for o in outputs] == ["fresh"]


async def test_a_claim_carries_the_code_of_its_dependencies(pg):
    store = await _store(pg)
    try:
        await _register(store, atom("a"), atom("b"), atom("c", "b", "a"))
        first = {c.atom_id: c for c in await store.claim("ex-1", 10, 30)}
        await _finish(store, first["a"], output="A = 1\n")
        await _finish(store, first["b"], output="B = 2\n")
        (third,) = await store.claim("ex-1", 10, 30)
    finally:
        await store.close()

    assert first["a"].dependency_outputs == ()
    assert [(d.atom_id, d.output) for d in third.dependency_outputs] == [("a", "A = 1\n"), ("b", "B = 2\n")]


async def test_an_attempt_is_one_write_settling_recording_and_freeing_dependents(pg):
    """Settlement, the attempt row, the code, the dependents' readiness and the next claim land together, in
    one round trip: the write locks the plan row first, and a lock held across a client's round trips made
    every write and reservation of the plan wait. A lost claim writes only the settlement (the money was
    spent) and no attempt."""
    store = await _store(pg)
    ledger = CostLedger(store.pool)
    try:
        plan_id = await _register(store, atom("a"), atom("b", "a"), budget={"limitUSD": 1})
        await end_ramps(store)
        (claimed,) = await store.claim("ex-1", 10, 30)
        reservation = await ledger.reserve(claimed, "ex-1", Decimal("0.10"))
        assert reservation is not None
        record = AttemptRecord("s", "succeeded", None, 10, 5, False, Decimal("0.03"), 3, datetime.now(UTC))
        settlement = Settlement(reservation, Decimal("0.03"), 10, 5)
        round_trips: list[float] = []
        store.query_listeners.append(round_trips.append)
        written = await store.finish_attempt(
            claimed,
            "ex-1",
            record,
            settlement=settlement,
            ending=Succeed("A = 1\n"),
            claim_next=ClaimRequest(limit=4, lease_seconds=30),
        )
        store.query_listeners.remove(round_trips.append)
        spend = await ledger.spend(plan_id)
        attempts = await store.pool.fetchval(
            "SELECT count(*) FROM atom_attempts WHERE masterplan_id = $1", plan_id
        )
        (dependent,) = written.claimed  # made ready and claimed by the same transaction

        late = await ledger.reserve(dependent, "ex-1", Decimal("0.10"))
        assert late is not None
        await store.release(dependent, "ex-1")  # the claim is lost: another executor holds the atom now
        lost = await store.finish_attempt(
            dependent, "ex-1", record, settlement=Settlement(late, Decimal("0.02"), 1, 1), ending=Succeed("B")
        )
        after_loss = await ledger.spend(plan_id)
        attempts_after_loss = await store.pool.fetchval(
            "SELECT count(*) FROM atom_attempts WHERE masterplan_id = $1", plan_id
        )
        kinds = [e.kind for e in await ledger.events(plan_id)]
    finally:
        await store.close()

    assert written.still_ours is True
    assert len(round_trips) == 1
    assert (spend.spent_usd, spend.reserved_usd) == (Decimal("0.03"), Decimal(0))
    assert attempts == 1
    assert dependent.atom_id == "b"
    assert [d.output for d in dependent.dependency_outputs] == ["A = 1\n"]
    assert lost.still_ours is False
    assert (after_loss.spent_usd, after_loss.reserved_usd) == (Decimal("0.05"), Decimal(0))
    assert attempts_after_loss == 1
    assert kinds == ["reserve", "settle", "reserve", "settle"]


@pytest.mark.parametrize(("slots", "woken"), [(1, True), (2, False)])
async def test_an_attempts_write_wakes_other_executors_only_for_dependents_it_left(pg, slots, woken):
    """Finishing `a` makes `b` and `c` ready. A write whose claim has a slot for only one of them wakes the
    other executors (a NOTIFY on the channel they listen on); one that takes both wakes nobody."""
    store = await _store(pg)
    notified = asyncio.Event()
    stop_listening = await store.listen_for_ready(notified.set)
    try:
        await _register(store, atom("a"), atom("b", "a"), atom("c", "a"))
        await end_ramps(store)
        (claimed,) = await store.claim("ex-1", 10, 30)
        await asyncio.sleep(0.2)  # the registration's own notification has arrived
        notified.clear()
        record = AttemptRecord("s", "succeeded", None, 10, 5, False, Decimal(0), 3, datetime.now(UTC))
        written = await store.finish_attempt(
            claimed, "ex-1", record, ending=Succeed("A = 1\n"), claim_next=ClaimRequest(slots, 30)
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(notified.wait(), 1.0)
    finally:
        await stop_listening()
        await store.close()

    assert len(written.claimed) == slots
    assert notified.is_set() is woken


async def test_a_write_wakes_executors_for_the_dependent_it_left_ready_though_others_were_ready_before(pg):
    """`x` is ready when `a`'s write starts. Such a write used to wake nobody for `b`, the dependent it made
    ready: whoever came for `x` would find `b` as well. But an executor claimed `x` while the write was under
    way (here waiting for `b`'s row), before `b` was ready, and `b` then waited, with every executor told
    nothing, for some executor's next write or poll (about 400 ms, a call's length, in the makespan
    benchmark). A write now also wakes the executors when an atom ready as it began was claimed meanwhile."""
    store = await _store(pg)
    notified = asyncio.Event()
    stop_listening = await store.listen_for_ready(notified.set)
    blocker = await asyncpg.connect(pg)
    try:
        plan_id = await _register(store, atom("a"), atom("x"), atom("b", "a"))
        await end_ramps(store)
        (claimed,) = await store.claim("ex-1", 1, 30)  # `a`: the critical path first
        await asyncio.sleep(0.2)  # the registration's own notification has arrived
        notified.clear()
        record = AttemptRecord("s", "succeeded", None, 10, 5, False, Decimal(0), 3, datetime.now(UTC))
        async with blocker.transaction():
            await blocker.execute(
                "SELECT 1 FROM atoms WHERE masterplan_id = $1 AND atom_id = 'b' FOR UPDATE", plan_id
            )
            writing = asyncio.create_task(
                store.finish_attempt(claimed, "ex-1", record, ending=Succeed("A = 1\n"))
            )
            # Asked on a connection of its own: a transaction reads pg_stat_activity once and keeps that view.
            while not await store.pool.fetchval(
                """SELECT count(*) FROM pg_stat_activity
                   WHERE wait_event_type = 'Lock' AND query LIKE '%mge_finish_attempt%'"""
            ):
                await asyncio.sleep(0.01)
            taken = await store.claim("ex-2", 5, 30)  # another executor, come for `x`
        written = await writing
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(notified.wait(), 1.0)
        left = await store.claim("ex-3", 5, 30)
    finally:
        await blocker.close()
        await stop_listening()
        await store.close()

    assert [t.atom_id for t in taken] == ["x"]
    assert written.still_ours
    assert written.claimed == []
    assert notified.is_set()
    assert [t.atom_id for t in left] == ["b"]


async def test_a_write_wakes_nobody_while_the_atoms_ready_before_it_wait_untouched(pg):
    """`x` is ready, and stays so while `a`'s write makes `b` ready: whoever comes for `x` finds `b` too, so the
    write wakes nobody. A notification costs every listening executor process a transaction, and a fleet
    with a backlog would otherwise pay that for every atom made ready."""
    store = await _store(pg)
    notified = asyncio.Event()
    stop_listening = await store.listen_for_ready(notified.set)
    try:
        await _register(store, atom("a"), atom("x"), atom("b", "a"))
        await end_ramps(store)
        (claimed,) = await store.claim("ex-1", 1, 30)
        await asyncio.sleep(0.2)  # the registration's own notification has arrived
        notified.clear()
        record = AttemptRecord("s", "succeeded", None, 10, 5, False, Decimal(0), 3, datetime.now(UTC))
        await store.finish_attempt(claimed, "ex-1", record, ending=Succeed("A = 1\n"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(notified.wait(), 0.5)
        ready = await store.claim("ex-2", 5, 30)
    finally:
        await stop_listening()
        await store.close()

    assert not notified.is_set()
    assert sorted(t.atom_id for t in ready) == ["b", "x"]


async def test_the_executors_of_a_process_share_one_listen_and_a_notification_wakes_one_with_room(pg):
    """Postgres hands each NOTIFY to every listening backend (a transaction each), and every executor woken
    claimed: with 32 executors in one process, most claims came back empty. One LISTEN per store; a
    notification wakes the next executor in turn that has room in each LLM pool, and one whose claim got all
    it asked for passes the turn on to the next two."""
    store = await _store(pg)
    room = {"a": False, "b": True, "c": True, "other-pool": True}
    woken: list[str] = []

    def wake(name: str):
        def take_turn() -> bool:
            if room[name]:
                woken.append(name)
            return room[name]

        return take_turn

    async def notified(count: int) -> None:
        await store.pool.execute("SELECT pg_notify($1, '')", READY_CHANNEL)
        for _ in range(100):
            if len(woken) >= count:
                return
            await asyncio.sleep(0.02)

    stops = [await store.listen_for_ready(wake(name)) for name in ("a", "b", "c")]
    stops.append(await store.listen_for_ready(wake("other-pool"), llm_pool="other"))
    try:
        listening = await store.pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN%' AND datname = current_database()"
        )
        await notified(2)
        await asyncio.sleep(0.1)
        # One per pool: in the default pool a has no room, and c waits for its turn.
        assert sorted(woken) == ["b", "other-pool"]
        woken.clear()
        # b's claim got all it asked for: the next two with room in its pool (c, then b again) claim.
        store.pass_ready_turn(None, claimed_all=True)
        assert woken == ["c", "b"]
        # c had no room left by the time it claimed: the next one with room takes the turn.
        store.pass_ready_turn(None, claimed_all=False)
        assert woken == ["c", "b", "c"]
    finally:
        for stop in stops:
            await stop()
        await store.close()

    assert listening == 1


async def test_the_last_attempt_fails_the_atom_in_its_own_write(pg):
    store = await _store(pg)
    try:
        plan_id = await _register(store, atom("a"), atom("b", "a"))
        (claimed,) = await store.claim("ex-1", 10, 30)
        record = AttemptRecord("s", "invalid", "SyntaxError", 10, 5, False, Decimal(0), 3, datetime.now(UTC))
        await store.finish_attempt(claimed, "ex-1", record, ending=GiveUp("gave up after 3 attempts"))
        progress = await store.progress(plan_id)
        row = await store.pool.fetchrow(
            "SELECT state, last_error, lease_token FROM atoms WHERE masterplan_id = $1 AND atom_id = 'a'",
            plan_id,
        )
    finally:
        await store.close()

    assert (row["state"], row["last_error"], row["lease_token"]) == (
        "failed",
        "gave up after 3 attempts",
        None,
    )
    assert progress.finished
    assert progress.blocked == 1


async def test_heartbeat_keeps_the_lease(pg):
    store = await _store(pg)
    try:
        await _register(store, atom("a"))
        (claimed,) = await store.claim("ex-1", 1, lease_seconds=0.2)
        held = await store.heartbeat("ex-1", 30, [claimed.lease_token])
        await asyncio.sleep(0.3)

        stolen = await store.claim("ex-2", 1, 30)
    finally:
        await store.close()

    assert held == {claimed.lease_token}
    assert stolen == []


async def test_heartbeat_renews_only_the_claims_in_hand(pg):
    store = await _store(pg)
    try:
        await _register(store, atom("held"), atom("orphan"))
        claims = {c.atom_id: c for c in await store.claim("ex-1", 2, lease_seconds=0.2)}
        # The task working on "orphan" crashed: the executor no longer holds it, though its name is on the row.
        held = await store.heartbeat("ex-1", 30, [claims["held"].lease_token])
        await asyncio.sleep(0.3)  # let the orphan's short lease run out: the behaviour under test is expiry

        taken_over = await store.claim("ex-2", 2, 30)
    finally:
        await store.close()

    assert held == {claims["held"].lease_token}
    assert [c.atom_id for c in taken_over] == ["orphan"]


async def test_a_stale_claim_of_the_same_executor_cannot_write_after_a_replan(pg):
    """A re-plan changes a running atom; the same executor claims it again. The first call answers first: its
    code (for the old description) must not land, and the new claim must still finish."""
    store = await _store(pg)
    try:
        plan_id = await _register(store, atom("a"))
        (old,) = await store.claim("ex-1", 1, 30)
        changed = atom("a").model_copy(update={"description": "A changed description."})
        await _register(store, changed)
        (new,) = await store.claim("ex-1", 1, 30)

        old_writes = (
            await _finish(store, old, output="code for the old description"),
            await store.fail(old, "ex-1", "stale"),
            await store.release(old, "ex-1"),
        )
        new_write = await _finish(store, new, output="code for the new description")
        outputs = [o.output for o in await store.outputs(plan_id)]
        attempts = await store.pool.fetchval(
            "SELECT count(*) FROM atom_attempts WHERE masterplan_id = $1", plan_id
        )
    finally:
        await store.close()

    assert new.description == "A changed description."
    assert old_writes == (False, False, False)
    assert new_write is True
    assert outputs == ["code for the new description"]
    assert attempts == 1


async def test_failed_atom_blocks_its_dependents_and_the_plan_finishes(pg):
    store = await _store(pg)
    try:
        plan_id = await _register(store, atom("a"), atom("b", "a"), atom("c", "b"), atom("free"))
        claimed = {c.atom_id: c for c in await store.claim("ex-1", 10, 30)}

        await store.fail(claimed["a"], "ex-1", "LLM returned no code")
        await _finish(store, claimed["free"])
        progress = await store.progress(plan_id)
    finally:
        await store.close()

    assert (progress.failed, progress.succeeded, progress.blocked) == (1, 1, 2)
    assert progress.failed_atoms == ("a",)
    assert progress.finished


async def test_one_read_of_many_plans_keeps_each_plans_progress_spend_and_waves_apart(pg):
    """A progress tick reads every live plan in one query each. Two plans here share atom ids: the failure in
    one must not block the other's atoms, and a run not registered reads as empty, not as missing."""
    store = await _store(pg)
    try:
        failing = await _register(store, atom("a"), atom("b", "a"), atom("c", "b"), name="failing")
        healthy = await _register(store, atom("a"), atom("b", "a"), atom("c", "b"), name="healthy")
        unknown = uuid.uuid4()
        claimed = [c for c in await store.claim("ex-1", 10, 30) if c.atom_id == "a"]
        by_plan = {c.masterplan_id: c for c in claimed}
        await store.fail(by_plan[failing], "ex-1", "LLM returned no code")
        await _finish(store, by_plan[healthy])

        progress = await store.progress_of([failing, healthy, unknown])
        waves = await store.wave_progress_of([failing, healthy, unknown])
        spend = await CostLedger(store.pool).spend_of([failing, healthy, unknown])
    finally:
        await store.close()

    assert (progress[failing].failed, progress[failing].blocked, progress[failing].blocked_atoms) == (
        1,
        2,
        ("b", "c"),
    )
    assert (progress[healthy].succeeded, progress[healthy].blocked, progress[healthy].ready) == (1, 0, 1)
    assert (progress[unknown].total, progress[unknown].waves_total) == (0, 0)
    assert [w.succeeded for w in waves[healthy]] == [1, 0, 0]
    assert [w.failed for w in waves[failing]] == [1, 0, 0]
    assert waves[unknown] == []
    assert set(spend) == {failing, healthy}


async def test_suspended_plans_are_not_claimed(pg):
    store = await _store(pg)
    try:
        plan_id = await _register(store, atom("a"), suspend=True)
        while_suspended = await store.claim("ex-1", 1, 30)
        await store.set_suspended(plan_id, False)
        after_resume = await store.claim("ex-1", 1, 30)
    finally:
        await store.close()

    assert while_suspended == []
    assert [c.atom_id for c in after_resume] == ["a"]


async def test_replanning_keeps_unchanged_work_and_redoes_changed_atoms_and_their_dependents(pg):
    store = await _store(pg)
    try:
        await _register(store, atom("a"), atom("b", "a"), atom("x"))
        for _ in range(2):
            for claimed in await store.claim("ex-1", 10, 30):
                await _finish(store, claimed)
        changed_b = atom("b", "a").model_copy(update={"description": "Implement b differently."})

        plan_id = await _register(store, atom("a"), changed_b, atom("y", "b"))
        states = dict(
            await store.pool.fetch("SELECT atom_id, state FROM atoms WHERE masterplan_id = $1", plan_id)
        )
    finally:
        await store.close()

    assert states == {"a": "succeeded", "b": "ready", "y": "pending"}


async def test_unreachable_postgres_names_the_host(tmp_path):
    with pytest.raises(StoreUnavailable, match=r"cannot reach Postgres at 127\.0\.0\.1:1"):
        await Store.connect("postgresql://u:secret@127.0.0.1:1/db", attempts=2)


async def test_every_query_on_the_pool_is_timed_for_the_metric_and_the_listeners(pg):
    store = await Store.connect(pg, max_size=2)
    heard: list[float] = []
    store.query_listeners.append(heard.append)
    selects = metrics.DB_LATENCY.labels("select")._sum
    select_seconds_before = selects.get()
    inserts_before = _histogram_count("insert")
    try:
        for _ in range(5):  # more queries than connections: each is released and acquired again
            await store.pool.fetchval("SELECT pg_sleep(0.02)")
        await _register(store, atom("a"))
        await asyncio.sleep(0)  # the loggers are called soon after each query, not within it
    finally:
        await store.close()

    # Each of the 5 sleeps is heard; on a loaded machine another query may also take 20 ms.
    assert len([seconds for seconds in heard if seconds >= 0.02]) >= 5
    assert len(heard) > 5  # registration's queries too
    assert selects.get() - select_seconds_before >= 0.1
    assert _histogram_count("insert") > inserts_before


def _histogram_count(operation: str) -> float:
    for metric in metrics.DB_LATENCY.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count") and sample.labels == {"operation": operation}:
                return sample.value
    return 0.0


async def test_a_listener_that_fails_half_way_leaves_no_listening_connection_in_the_pool(pg, monkeypatch):
    """Postgres can end the connection between the two LISTENs (a restart, a killed backend). The fault is
    injected on a real connection: the second LISTEN raises as a dropped connection would."""
    store = await Store.connect(pg, min_size=1, max_size=1)
    real_add = asyncpg.Connection.add_listener

    async def add_listener(self, channel, callback):
        if channel == RETIRED_CHANNEL:
            raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle")
        await real_add(self, channel, callback)

    monkeypatch.setattr(asyncpg.Connection, "add_listener", add_listener)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(asyncpg.exceptions.ConnectionDoesNotExistError):
                await _ReadyListener(store.pool, lambda: None).listen()
        assert [str(w.message) for w in caught if issubclass(w.category, asyncpg.InterfaceWarning)] == []
        # The pool's only connection is a fresh one, not the one left listening.
        async with store.pool.acquire() as connection:
            assert connection._con._listeners == {}
            assert await connection.fetchval("SELECT 1") == 1
    finally:
        await store.close()


async def test_a_write_that_postgres_aborts_for_a_deadlock_runs_again_and_lands(pg):
    """Two transactions lock the same two rows in opposite orders, and Postgres aborts one of them
    ("deadlock detected": it was rolled back whole, so running it again is safe). The write run through
    `retry_transient` runs again and lands. Before, the error passed through: an attempt's write, which
    settles what its call spent, was lost with it and the atom was handed back as crashed."""
    connection = await asyncpg.connect(pg)
    await connection.execute("CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL)")
    await connection.execute("INSERT INTO counters VALUES (1, 0), (2, 0)")
    pool = await asyncpg.create_pool(pg, min_size=2, max_size=2)
    holds_first, holds_second = asyncio.Event(), asyncio.Event()
    runs = 0

    async def write() -> None:
        nonlocal runs
        runs += 1
        async with pool.acquire() as own, own.transaction():
            await own.execute("SET LOCAL deadlock_timeout = '50ms'")  # this one finds the deadlock
            await own.execute("UPDATE counters SET n = n + 1 WHERE id = 1")
            if runs == 1:
                holds_first.set()
                await holds_second.wait()
            await own.execute("UPDATE counters SET n = n + 1 WHERE id = 2")

    async def other() -> None:
        async with pool.acquire() as own, own.transaction():
            await own.execute("SET LOCAL deadlock_timeout = '10s'")
            await own.execute("UPDATE counters SET n = n + 10 WHERE id = 2")
            holds_second.set()
            await holds_first.wait()
            await own.execute("UPDATE counters SET n = n + 10 WHERE id = 1")

    try:
        await asyncio.wait_for(asyncio.gather(retry_transient(write), other()), timeout=30)
        assert runs == 2
        rows = await connection.fetch("SELECT id, n FROM counters ORDER BY id")
        assert [(r["id"], r["n"]) for r in rows] == [(1, 11), (2, 11)]  # both landed, each once
    finally:
        await pool.close()
        await connection.close()
