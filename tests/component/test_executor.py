"""Executors on real Postgres against the fake LLM server: completion, no double work, faults, shutdown."""

import asyncio
import contextlib
import time
from decimal import Decimal
from pathlib import Path

import pytest

from mge.adapters.llm import ChatRequest, Completion, OpenAICompatibleLLM
from mge.adapters.manifests import load_plan_input
from mge.adapters.store.ledger import CostLedger
from mge.adapters.store.queue import READY_CHANNEL
from mge.cost.pricing import DEFAULT_PRICES
from mge.executor.worker import Executor, ExecutorConfig
from mge.models.masterplan import Atom
from mge.plan.dag import plan_dag
from tests.builders import atom, end_ramps, spec, succeed
from tests.support.fake_llm import FakeLLM, FakeLLMConfig, Fault
from tests.support.operator import eventually

pytestmark = pytest.mark.component

REPO = Path(__file__).resolve().parents[2]
TRACE = "00000000-0000-4000-8000-0000000000aa"


@pytest.fixture
async def fake_llm():
    server = FakeLLM()
    await server.start()
    yield server
    await server.stop()


async def _register(store, plan_spec, atoms, name="plan"):
    plan = plan_dag((a.id, a.depends_on) for a in atoms)
    plan_id, _ = await store.register_plan(
        namespace="ns", name=name, trace_id=TRACE, generation=1, spec=plan_spec, atoms=atoms, plan=plan
    )
    return plan_id


def _executor(store, fake_llm, validator, name="ex", **config):
    llm = OpenAICompatibleLLM(fake_llm.url, "k", backoff_base_s=0.01, backoff_cap_s=0.02, jitter=lambda: 1.0)
    return Executor(store, llm, validator, DEFAULT_PRICES, ExecutorConfig(executor_id=name, **config))


@contextlib.contextmanager
def _loop_claims_counted(store):
    """The executors' own claims (not those of their attempts' writes), each listed as it is made; by
    wrapping `Store.claim`, nothing is replaced."""
    claims = []
    claim = store.claim

    async def counted_claim(*args, **kwargs):
        claims.append(args)
        return await claim(*args, **kwargs)

    store.claim = counted_claim
    try:
        yield claims
    finally:
        del store.claim


async def _run_until_finished(store, plan_id, executors, timeout=30.0):
    stop = asyncio.Event()
    tasks = [asyncio.create_task(e.run(stop)) for e in executors]
    try:
        async with asyncio.timeout(timeout):
            while not (progress := await store.progress(plan_id)).finished:
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        for executor in executors:
            await executor.llm.close()
    return progress


@contextlib.asynccontextmanager
async def _running(executor):
    """The executor runs inside the block; stopped, and its LLM client closed, when the block ends."""
    stop = asyncio.Event()
    running = asyncio.create_task(executor.run(stop))
    try:
        yield
    finally:
        stop.set()
        await running
        await executor.llm.close()


async def test_hello_example_runs_to_completion_with_validated_code(store, fake_llm, validator):
    name, plan_spec, atoms = load_plan_input(REPO / "examples" / "hello")
    fake_llm.load_recording(REPO / "examples" / "hello" / "responses.jsonl")
    plan_id = await _register(store, plan_spec, atoms, name)

    progress = await _run_until_finished(store, plan_id, [_executor(store, fake_llm, validator)])

    assert (progress.succeeded, progress.failed) == (len(atoms), 0)
    outputs = {o.atom_id: o.output for o in await store.outputs(plan_id)}
    assert "def greet(name: str" in outputs["greet"]
    assert fake_llm.stats.calls_per_atom["greet"] == 2  # the recorded syntax error was repaired
    assert fake_llm.stats.trace_ids == {TRACE}


async def test_eight_executors_never_run_an_atom_twice(store, fake_llm, validator):
    fake_llm.config = FakeLLMConfig(base_latency_s=0.01, latency_jitter_s=0.02)
    atoms = [atom(f"a{i}", *([f"a{i - 1}"] if i % 5 else [])) for i in range(60)]
    plan_id = await _register(store, spec(*atoms), atoms)
    executors = [_executor(store, fake_llm, validator, name=f"ex-{n}", concurrency=4) for n in range(8)]

    progress = await _run_until_finished(store, plan_id, executors)

    assert progress.succeeded == 60
    assert set(fake_llm.stats.calls_per_atom.values()) == {1}
    rows = await store.pool.fetchval("SELECT count(*) FROM atom_attempts WHERE masterplan_id = $1", plan_id)
    assert rows == 60


async def test_executors_whose_endpoint_is_down_do_not_pass_the_turn_to_claim_around_without_end(
    store, fake_llm, validator
):
    """The executors of a process take turns to claim for a notification. While their endpoint's circuit is
    open they claim nothing: one that took the turn would pass it to the next and so on around, a loop that
    never waits. None takes it then, and the process stays idle until a trial call is due."""
    fake_llm.down_with = 503
    atoms = [atom(f"a{n}") for n in range(12)]
    await _register(store, spec(*atoms), atoms)
    await end_ramps(store)
    executors = [_executor(store, fake_llm, validator, name=f"ex-{n}", concurrency=4) for n in range(4)]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(e.run(stop)) for e in executors]
    try:
        await eventually(lambda: all(e.circuit.calls_allowed(time.monotonic()) == 0 for e in executors))
        for _ in range(5):
            await store.pool.execute("SELECT pg_notify($1, '')", READY_CHANNEL)
        busy_before = time.process_time()
        await asyncio.sleep(1.0)  # the first trial call is 2 s after the circuit opened
        busy = time.process_time() - busy_before
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        for executor in executors:
            await executor.llm.close()

    assert busy < 0.5, busy  # seconds of CPU in a second of waiting


async def test_an_executor_claims_the_next_atom_in_the_write_of_the_one_before(store, fake_llm, validator):
    """Down a chain, each atom's write claims the one it made ready: the loop's own claims are the first
    one and those after a notification or a poll, not one per atom (a claim per atom was a transaction per
    atom). The loop's claims are counted by wrapping `Store.claim`; nothing is replaced."""
    fake_llm.config = FakeLLMConfig(base_latency_s=0.01)
    atoms = [atom(f"a{i}", *([f"a{i - 1}"] if i else [])) for i in range(15)]
    plan_id = await _register(store, spec(*atoms), atoms)
    await end_ramps(store)
    with _loop_claims_counted(store) as loop_claims:
        progress = await _run_until_finished(
            # No poll within the run, however slow the machine: a poll's claim is not what is counted.
            store,
            plan_id,
            [_executor(store, fake_llm, validator, concurrency=2, idle_poll_s=60.0)],
        )

    assert (progress.succeeded, progress.failed) == (15, 0)
    assert len(loop_claims) <= 3


async def test_a_claim_that_got_fewer_atoms_than_asked_is_not_followed_at_once_by_another(
    store, fake_llm, validator
):
    """One atom ready and room for more: the claim that took it left nothing else ready. The loop used to claim
    again at once (a transaction that found nothing), and once more when its look for acceptance tests to
    generate came back empty: the chain test above counted 3 loop claims, and now and then a 4th, which failed
    it. Now the one claim is all, until a notification, an atom's end or a poll."""
    fake_llm.config = FakeLLMConfig(base_latency_s=0.3)
    plan_id = await _register(store, spec(atom("a")), [atom("a")])
    await end_ramps(store)
    with _loop_claims_counted(store) as loop_claims:
        progress = await _run_until_finished(
            store, plan_id, [_executor(store, fake_llm, validator, concurrency=4, idle_poll_s=60.0)]
        )

    assert (progress.succeeded, progress.failed) == (1, 0)
    assert len(loop_claims) == 1, (
        loop_claims
    )  # was 3: a claim for the room left, then one after the empty look


async def test_a_notification_that_comes_while_the_loops_claim_runs_is_not_lost(store, fake_llm, validator):
    """The loop's claim promises all its free slots while it runs, so a notification arriving then finds no
    room and wakes nothing. That claim, begun before the atoms were ready, came back empty, the loop slept,
    and the atoms waited for the poll (here 60 s; seen in a fault test on a loaded machine). The loop now
    claims again when news came during its claim. The claim is slowed by wrapping `Store.claim` (it waits
    until the plan is registered and its notification has had time to arrive before it returns), as a loaded
    machine slows it; the claim itself is real."""
    registered = asyncio.Event()
    claim = store.claim
    loop_claims = []

    async def slow_first_claim(*args, **kwargs):
        claimed = await claim(*args, **kwargs)
        loop_claims.append(len(claimed))
        if len(loop_claims) == 1:
            await registered.wait()
            await asyncio.sleep(0.3)  # the registration's notification arrives meanwhile
        return claimed

    store.claim = slow_first_claim
    try:
        async with _running(_executor(store, fake_llm, validator, concurrency=2, idle_poll_s=60.0)):
            async with asyncio.timeout(5):
                while not loop_claims:
                    await asyncio.sleep(0.01)
            plan_id = await _register(store, spec(atom("a")), [atom("a")])
            await end_ramps(store)
            registered.set()
            async with asyncio.timeout(5):
                while not (progress := await store.progress(plan_id)).finished:
                    await asyncio.sleep(0.05)
    finally:
        del store.claim

    assert loop_claims[0] == 0
    assert progress.succeeded == 1


class _AnswersInMemory:
    """An LLM client that answers without I/O, as a prompt cache served from memory does: the whole attempt
    of the next atom then runs in a few steps of the event loop. In-process: nothing real answers this fast."""

    label = "in-memory answers (test)"

    async def complete(self, request: ChatRequest) -> Completion:
        return Completion(content="```python\nVALUE = 1\n```", prompt_tokens=100, completion_tokens=10)

    async def close(self) -> None:
        return None


async def test_an_atom_whose_attempt_takes_no_time_finds_the_slot_of_the_atom_before_free(store, validator):
    """One slot down a chain: each write claims the next atom, whose attempt (answered from memory) ends
    before the task of the atom before has taken its last steps. That task's slot is free once its last
    write landed; counted as taken, the write found no room, claimed nothing, and the loop claimed instead:
    a transaction more per atom. The loop's claims are counted by wrapping `Store.claim`."""
    atoms = [atom(f"a{i}", *([f"a{i - 1}"] if i else [])) for i in range(12)]
    plan_id = await _register(store, spec(*atoms), atoms)
    await end_ramps(store)
    executor = Executor(
        store,
        _AnswersInMemory(),
        validator,
        DEFAULT_PRICES,
        ExecutorConfig(executor_id="ex", concurrency=1, idle_poll_s=60.0),
    )
    with _loop_claims_counted(store) as loop_claims:
        progress = await _run_until_finished(store, plan_id, [executor])

    assert (progress.succeeded, progress.failed) == (12, 0)
    assert len(loop_claims) <= 3


async def test_atoms_claimed_by_a_write_that_outlives_its_cancelled_task_are_handed_back(
    store, fake_llm, validator
):
    """Shutdown cancels an atom's task while its write (shielded: it settles money) is still on the way. That
    write claims the next atoms for the freed slot; with nobody left to run them they are handed back, not
    left running until their leases run out. The write is held back by wrapping `Store.finish_attempt`;
    nothing is replaced."""
    atoms = [atom("a"), atom("b")]
    plan_id = await _register(store, spec(*atoms), atoms)
    await end_ramps(store)
    entered, gate = asyncio.Event(), asyncio.Event()
    finish_attempt = store.finish_attempt
    landed = []

    async def held_back(*args, **kwargs):
        entered.set()
        await gate.wait()
        landed.append(await finish_attempt(*args, **kwargs))
        return landed[-1]

    store.finish_attempt = held_back
    executor = _executor(store, fake_llm, validator, concurrency=1, shutdown_grace_s=0.1)
    stop = asyncio.Event()
    try:
        running = asyncio.create_task(executor.run(stop))
        await asyncio.wait_for(entered.wait(), 10)
        stop.set()
        await asyncio.wait_for(running, 10)  # the task was cancelled and its atom released meanwhile
        gate.set()  # the write lands now: its claim takes an atom nobody will run
        await eventually(lambda: landed)

        async def nothing_running():
            return not await store.pool.fetchval(
                "SELECT count(*) FROM atoms WHERE masterplan_id = $1 AND state = 'running'", plan_id
            )

        await eventually(nothing_running)
        assert len(landed[0].claimed) == 1  # a (released by the shutdown) or b: either way, nobody runs it
        # Its call was reserved with the claim, and is never made: the money goes back with the atom.
        assert landed[0].claimed[0].reservation is not None
        assert await store.pool.fetchval("SELECT count(*) FROM cost_reservations") == 0
        assert await store.pool.fetchval(
            "SELECT reserved_cost_usd FROM masterplans WHERE id = $1", plan_id
        ) == Decimal(0)
        released = await store.pool.fetch(
            "SELECT atom_id, amount_usd, detail->>'why' AS why FROM cost_events WHERE kind = 'release'"
        )
        assert [(r["atom_id"], r["amount_usd"], r["why"]) for r in released] == [
            (landed[0].claimed[0].atom_id, landed[0].claimed[0].reservation.amount_usd, "handed back")
        ]
    finally:
        gate.set()
        del store.finish_attempt
        await executor.llm.close()


async def _ledger_events(store, plan_id):
    rows = await store.pool.fetch(
        "SELECT atom_id, kind, amount_usd, detail->>'why' AS why FROM cost_events WHERE masterplan_id = $1 "
        "ORDER BY id",
        plan_id,
    )
    return [(r["atom_id"], r["kind"], r["amount_usd"], r["why"]) for r in rows]


def _ledger_reservations_counted(executor):
    """The calls the executor's ledger reserved itself (not with a claim), each listed as it is made; by
    wrapping `reserve`, nothing is replaced."""
    reservations = []
    reserve = executor.ledger.reserve

    async def counted_reserve(*args, **kwargs):
        reservations.append(args)
        return await reserve(*args, **kwargs)

    executor.ledger.reserve = counted_reserve
    return reservations


async def test_down_a_chain_each_call_is_reserved_by_the_write_of_the_atom_before(store, fake_llm, validator):
    """The write that ends an atom claims the next and reserves its call under the plan lock it holds for its
    own settlement: one lock and one transaction per atom instead of two. Only the loop's own claims (the
    first, and those after a notification) leave the reservation to the call. Counted by wrapping the
    ledger's `reserve`; nothing is replaced."""
    fake_llm.config = FakeLLMConfig(base_latency_s=0.01)
    atoms = [atom(f"a{i}", *([f"a{i - 1}"] if i else [])) for i in range(15)]
    plan_id = await _register(store, spec(*atoms), atoms)
    await end_ramps(store)
    executor = _executor(store, fake_llm, validator, concurrency=2, idle_poll_s=60.0)
    ledger_reservations = _ledger_reservations_counted(executor)
    progress = await _run_until_finished(store, plan_id, [executor])
    await executor.llm.close()

    assert (progress.succeeded, progress.failed) == (15, 0)
    assert len(ledger_reservations) <= 3
    events = await _ledger_events(store, plan_id)
    # Every atom: one reservation, one settlement, nothing given back; nothing is left reserved.
    assert sorted((a, k) for a, k, _, _ in events) == sorted(
        (f"a{i}", kind) for i in range(15) for kind in ("reserve", "settle")
    )
    spend = await CostLedger(store.pool).spend(plan_id)
    assert spend.reserved_usd == 0
    assert spend.spent_usd == sum(amount for _, kind, amount, _ in events if kind == "settle") > 0


async def test_an_executors_own_claim_reserves_the_call_of_new_work_on_a_plan_it_has_called(
    store, fake_llm, validator
):
    """The plan is applied again with a new atom while its executor idles: the notification wakes the
    executor, and its own claim (not an attempt's write) takes the atom with its call reserved, about what
    the plan's last call was, in the claim's transaction. Only the plan's first call is reserved by the
    ledger. Counted by wrapping the ledger's `reserve`; nothing is replaced."""
    plan_id = await _register(store, spec(atom("a1")), [atom("a1")])
    await end_ramps(store)
    executor = _executor(store, fake_llm, validator, concurrency=1, idle_poll_s=60.0)
    ledger_reservations = _ledger_reservations_counted(executor)
    async with _running(executor), asyncio.timeout(30):
        while (await store.progress(plan_id)).succeeded < 1:
            await asyncio.sleep(0.05)
        await _register(store, spec(atom("a1"), atom("a2")), [atom("a1"), atom("a2")])
        while not (progress := await store.progress(plan_id)).finished:
            await asyncio.sleep(0.05)

    assert (progress.succeeded, progress.failed) == (2, 0)
    assert len(ledger_reservations) == 1
    events = await _ledger_events(store, plan_id)
    assert [(a, k) for a, k, _, _ in events] == [
        ("a1", "reserve"),
        ("a1", "settle"),
        ("a2", "reserve"),
        ("a2", "settle"),
    ]
    assert (await CostLedger(store.pool).spend(plan_id)).reserved_usd == 0


async def test_a_call_longer_than_its_claim_reserved_exchanges_the_reservation_for_its_worst_case(
    store, fake_llm, validator
):
    """The write of `short` reserves for `long` about what its own call's worst case was; `long`'s prompt is
    far longer, so its call gives that back and reserves its own worst case before it is made: a call is
    never made on a reservation smaller than its worst case."""
    atoms = [
        atom("short"),
        Atom(id="long", file="pkg/long.py", language="python", description="𝔘" * 19999, depends_on=["short"]),
    ]
    plan_id = await _register(store, spec(*atoms), atoms)
    await end_ramps(store)

    progress = await _run_until_finished(
        store, plan_id, [_executor(store, fake_llm, validator, concurrency=1)]
    )

    assert (progress.succeeded, progress.failed) == (2, 0)
    long_events = [
        (kind, amount, why) for a, kind, amount, why in await _ledger_events(store, plan_id) if a == "long"
    ]
    (claimed_kind, claimed_usd, _), exchanged, (own_kind, own_usd, _), (settled_kind, _, _) = long_events
    assert (claimed_kind, own_kind, settled_kind) == ("reserve", "reserve", "settle")
    assert exchanged == ("release", claimed_usd, "below the call's worst case")
    assert own_usd > claimed_usd
    assert (await CostLedger(store.pool).spend(plan_id)).reserved_usd == 0


@pytest.mark.parametrize(
    ("answer", "quick_ends", "next_ends", "outputs"),
    [
        # The write frees `next` and claims it for its slot: stopping, that claim is handed back.
        ("```python\nVALUE = 1\n```", "succeeded", "ready", ["VALUE = 1\n"]),
        # Rejected while stopping: no second attempt here; another executor makes it, the first counted.
        ("```python\ndef broken(:\n```", "ready", "pending", []),
    ],
    ids=["valid", "rejected"],
)
async def test_shutdown_lets_a_write_under_way_land_and_hands_back_only_the_atoms_it_stopped(
    store, fake_llm, validator, answer, quick_ends, next_ends, outputs
):
    """At shutdown one atom is in its attempt's write (it carries the atom's code and what its call cost) while
    another waits for a slow answer. The call is cancelled and its atom handed back; the write is waited for,
    not raced by a hand-back that would make it find its lease gone and drop the code, to be paid for again.
    Every hand-back is written before `run` returns: a pod's process ends right after it. The write is held
    back by wrapping `Store.finish_attempt`, and the hand-back of `next` slowed by wrapping `Store.release`; nothing is
    replaced."""
    fake_llm.config = FakeLLMConfig(atom_latency_s={"slow": 30.0})
    fake_llm.responder = lambda _body, atom_id, _attempt: (
        answer if atom_id == "quick" else "```python\nB = 2\n```"
    )
    atoms = [atom("quick"), atom("slow"), atom("next", "quick")]
    plan_id = await _register(store, spec(*atoms), atoms)
    await end_ramps(store)
    entered, gate = asyncio.Event(), asyncio.Event()
    finish_attempt, release = store.finish_attempt, store.release

    async def held_back(claimed, *args, **kwargs):
        if claimed.atom_id == "quick":
            entered.set()
            await gate.wait()
        return await finish_attempt(claimed, *args, **kwargs)

    async def slow_release(claimed, *args, **kwargs):
        if claimed.atom_id == "next":
            await asyncio.sleep(0.5)
        return await release(claimed, *args, **kwargs)

    store.finish_attempt, store.release = held_back, slow_release
    grace = 1.0
    executor = _executor(store, fake_llm, validator, concurrency=2, shutdown_grace_s=grace)
    stop = asyncio.Event()
    try:
        running = asyncio.create_task(executor.run(stop))
        await asyncio.wait_for(entered.wait(), 10)
        async with asyncio.timeout(10):
            while fake_llm.stats.in_flight == 0:  # the slow atom's call is out
                await asyncio.sleep(0.02)
        stop.set()
        await asyncio.sleep(grace + 0.3)  # past the grace period: the slow call is cancelled by now
        gate.set()
        await asyncio.wait_for(running, 10)
        rows = await store.pool.fetch(
            "SELECT atom_id, state, attempts FROM atoms WHERE masterplan_id = $1", plan_id
        )
    finally:
        gate.set()
        del store.finish_attempt, store.release
        await executor.llm.close()

    assert {r["atom_id"]: (r["state"], r["attempts"]) for r in rows} == {
        "quick": (quick_ends, 1),
        "slow": ("ready", 0),
        "next": (next_ends, 0),
    }
    assert fake_llm.stats.calls_per_atom["quick"] == 1
    assert [o.output for o in await store.outputs(plan_id)] == outputs
    assert (await CostLedger(store.pool).spend(plan_id)).reserved_usd == 0


async def test_writes_that_finish_together_never_claim_past_the_concurrency_limit(store, fake_llm, validator):
    """Two atoms' last writes run at once, each with free slots beside its own to fill. Each may claim only
    the slots no other claim has promised: together they ran 6 atoms on a limit of 4. The writes are held
    until both have started by wrapping `Store.finish_attempt`; nothing is replaced."""
    atoms = [atom("x"), atom("y")]
    atoms += [atom(f"{root}{n}", root) for root in "xy" for n in range(5)]
    plan_id = await _register(store, spec(*atoms), atoms)
    await end_ramps(store)
    finish_attempt = store.finish_attempt
    both_started, later = asyncio.Barrier(2), asyncio.Event()
    landed = []
    entered = 0

    async def held_back(*args, **kwargs):
        # Counted on entry, not by the writes that landed: a third write that came in while the first two were
        # still writing waited at the barrier (a new round of it) for a partner that never came.
        nonlocal entered
        entered += 1
        if entered <= 2:
            await both_started.wait()
        else:
            await later.wait()  # the atoms the two writes claimed stay running until the count is taken
        landed.append(await finish_attempt(*args, **kwargs))
        return landed[-1]

    store.finish_attempt = held_back
    executor = _executor(store, fake_llm, validator, concurrency=4)
    executor.gate.limiter.limit = 4  # past the slow start: the concurrency is the bound
    stop = asyncio.Event()
    running = asyncio.create_task(executor.run(stop))
    try:
        await eventually(lambda: len(landed) >= 2)
        # The writes' claims, and a loop pass their tasks' ends wake (it fills a slot a claim of the loop's
        # promised meanwhile), fill the 4 slots; never more, however long it is watched.
        seen = []
        for _ in range(20):
            (claimed,) = await _running_by_plan(store, plan_id)
            seen.append(claimed)
            await asyncio.sleep(0.05)
        assert max(seen) == 4, seen
        assert seen[-1] == 4, seen
        later.set()
        async with asyncio.timeout(30):
            while not (await store.progress(plan_id)).finished:
                await asyncio.sleep(0.05)
    finally:
        later.set()
        stop.set()
        await running
        del store.finish_attempt
        await executor.llm.close()


async def test_garbage_answers_fail_the_atom_and_block_only_its_dependents(store, fake_llm, validator):
    fake_llm.responder = lambda body, atom_id, attempt: (
        "Sorry, I cannot help with that." if atom_id == "bad" else "```python\nX = 1\n```"
    )
    atoms = [atom("bad"), atom("after-bad", "bad"), atom("good"), atom("after-good", "good")]
    plan_id = await _register(store, spec(*atoms), atoms)

    progress = await _run_until_finished(store, plan_id, [_executor(store, fake_llm, validator)])

    assert (progress.succeeded, progress.failed, progress.blocked) == (2, 1, 1)
    failures = await store.failures(plan_id)
    assert failures[0][0] == "bad"
    assert "gave up after 3 attempts" in failures[0][1]
    assert "no code block" in failures[0][1]
    assert fake_llm.stats.calls_per_atom["bad"] == 3


async def test_validation_errors_are_fed_back_to_the_model(store, fake_llm, validator):
    prompts = []

    def responder(body, atom_id, attempt):
        prompts.append(body["messages"][-1]["content"])
        return (
            "```python\ndef broken(:\n```" if attempt == 1 else "```python\ndef fixed():\n    return 1\n```"
        )

    fake_llm.responder = responder
    atoms = [atom("a")]
    plan_id = await _register(store, spec(*atoms), atoms)

    progress = await _run_until_finished(store, plan_id, [_executor(store, fake_llm, validator)])

    assert progress.succeeded == 1
    assert "SyntaxError" in prompts[1]
    assert "previous answer" in prompts[1]


async def test_typescript_atoms_are_checked_by_the_typescript_compiler(store, fake_llm, validator):
    fake_llm.responder = lambda body, atom_id, attempt: (
        "```typescript\nexport function f( { return 1 }\n```"
        if attempt == 1
        else "```typescript\nexport function f(): number { return 1; }\n```"
    )
    ts_atom = Atom(id="ts", file="src/f.ts", language="typescript", description="Export f returning 1.")
    plan_id = await _register(store, spec(ts_atom), [ts_atom])

    progress = await _run_until_finished(store, plan_id, [_executor(store, fake_llm, validator)])

    assert progress.succeeded == 1
    row = await store.pool.fetchrow(
        "SELECT error FROM atom_attempts WHERE attempt = 1 AND masterplan_id = $1", plan_id
    )
    assert "TS1005" in row["error"]


async def test_killed_executor_atom_is_reclaimed_after_lease_expiry_and_completed_once(
    store, fake_llm, validator
):
    atoms = [atom("a")]
    plan_id = await _register(store, spec(*atoms), atoms)
    (held,) = await store.claim("killed-executor", 1, lease_seconds=0.3)  # it dies without a word

    progress = await _run_until_finished(
        store, plan_id, [_executor(store, fake_llm, validator, idle_poll_s=0.05)]
    )

    assert progress.succeeded == 1
    assert fake_llm.stats.calls_per_atom["a"] == 1
    assert await succeed(store, held, "killed-executor", "late write") is False
    assert [o.output for o in await store.outputs(plan_id)] == ["VALUE = 1\n"]


async def test_stop_releases_unfinished_atoms_for_other_executors(store, fake_llm, validator):
    fake_llm.config = FakeLLMConfig(base_latency_s=5.0)
    atoms = [atom("slow")]
    plan_id = await _register(store, spec(*atoms), atoms)
    executor = _executor(store, fake_llm, validator, shutdown_grace_s=0.1)
    stop = asyncio.Event()
    task = asyncio.create_task(executor.run(stop))
    async with asyncio.timeout(5):
        while fake_llm.stats.in_flight == 0:
            await asyncio.sleep(0.02)

    stop.set()
    await task
    await executor.llm.close()

    state = await store.pool.fetchval("SELECT state FROM atoms WHERE masterplan_id = $1", plan_id)
    assert state == "ready"


async def test_a_storm_of_429s_lowers_the_limit_and_fails_no_atom(store, fake_llm, validator):
    fake_llm.config = FakeLLMConfig(base_latency_s=0.01)
    fake_llm.inject(*[Fault(429, retry_after=0.01)] * 12)
    atoms = [atom(f"a{i}") for i in range(24)]
    plan_id = await _register(store, spec(*atoms), atoms)
    executor = _executor(store, fake_llm, validator, name="storm", concurrency=8)

    progress = await _run_until_finished(store, plan_id, [executor])

    assert (progress.succeeded, progress.failed) == (24, 0)
    assert any(a.reason.startswith("overloaded") for a in executor.gate.limiter.adjustments)
    assert fake_llm.stats.max_in_flight <= 8


async def test_in_flight_llm_calls_never_exceed_the_adaptive_limit(store, fake_llm, validator):
    """Checked whenever a call is admitted (calls in flight go up): then they never pass the limit. A limit
    that drops later does not stop the calls already in flight, so a count taken when a call ends may. The
    gate's `in_flight` is watched through a subclass property; its behaviour is the real gate's."""
    fake_llm.config = FakeLLMConfig(base_latency_s=0.05)
    atoms = [atom(f"a{i}") for i in range(30)]
    plan_id = await _register(store, spec(*atoms), atoms)
    executor = _executor(store, fake_llm, validator, name="ramp", concurrency=16)
    admitted: list[tuple[int, int]] = []  # (calls in flight once admitted, the limit then)

    class WatchedGate(type(executor.gate)):
        @property
        def in_flight(self):
            return self.__dict__["watched_in_flight"]

        @in_flight.setter
        def in_flight(self, value):
            if value > self.__dict__["watched_in_flight"]:
                admitted.append((value, self.limiter.limit))
            self.__dict__["watched_in_flight"] = value

    executor.gate.__dict__["watched_in_flight"] = executor.gate.__dict__.pop("in_flight")
    executor.gate.__class__ = WatchedGate

    await _run_until_finished(store, plan_id, [executor])

    assert admitted[0][1] == 2  # a fresh executor starts small (slow start)
    assert all(in_flight <= limit for in_flight, limit in admitted)
    assert max(limit for _, limit in admitted) > 2  # and grows while calls go well


async def test_an_executor_claims_no_more_atoms_than_its_limit_lets_call(store, fake_llm, validator):
    """Atoms claimed past the LLM limit would wait in this executor's queue while another one could run them:
    they stay ready in Postgres for the fleet (and count as the backlog the scaler sees)."""
    fake_llm.config = FakeLLMConfig(base_latency_s=0.3)
    atoms = [atom(f"a{i}") for i in range(12)]
    plan_id = await _register(store, spec(*atoms), atoms)
    await end_ramps(store)
    narrow = _executor(store, fake_llm, validator, name="narrow", concurrency=8)
    narrow.gate.limiter.maximum = narrow.gate.limiter.limit = 2
    wide = _executor(store, fake_llm, validator, name="wide", concurrency=8)
    stop = asyncio.Event()
    running = [asyncio.create_task(narrow.run(stop))]
    held = []
    try:
        for _ in range(20):  # 1 s: three rounds of calls
            held.append((await _running_by_plan(store, plan_id))[0])
            await asyncio.sleep(0.05)
        running.append(asyncio.create_task(wide.run(stop)))
        async with asyncio.timeout(30):
            while not (await store.progress(plan_id)).finished:
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*running)
        for executor in (narrow, wide):
            await executor.llm.close()

    assert max(held) == 2
    by_executor = dict(
        await store.pool.fetch(
            "SELECT executor, count(*) FROM atom_attempts WHERE masterplan_id = $1 GROUP BY executor", plan_id
        )
    )
    assert by_executor.get("wide", 0) >= 2  # what the narrow one left ready (2: its own slow start)


async def test_atoms_waiting_too_long_for_a_slot_go_back_to_the_queue(store, fake_llm, validator):
    """An executor claims no more atoms than its limit lets call, but a limit cut after a claim leaves atoms
    waiting for a slot: here the executor claims as if its limit were 4 (its `_room` is replaced) and the
    limit is 1."""
    fake_llm.config = FakeLLMConfig(base_latency_s=0.4)
    atoms = [atom(f"a{i}") for i in range(4)]
    plan_id = await _register(store, spec(*atoms), atoms)
    executor = _executor(store, fake_llm, validator, name="tight", concurrency=4, slot_timeout_s=0.1)
    executor.gate.limiter.maximum = executor.gate.limiter.limit = (
        1  # one call at a time: others time out waiting
    )
    executor._room = lambda: 4

    progress = await _run_until_finished(store, plan_id, [executor], timeout=30)

    assert progress.succeeded == 4
    assert executor.gate.queue.timeouts >= 1
    assert fake_llm.stats.max_in_flight == 1


async def test_start_jitter_delays_the_first_claim_and_stop_cuts_it_short(store, fake_llm, validator):
    atoms = [atom("a")]
    plan_id = await _register(store, spec(*atoms), atoms)
    executor = _executor(store, fake_llm, validator, start_jitter_s=3600.0)
    stop = asyncio.Event()
    task = asyncio.create_task(executor.run(stop))
    await asyncio.sleep(0.2)  # the first claim waits a random 0-3600 s: nothing may have been claimed yet

    state = await store.pool.fetchval("SELECT state FROM atoms WHERE masterplan_id = $1", plan_id)
    stop.set()
    async with asyncio.timeout(5):
        await task
    await executor.llm.close()

    assert state == "ready"


async def test_executor_reports_its_own_llm_and_claim_latency_and_request_counts(store, fake_llm, validator):
    fake_llm.config = FakeLLMConfig(base_latency_s=0.05, latency_jitter_s=0.0)
    atoms = [atom(f"s{i}") for i in range(12)]
    plan_id = await _register(store, spec(*atoms), atoms)

    await _run_until_finished(
        store, plan_id, [_executor(store, fake_llm, validator, name="ex-stats", heartbeat_s=0.05)]
    )

    row = await store.pool.fetchrow(
        "SELECT llm_p95_s, db_p95_s, llm_requests, llm_errors FROM executor_status WHERE executor = 'ex-stats'"
    )
    assert row["llm_requests"] >= 1
    assert row["llm_errors"] == 0
    assert row["llm_p95_s"] >= 0.05  # at least the fake provider's latency
    assert 0 < row["db_p95_s"] < 5


async def _running_by_plan(store, *plans):
    rows = await store.pool.fetch(
        """SELECT masterplan_id, count(*) AS n FROM atoms WHERE state = 'running' GROUP BY masterplan_id"""
    )
    counts = {r["masterplan_id"]: r["n"] for r in rows}
    return tuple(counts.get(plan, 0) for plan in plans)


async def test_a_new_plan_ramps_up_gradually_while_the_running_plan_keeps_its_share(
    store, fake_llm, validator
):
    fake_llm.config = FakeLLMConfig(base_latency_s=0.15, latency_jitter_s=0.0)
    old_atoms = [atom(f"old{i}") for i in range(300)]
    old = await _register(store, spec(*old_atoms), old_atoms, name="old")
    # A 10 s poll: a ready atom that waited for the poll instead of an answer's wake-up would take 10 s, well
    # past the bound below, which leaves a loaded machine (2.7 s seen in CI for a 2 s bound) its margin.
    executor = _executor(store, fake_llm, validator, concurrency=8, idle_poll_s=10.0)
    stop = asyncio.Event()
    worker = asyncio.create_task(executor.run(stop))
    loop = asyncio.get_running_loop()
    timeline = []
    try:
        async with asyncio.timeout(30):
            while (await _running_by_plan(store, old))[0] < 8:  # the old plan has ramped to full concurrency
                await asyncio.sleep(0.02)
            new_atoms = [atom(f"new{i}") for i in range(100)]
            # Higher priority: without a ramp the new plan would take every slot that frees up at once.
            new = await _register(store, spec(*new_atoms, priority=10), new_atoms, name="new")
            while not timeline or timeline[-1][2] < 8:
                timeline.append((loop.time(), *await _running_by_plan(store, old, new)))
                await asyncio.sleep(0.02)
    finally:
        stop.set()
        await worker
        await executor.llm.close()

    first = next(t for t, _, n in timeline if n > 0)
    grown = next(t for t, _, n in timeline if n > 2)
    full = next(t for t, _, n in timeline if n == 8)
    assert grown - first >= 0.12  # 2 atoms at once until one of its calls (0.15 s) answered
    assert full - first < 4.0  # then it grows with its answers: 2 -> 4 -> 8 in a few round trips
    assert max(o for t, o, _ in timeline if t < first + 0.12) >= 6  # meanwhile the old plan keeps its slots


async def test_a_new_plan_starts_with_two_atoms_on_the_whole_fleet_not_on_each_executor(
    store, fake_llm, validator
):
    fake_llm.config = FakeLLMConfig(base_latency_s=0.3)
    atoms = [atom(f"a{i}") for i in range(60)]
    plan_id = await _register(store, spec(*atoms), atoms)
    fleet = [_executor(store, fake_llm, validator, name=f"fleet-{n}", concurrency=8) for n in range(3)]
    stop = asyncio.Event()
    workers = [asyncio.create_task(executor.run(stop)) for executor in fleet]
    running_before_an_answer = []
    try:
        async with asyncio.timeout(10):
            while fake_llm.stats.completed == 0:
                running_before_an_answer.append((await _running_by_plan(store, plan_id))[0])
                await asyncio.sleep(0.01)
        progress = await _run_until_finished(store, plan_id, [], timeout=30)
    finally:
        stop.set()
        await asyncio.gather(*workers)
        for executor in fleet:
            await executor.llm.close()

    assert max(running_before_an_answer) == 2  # 3 executors x 8 slots, but the plan's ramp says 2
    assert fake_llm.stats.max_in_flight > 2  # and it grew once calls answered
    assert (progress.succeeded, progress.failed) == (60, 0)
