"""Executors under faults on real Postgres and the fake LLM server: crashing attempts, orphaned claims, killed
database connections. Whatever happens, every atom ends, and none is paid for twice."""

import asyncio
import contextlib
import functools
from pathlib import Path

import asyncpg
import pytest

from mge.adapters.llm import OpenAICompatibleLLM
from mge.adapters.manifests import load_plan_input
from mge.adapters.store.acceptance import AcceptanceStore
from mge.cost.pricing import DEFAULT_PRICES
from mge.executor import worker
from mge.executor.acceptance import GenerationConfig
from mge.executor.validation import CodeValidator
from mge.executor.worker import Executor, ExecutorConfig
from mge.models.masterplan import Atom
from mge.plan.dag import plan_dag
from tests.builders import atom, end_ramps, spec
from tests.support.fake_llm import FakeLLM, FakeLLMConfig

pytestmark = pytest.mark.component

TRACE = "00000000-0000-4000-8000-0000000000fa"
HELLO = Path(__file__).resolve().parents[2] / "examples" / "hello"


@pytest.fixture
async def fake_llm():
    server = FakeLLM()
    await server.start()
    yield server
    await server.stop()


async def _register(store, atoms, name="plan"):
    plan = plan_dag((a.id, a.depends_on) for a in atoms)
    plan_id, _ = await store.register_plan(
        namespace="ns", name=name, trace_id=TRACE, generation=1, spec=spec(*atoms), atoms=atoms, plan=plan
    )
    return plan_id


def _executor(store, fake_llm, validator, name, **config):
    llm = OpenAICompatibleLLM(fake_llm.url, "k", backoff_base_s=0.01, backoff_cap_s=0.02, jitter=lambda: 1.0)
    return Executor(store, llm, validator, DEFAULT_PRICES, ExecutorConfig(executor_id=name, **config))


@contextlib.asynccontextmanager
async def _running(*executors):
    stop = asyncio.Event()
    tasks = [asyncio.create_task(e.run(stop)) for e in executors]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        for executor in executors:
            await executor.llm.close()


async def _read(read):
    """The test's own reads live through the killed connections too: a failed read is simply read again."""
    while True:
        try:
            return await read()
        except (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError):
            await asyncio.sleep(0.05)


async def _progress(store, plan_id):
    return await _read(lambda: store.progress(plan_id))


async def _until_finished(store, plan_id, timeout):
    async with asyncio.timeout(timeout):
        while not (progress := await _progress(store, plan_id)).finished:
            await asyncio.sleep(0.05)
    return progress


async def _state(store, plan_id, atom_id):
    return await store.pool.fetchval(
        "SELECT state FROM atoms WHERE masterplan_id = $1 AND atom_id = $2", plan_id, atom_id
    )


async def _kill_connections(admin, database):
    """What a Postgres restart or failover does to every client: all their connections end."""
    return await admin.fetchval(
        """SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
           WHERE datname = $1 AND pid <> pg_backend_pid()) AS killed""",
        database,
    )


async def test_an_attempt_that_crashes_is_recorded_and_the_atom_ends_with_the_error(
    store, fake_llm, monkeypatch, tmp_path
):
    """The TypeScript checker cannot start (no compiler where it looks): every attempt raises
    TypeScriptUnavailable after its LLM call was paid. The atom must not stay running."""
    monkeypatch.setenv("MGE_NODE_MODULES", str(tmp_path / "missing"))
    fake_llm.responder = lambda body, atom_id, attempt: "```typescript\nexport const x = 1;\n```"
    ts = Atom(id="ts", file="src/x.ts", language="typescript", description="Export x.")
    plan_id = await _register(store, [ts])
    validator = CodeValidator()
    try:
        async with _running(_executor(store, fake_llm, validator, "ex", idle_poll_s=0.05)):
            progress = await _until_finished(store, plan_id, timeout=15)
    finally:
        await validator.close()

    attempts = await store.pool.fetch(
        "SELECT outcome, error, cost_usd FROM atom_attempts WHERE masterplan_id = $1 ORDER BY attempt",
        plan_id,
    )
    assert progress.failed == 1
    (failure,) = await store.failures(plan_id)
    assert "TypeScriptUnavailable" in failure[1]
    assert "MGE_NODE_MODULES" in failure[1]
    # Every paid call has its attempt row, with the error and what it cost.
    assert len(attempts) == fake_llm.stats.calls_per_atom["ts"] == 3
    assert {a["outcome"] for a in attempts} == {"error"}
    assert all(a["cost_usd"] > 0 for a in attempts)


async def test_a_claim_no_task_works_on_is_taken_over_though_its_executor_is_alive(
    store, fake_llm, validator
):
    """ "ex" holds "orphan" but no task of it works on it (a task that died): its heartbeat, busy renewing
    "slow", must not keep the orphan's lease alive."""
    fake_llm.config = FakeLLMConfig(atom_latency_s={"slow": 12.0})
    plan_id = await _register(store, [atom("orphan"), atom("slow")])
    (orphan,) = await store.claim("ex", 1, lease_seconds=3.0)
    assert orphan.atom_id == "orphan"

    busy = _executor(store, fake_llm, validator, "ex", heartbeat_s=0.05, lease_s=3.0, idle_poll_s=0.05)
    other = _executor(store, fake_llm, validator, "other", idle_poll_s=0.05)
    async with _running(busy):
        async with asyncio.timeout(5):  # "ex" works on "slow", so its heartbeat runs
            while fake_llm.stats.calls_per_atom["slow"] == 0:
                await asyncio.sleep(0.02)
        async with _running(other):
            async with asyncio.timeout(8):  # well before "slow" answers
                while await _state(store, plan_id, "orphan") != "succeeded":
                    await asyncio.sleep(0.05)
            slow_state = await _state(store, plan_id, "slow")
            await _until_finished(store, plan_id, timeout=20)

    assert slow_state == "running"
    assert fake_llm.stats.calls_per_atom == {"orphan": 1, "slow": 1}


async def test_killed_database_connections_do_not_end_the_heartbeat(store, fake_llm, validator, pg):
    """Postgres restarts while "ex" waits on a long call: its heartbeat must go on renewing the lease, or
    "other" takes the atom over when the lease runs out and pays for it a second time."""
    fake_llm.config = FakeLLMConfig(atom_latency_s={"slow": 4.0})
    plan_id = await _register(store, [atom("slow")])
    busy = _executor(store, fake_llm, validator, "ex", heartbeat_s=0.1, lease_s=2.0, idle_poll_s=0.05)
    other = _executor(store, fake_llm, validator, "other", idle_poll_s=0.05)
    admin = await asyncpg.connect(pg)
    database = await admin.fetchval("SELECT current_database()")
    try:
        async with _running(busy):
            async with asyncio.timeout(5):
                while fake_llm.stats.in_flight == 0:
                    await asyncio.sleep(0.02)
            async with _running(other):
                for _ in range(3):
                    await _kill_connections(admin, database)
                    await asyncio.sleep(0.3)
                progress = await _until_finished(store, plan_id, timeout=10)
    finally:
        await admin.close()

    assert progress.succeeded == 1
    assert fake_llm.stats.calls_per_atom["slow"] == 1


async def test_executors_recover_from_killed_connections_and_pay_for_no_atom_twice(
    store, fake_llm, validator, pg
):
    fake_llm.config = FakeLLMConfig(base_latency_s=0.05, latency_jitter_s=0.1)
    atoms = [atom(f"a{i}", *([f"a{i - 1}"] if i % 4 else [])) for i in range(40)]
    plan_id = await _register(store, atoms)
    fleet = [
        _executor(store, fake_llm, validator, f"ex-{n}", concurrency=4, heartbeat_s=0.2, idle_poll_s=0.1)
        for n in range(3)
    ]
    admin = await asyncpg.connect(pg)
    database = await admin.fetchval("SELECT current_database()")
    kills = []
    try:
        async with _running(*fleet):
            while len(kills) < 6 and not (await _progress(store, plan_id)).finished:
                kills.append(await _kill_connections(admin, database))
                await asyncio.sleep(0.25)
            progress = await _until_finished(store, plan_id, timeout=60)
    finally:
        await admin.close()

    assert len(kills) >= 3  # connections were killed again and again while the plan ran
    assert all(kills)
    assert (progress.succeeded, progress.failed) == (40, 0)
    assert set(fake_llm.stats.calls_per_atom.values()) == {1}
    counts = await _read(
        lambda: store.pool.fetchrow(
            """SELECT (SELECT count(*) FROM atom_attempts WHERE masterplan_id = $1) AS attempts,
                  (SELECT count(*) FROM cost_events WHERE masterplan_id = $1 AND kind = 'settle') AS settles,
                  (SELECT count(*) FROM cost_reservations WHERE masterplan_id = $1) AS open_reservations,
                  (SELECT current_cost_usd FROM masterplans WHERE id = $1) AS spent,
                  (SELECT sum(cost_usd) FROM atom_attempts WHERE masterplan_id = $1) AS attempt_costs""",
            plan_id,
        )
    )
    assert (counts["attempts"], counts["settles"], counts["open_reservations"]) == (40, 40, 0)
    assert counts["spent"] == counts["attempt_costs"]


async def test_a_test_generation_longer_than_its_lease_is_kept_by_the_heartbeat_and_paid_once(
    store, fake_llm, validator, monkeypatch
):
    """The generation claim's lease is shortened to 1 s (as a long generation outlives a longer one); its
    calls take 2.5 s. Without renewal the second executor takes the generation over and pays again. (A 0.5 s
    lease was lost now and then on a loaded CI machine, where a heartbeat can be half a second late.)"""
    monkeypatch.setattr(worker, "GenerationConfig", functools.partial(GenerationConfig, lease_s=1.0))
    name, plan_spec, atoms = load_plan_input(HELLO)
    fake_llm.load_recording(HELLO / "responses.jsonl")
    fake_llm.config = FakeLLMConfig(atom_latency_s={f"acceptance/MUST-{n}": 2.5 for n in (1, 2, 3)})
    plan_id, _ = await store.register_plan(
        namespace="ns",
        name=name,
        trace_id=TRACE,
        generation=1,
        spec=plan_spec,
        atoms=atoms,
        plan=plan_dag((a.id, a.depends_on) for a in atoms),
    )
    acceptance = AcceptanceStore(store.pool)
    await acceptance.ensure_generation(plan_id)
    fleet = [
        _executor(store, fake_llm, validator, f"ex-{n}", lease_s=1.0, heartbeat_s=0.05, idle_poll_s=0.05)
        for n in range(2)
    ]
    async with _running(*fleet):
        await _until_finished(store, plan_id, timeout=30)
        async with asyncio.timeout(30):
            while await acceptance.generation_state(plan_id) != "done":
                await asyncio.sleep(0.05)

    calls = {a: n for a, n in fake_llm.stats.calls_per_atom.items() if a.startswith("acceptance/")}
    assert calls
    assert set(calls.values()) == {1}


async def test_a_replan_of_a_running_atom_lands_the_new_code_not_the_old_calls(store, fake_llm, validator):
    """The atom's description changes while its call runs; the same executor claims it again. The old call
    answers first: its code (for the old description) must not become the atom's output."""

    def responder(body, atom_id, attempt):
        changed = "changed" in body["messages"][-1]["content"]
        return "```python\nNEW = 1\n```" if changed else "```python\nOLD = 1\n```"

    fake_llm.responder = responder
    fake_llm.config = FakeLLMConfig(base_latency_s=1.0)
    plan_id = await _register(store, [atom("a")])
    executor = _executor(store, fake_llm, validator, "ex", heartbeat_s=0.05, idle_poll_s=0.05)
    async with _running(executor):
        async with asyncio.timeout(5):
            while fake_llm.stats.in_flight == 0:
                await asyncio.sleep(0.01)
        changed = atom("a").model_copy(update={"description": "Implement a, changed."})
        await _register(store, [changed])
        progress = await _until_finished(store, plan_id, timeout=15)

    assert progress.succeeded == 1
    assert [o.output for o in await store.outputs(plan_id)] == ["NEW = 1\n"]
    assert fake_llm.stats.calls_per_atom["a"] == 2


async def test_a_claim_on_a_connection_that_died_is_made_again_at_once(store, fake_llm, validator):
    """After a Postgres restart the pool can still hand out a connection that died with it, until the event
    loop has read its end: the claim a notification asked for then failed, and the executor waited for its
    poll (here 60 s) with the atom ready. It claims again at once now. The dead connection is stood for by
    `Store.claim` raising asyncpg's error for one once (the real one depends on when the loop reads the
    socket's end); the store, the executor and the second claim are real."""
    plan_id = await _register(store, [atom("a")])
    await end_ramps(store)
    claim = store.claim
    failed = []

    async def claim_on_a_dead_connection_first(*args, **kwargs):
        if not failed:
            failed.append(args)
            raise asyncpg.exceptions.ConnectionDoesNotExistError(
                "connection was closed in the middle of operation"
            )
        return await claim(*args, **kwargs)

    store.claim = claim_on_a_dead_connection_first
    try:
        async with _running(_executor(store, fake_llm, validator, "ex", idle_poll_s=60.0)):
            progress = await _until_finished(store, plan_id, timeout=10)
    finally:
        del store.claim

    assert failed
    assert progress.succeeded == 1


async def test_after_a_postgres_restart_newly_ready_atoms_still_wake_the_executor(
    store, fake_llm, validator, pg
):
    """Executors LISTEN for ready atoms and poll only as a safety net (here every 60 s). The LISTEN connection
    dies with the others; the executor must listen again, not fall back to the poll for good."""
    executor = _executor(store, fake_llm, validator, "ex", idle_poll_s=60.0)
    admin = await asyncpg.connect(pg)
    database = await admin.fetchval("SELECT current_database()")
    try:
        async with _running(executor):
            async with asyncio.timeout(10):  # the executor has started listening
                while not await admin.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND query ILIKE 'LISTEN%'",
                    database,
                ):
                    await asyncio.sleep(0.05)
            await _kill_connections(admin, database)
            async with asyncio.timeout(10):  # and listens again on a new connection
                while not await admin.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND query ILIKE 'LISTEN%'",
                    database,
                ):
                    await asyncio.sleep(0.05)
            # The test's own write must not take a pooled connection whose end its loop has not read yet: what
            # is under test is the executor's new LISTEN, not this registration.
            await store.pool.expire_connections()
            plan_id = await _register(store, [atom("a")])
            progress = await _until_finished(store, plan_id, timeout=10)
    finally:
        await admin.close()

    assert progress.succeeded == 1
