"""The cost ledger on real Postgres: no overshoot under 50 racing executors, expiry, caps, overrides."""

import asyncio
import json
import random
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import pytest

from mge.adapters.llm import ChatRequest, OpenAICompatibleLLM
from mge.adapters.llm_cache import BatchConfig, RequestBatcher
from mge.adapters.store.ledger import BudgetBusy, CostLedger
from mge.adapters.store.queue import AttemptRecord, ClaimRequest, Succeed
from mge.adapters.store.settlement import Settlement
from mge.adapters.store.store import Store
from mge.adapters.tokenizer import count_tokens
from mge.cost.caps import OverrideRejected
from mge.cost.pricing import DEFAULT_PRICES, worst_case_call_cost
from mge.generation.prompt import SYSTEM_PROMPT
from mge.models.masterplan import Budget
from mge.plan.dag import plan_dag
from tests.builders import atom, end_ramps, spec
from tests.support.batch_answers import batch_responder
from tests.support.fake_llm import FakeLLM, FakeLLMConfig
from tests.support.operator import eventually

pytestmark = pytest.mark.component


async def _plan(store: Store, atoms_count: int = 60, limit: float = 1.0, name: str = "budgeted"):
    atoms = [atom(f"a{i}") for i in range(atoms_count)]
    plan = plan_dag((a.id, a.depends_on) for a in atoms)
    plan_id, _ = await store.register_plan(
        namespace="ns",
        name=name,
        trace_id="00000000-0000-4000-8000-0000000000cc",
        generation=1,
        spec=spec(*atoms, budget={"limitUSD": limit}),
        atoms=atoms,
        plan=plan,
    )
    await end_ramps(store)
    return plan_id


@pytest.fixture
async def store(pg):
    store = await Store.connect(pg, max_size=60)
    yield store
    await store.close()


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
async def test_fifty_racing_executors_never_spend_past_the_hard_cap(store, seed):
    plan_id = await _plan(store, atoms_count=400, limit=1.0)
    ledger = CostLedger(store.pool)
    claimed = await store.claim("claimer", 400, 300)
    rnd = random.Random(seed)

    async def executor(atoms):
        for claimed_atom in atoms:
            worst = Decimal(rnd.randint(1, 40)) / 1000  # $0.001 - $0.040 per call
            reservation = await ledger.reserve(claimed_atom, "ex", worst, wait_s=None)
            if reservation is None:
                return
            await asyncio.sleep(0)  # let the others interleave between reserve and settle
            actual = worst * Decimal(rnd.randint(30, 100)) / 100
            await ledger.settle(
                reservation, claimed_atom, amount=actual, prompt_tokens=1, completion_tokens=1
            )

    await asyncio.gather(*(executor(claimed[n::50]) for n in range(50)))

    spend = await ledger.spend(plan_id)
    settled = await store.pool.fetchval(
        "SELECT sum(amount_usd) FROM cost_events WHERE masterplan_id = $1 AND kind = 'settle'", plan_id
    )
    assert settled == spend.spent_usd
    assert spend.spent_usd <= Decimal("1.0")
    assert spend.reserved_usd == 0
    assert spend.exhausted  # the budget was the limit, not the work
    hard_cap_events = await store.pool.fetchval(
        "SELECT count(*) FROM cost_events WHERE masterplan_id = $1 AND kind = 'hard_cap'", plan_id
    )
    assert hard_cap_events == 1


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_fifty_racing_executors_reserving_with_their_claims_never_spend_past_the_hard_cap(store, seed):
    """As above, but each settlement is an attempt's write that claims the racer's next atom and reserves
    for its call under the plan lock (what executors do): claim-time reservations race with the ledger's,
    near the cap too. A call whose worst case is more than its claim reserved exchanges it, as an executor's
    does; a racer that stops hands its last atom back, with what its claim reserved."""
    # The work would cost about $10: the budget ends it, after about 4 calls a racer.
    plan_id = await _plan(store, atoms_count=800, limit=3.0)
    ledger = CostLedger(store.pool)
    rnd = random.Random(seed)
    calls = {"reserved with the claim": 0, "exchanged": 0}
    record = AttemptRecord("0" * 16, "succeeded", None, 1, 1, False, Decimal(0), 1, datetime.now(UTC))

    async def executor(name):
        (claimed_atom,) = await store.claim(name, 1, 300)
        while True:
            worst = Decimal(rnd.randint(1, 40)) / 1000  # $0.001 - $0.040 per call
            reservation = claimed_atom.reservation
            if reservation is not None and worst > reservation.amount_usd:
                await ledger.release(reservation, claimed_atom, why="below the call's worst case")
                reservation = None
                calls["exchanged"] += 1
            elif reservation is not None:
                calls["reserved with the claim"] += 1
            if reservation is None:
                reservation = await ledger.reserve(claimed_atom, name, worst, wait_s=None)
            if reservation is None:
                await store.release(claimed_atom, name)
                return
            await asyncio.sleep(0)  # let the others interleave between reserve and settle
            actual = worst * Decimal(rnd.randint(30, 100)) / 100
            finished = await store.finish_attempt(
                claimed_atom,
                name,
                record,
                settlement=Settlement(reservation, actual, 1, 1),
                ending=Succeed("VALUE = 1"),
                claim_next=ClaimRequest(1, 300, None, Decimal(rnd.randint(20, 40)) / 1000, 300),
            )
            if not finished.claimed:
                return
            (claimed_atom,) = finished.claimed

    await asyncio.gather(*(executor(f"ex{n}") for n in range(50)))

    await _assert_never_past_the_cap(store, ledger, plan_id, Decimal("3.0"))
    assert await store.pool.fetchval("SELECT count(*) FROM cost_reservations") == 0
    assert calls["reserved with the claim"] > 50
    assert calls["exchanged"] > 10


async def test_exhausted_plan_is_not_claimed_until_an_override_resumes_it(store):
    plan_id = await _plan(store, atoms_count=3, limit=0.01)
    ledger = CostLedger(store.pool)
    (first, *_) = await store.claim("ex", 1, 30)
    assert await ledger.reserve(first, "ex", Decimal("0.02")) is None
    await store.release(first, "ex")

    held = await store.claim("ex", 3, 30)
    happened = await ledger.apply_budget(
        plan_id,
        Budget.model_validate(
            {"limitUSD": 0.01, "override": {"limitUSD": 5, "approvedBy": "alice", "reason": "demo"}}
        ),
    )
    resumed = await store.claim("ex", 3, 30)

    assert held == []
    assert happened == ["override", "resume"]
    assert len(resumed) == 3
    events = await ledger.events(plan_id)
    override = next(e for e in events if e.kind == "override")
    assert override.detail == {
        "approvedBy": "alice",
        "reason": "demo",
        "previousLimitUSD": "0.01",
        "newLimitUSD": "5.00",
    }


async def test_reapplying_the_same_override_records_nothing(store):
    plan_id = await _plan(store)
    ledger = CostLedger(store.pool)
    budget = Budget.model_validate({"override": {"limitUSD": 5, "approvedBy": "alice", "reason": "demo"}})

    first = await ledger.apply_budget(plan_id, budget)
    second = await ledger.apply_budget(plan_id, budget)

    assert (first, second) == (["override"], [])


async def test_override_below_spend_is_rejected_and_changes_nothing(store):
    plan_id = await _plan(store, limit=10)
    ledger = CostLedger(store.pool)
    (claimed,) = await store.claim("ex", 1, 30)
    reservation = await ledger.reserve(claimed, "ex", Decimal(3))
    await ledger.settle(reservation, claimed, amount=Decimal(3), prompt_tokens=1, completion_tokens=1)

    with pytest.raises(OverrideRejected, match="limitUSD"):
        await ledger.apply_budget(
            plan_id,
            Budget.model_validate({"override": {"limitUSD": 2, "approvedBy": "bob", "reason": "cut"}}),
        )

    assert (await ledger.spend(plan_id)).limit_usd == Decimal(10)


async def test_reservation_of_a_dead_executor_expires_and_is_given_back(store):
    plan_id = await _plan(store, limit=1)
    ledger = CostLedger(store.pool)
    first, second = await store.claim("ex", 2, 30)
    assert await ledger.reserve(first, "dead", Decimal("0.9"), ttl_s=0.05) is not None
    with pytest.raises(BudgetBusy):  # only 0.1 left while the dead one holds 0.9
        await ledger.reserve(second, "ex", Decimal("0.5"))
    await asyncio.sleep(0.1)  # the behaviour under test is expiry itself

    # Expired money is released inside the next reservation's transaction.
    granted = await ledger.reserve(second, "ex", Decimal("0.5"))

    assert granted is not None
    kinds = [e.kind for e in await ledger.events(plan_id)]
    assert kinds.count("release") == 1
    assert (await ledger.spend(plan_id)).reserved_usd == Decimal("0.5")


@pytest.mark.parametrize("amount", ["0.5", "0.05"])  # with or without room left beside the dead reservation
async def test_the_reservation_of_an_executor_whose_atom_was_taken_over_is_given_back_before_its_ttl(
    store, amount
):
    """A killed executor pod: its lease runs out, another executor claims the atom and reserves for it. The
    dead one's reservation (TTL ~27 min in production) must not hold the budget until then, even when the
    new reservation would fit beside it."""
    plan_id = await _plan(store, limit=1)
    ledger = CostLedger(store.pool)
    (atom,) = await store.claim("dead", 1, 0.05)
    assert await ledger.reserve(atom, "dead", Decimal("0.9"), ttl_s=3600) is not None

    async def taken_over():
        return [a for a in await store.claim("alive", 10, 30) if a.atom_id == atom.atom_id]

    (again,) = await eventually(taken_over)
    granted = await ledger.reserve(again, "alive", Decimal(amount))

    assert granted is not None
    events = await ledger.events(plan_id)
    assert [(e.kind, e.atom_id) for e in events if e.kind == "release"] == [("release", atom.atom_id)]
    assert (await ledger.spend(plan_id)).reserved_usd == Decimal(amount)


async def test_soft_cap_event_is_recorded_once_when_spend_crosses_it(store):
    plan_id = await _plan(store, limit=1)
    ledger = CostLedger(store.pool)
    atoms = await store.claim("ex", 4, 30)

    for claimed in atoms:  # 0.3 each: crosses 0.7 on the third settlement
        reservation = await ledger.reserve(claimed, "ex", Decimal("0.3"))
        if reservation is not None:
            await ledger.settle(
                reservation, claimed, amount=Decimal("0.3"), prompt_tokens=1, completion_tokens=1
            )

    kinds = [e.kind for e in await ledger.events(plan_id)]
    assert kinds.count("soft_cap") == 1
    assert kinds.count("settle") == 3
    assert kinds[-1] == "hard_cap"


async def test_soft_cap_is_crossed_by_the_settlement_that_reaches_it_exactly(store):
    """The crossing is decided in the settlement's own statement: spend before < 70% of $1 <= spend after."""
    plan_id = await _plan(store, limit=1)
    ledger = CostLedger(store.pool)
    atoms = await store.claim("ex", 3, 30)
    crossed_after = []
    for claimed, amount in zip(atoms, ("0.6999", "0.0001", "0.1"), strict=True):
        reservation = await ledger.reserve(claimed, "ex", Decimal(amount))
        assert reservation is not None
        await ledger.settle(
            reservation, claimed, amount=Decimal(amount), prompt_tokens=1, completion_tokens=1
        )
        crossed_after.append((await _kinds(ledger, plan_id)).count("soft_cap"))

    assert crossed_after == [0, 1, 1]


async def _kinds(ledger, plan_id):
    return [e.kind for e in await ledger.events(plan_id)]


async def test_a_call_refused_only_for_calls_in_flight_waits_and_does_not_exhaust_the_plan(store):
    plan_id = await _plan(store, limit=1)
    ledger = CostLedger(store.pool)
    first, second = await store.claim("ex", 2, 30)
    held = await ledger.reserve(first, "ex", Decimal("0.6"))

    with pytest.raises(BudgetBusy):
        await ledger.reserve(second, "ex", Decimal("0.6"))
    refused = await ledger.spend(plan_id)
    await ledger.settle(held, first, amount=Decimal("0.01"), prompt_tokens=1, completion_tokens=1)
    granted = await ledger.reserve(second, "ex", Decimal("0.6"))

    assert not refused.exhausted
    assert granted is not None
    assert "hard_cap" not in await _kinds(ledger, plan_id)
    assert len(await store.claim("ex", 5, 30)) == 5  # the plan's other atoms are still handed out


async def test_a_waiting_reservation_is_granted_when_the_call_in_flight_settles(store):
    plan_id = await _plan(store, limit=1)
    ledger = CostLedger(store.pool)
    first, second = await store.claim("ex", 2, 30)
    held = await ledger.reserve(first, "ex", Decimal("0.6"))

    waiting = asyncio.create_task(ledger.reserve(second, "ex", Decimal("0.6"), wait_s=30))
    await asyncio.sleep(0.2)  # it has been refused at least once meanwhile
    assert not waiting.done()
    await ledger.settle(held, first, amount=Decimal("0.01"), prompt_tokens=1, completion_tokens=1)
    granted = await asyncio.wait_for(waiting, 10)

    assert granted is not None
    assert (await ledger.spend(plan_id)).reserved_usd == Decimal("0.6")


async def test_a_call_that_cannot_fit_even_with_nothing_in_flight_is_the_hard_cap(store):
    plan_id = await _plan(store, limit=1)
    ledger = CostLedger(store.pool)
    first, second = await store.claim("ex", 2, 30)
    held = await ledger.reserve(first, "ex", Decimal("0.3"))
    await ledger.settle(held, first, amount=Decimal("0.5"), prompt_tokens=1, completion_tokens=1)

    assert (
        await ledger.reserve(second, "ex", Decimal("0.6"), wait_s=30) is None
    )  # no waiting: spend only grows
    assert (await ledger.spend(plan_id)).exhausted


async def test_heartbeat_keeps_a_reservation_alive_past_its_ttl(store):
    plan_id = await _plan(store, limit=1)
    ledger = CostLedger(store.pool)
    first, second = await store.claim("ex", 2, 30)
    held = await ledger.reserve(first, "slow", Decimal("0.9"), ttl_s=0.3)

    deadline = asyncio.get_running_loop().time() + 1.0  # more than three TTLs, extended every 0.1 s
    while asyncio.get_running_loop().time() < deadline:
        assert await ledger.extend_reservations("slow", 0.3) == 1
        await asyncio.sleep(0.1)
    with pytest.raises(BudgetBusy):
        await ledger.reserve(second, "ex", Decimal("0.5"))
    await ledger.settle(held, first, amount=Decimal("0.9"), prompt_tokens=1, completion_tokens=1)

    spend = await ledger.spend(plan_id)
    assert (spend.spent_usd, spend.reserved_usd) == (Decimal("0.9"), 0)
    assert "release" not in await _kinds(ledger, plan_id)


class _PausingAfterCommit(asyncpg.Connection):
    """A real connection that, once a reservation was written and committed (a statement of its own), waits
    until the test has cancelled its caller: the window between a reservation's commit and its return, which
    no timing can hit reliably."""

    committed: asyncio.Event
    go_on: asyncio.Event
    armed: bool

    async def fetchval(self, query, *args, **kwargs):
        result = await super().fetchval(query, *args, **kwargs)
        if "mge_reserve_if_room" in query and result is not None and type(self).armed:
            type(self).armed = False
            type(self).committed.set()
            await type(self).go_on.wait()
        return result


async def test_cancelled_between_commit_and_return_the_reservation_is_given_back(store, pg):
    plan_id = await _plan(store, limit=1)
    (claimed,) = await store.claim("ex", 1, 30)
    _PausingAfterCommit.committed, _PausingAfterCommit.go_on = asyncio.Event(), asyncio.Event()
    _PausingAfterCommit.armed = True
    pool = await asyncpg.create_pool(pg, min_size=1, max_size=2, connection_class=_PausingAfterCommit)
    try:
        ledger = CostLedger(pool)
        reserving = asyncio.create_task(ledger.reserve(claimed, "ex", Decimal("0.6")))
        await asyncio.wait_for(_PausingAfterCommit.committed.wait(), 10)
        reserving.cancel()
        await asyncio.sleep(0)  # the cancellation reaches the caller while the commit has not returned
        _PausingAfterCommit.go_on.set()
        with pytest.raises(asyncio.CancelledError):
            await reserving
        async with asyncio.timeout(10):
            while (await ledger.spend(plan_id)).reserved_usd:
                await asyncio.sleep(0.02)
    finally:
        _PausingAfterCommit.armed = False
        _PausingAfterCommit.go_on.set()
        pool.terminate()

    assert await store.pool.fetchval("SELECT count(*) FROM cost_reservations") == 0
    assert "release" in await _kinds(CostLedger(store.pool), plan_id)


async def test_resume_gives_back_what_the_dead_run_had_reserved(store):
    plan_id = await _plan(store, limit=1)
    ledger = CostLedger(store.pool)
    first, second = await store.claim("dead", 2, 30)
    await ledger.reserve(first, "dead", Decimal("0.6"))

    released = await ledger.release_abandoned(plan_id)
    granted = await ledger.reserve(second, "ex", Decimal("0.6"))

    assert released == Decimal("0.6")
    assert granted is not None


async def _assert_never_past_the_cap(store, ledger, plan_id, limit):
    spend = await ledger.spend(plan_id)
    settles = await store.pool.fetch(
        "SELECT amount_usd, detail FROM cost_events WHERE masterplan_id = $1 AND kind = 'settle'", plan_id
    )
    assert sum(r["amount_usd"] for r in settles) == spend.spent_usd
    over = [r for r in settles if r["amount_usd"] > Decimal(json.loads(r["detail"])["reserved"])]
    assert not over, over[:3]
    assert spend.spent_usd <= limit
    assert spend.reserved_usd == 0
    assert spend.exhausted  # the budget was the limit, not the work


@pytest.mark.parametrize("seed", [1, 2])
async def test_fifty_racing_executors_with_calls_longer_than_the_ttl_never_spend_past_the_hard_cap(
    store, seed
):
    """Each call outlives the reservation TTL it started with; the executors' heartbeat keeps extending it.

    Executors never run this close to the edge (their TTL outlasts the longest call their settings allow,
    heartbeat or not); here a heartbeat held up for 20 of its periods (a loaded machine, 50 racers locking
    the same rows) would let a reservation lapse, so that margin is what this test gives it."""
    plan_id = await _plan(store, atoms_count=400, limit=1.0)
    ledger = CostLedger(store.pool)
    claimed = await store.claim("claimer", 400, 300)
    rnd = random.Random(seed)
    ttl = 2.0
    finished = asyncio.Event()

    async def heartbeat():
        while not finished.is_set():
            await ledger.extend_reservations("ex", ttl)
            await asyncio.sleep(ttl / 20)

    async def executor(atoms):
        for claimed_atom in atoms:
            worst = Decimal(rnd.randint(1, 40)) / 1000
            reservation = await ledger.reserve(claimed_atom, "ex", worst, ttl_s=ttl, wait_s=None)
            if reservation is None:
                return
            await asyncio.sleep(ttl * rnd.uniform(1.2, 2))  # the call: longer than the TTL
            actual = worst * Decimal(rnd.randint(30, 100)) / 100
            await ledger.settle(
                reservation, claimed_atom, amount=actual, prompt_tokens=1, completion_tokens=1
            )

    beating = asyncio.create_task(heartbeat())
    await asyncio.gather(*(executor(claimed[n::50]) for n in range(50)))
    finished.set()
    await beating

    await _assert_never_past_the_cap(store, ledger, plan_id, Decimal("1.0"))
    assert "release" not in await _kinds(ledger, plan_id)  # nothing expired under a running call


@pytest.mark.parametrize("seed", [1, 2])
async def test_fifty_racing_executors_with_batching_never_spend_past_the_hard_cap(store, seed):
    """Calls go through the real batcher to the fake LLM server; answers of random length, some longer than
    one item's max_tokens, some missing from the batch answer (sent again alone)."""
    rnd = random.Random(seed)
    atoms = [f"a{i}" for i in range(400)]
    recordings = {
        a: {1: "```python\n" + "\n".join(f"V{i} = {i}" for i in range(rnd.randint(1, 120))) + "\n```"}
        for a in atoms
    }
    server = FakeLLM(
        FakeLLMConfig(base_latency_s=0.02),
        responder=batch_responder(recordings, drop={a for a in atoms if rnd.random() < 0.1}),
    )
    server.recordings = {}
    await server.start()
    limit = Decimal("0.005")
    plan_id = await _plan(store, atoms_count=400, limit=float(limit))
    ledger = CostLedger(store.pool)
    claimed = await store.claim("claimer", 400, 300)
    llm = OpenAICompatibleLLM(server.url, "k")
    batcher = RequestBatcher(llm.complete, BatchConfig(max_batch=5, window_s=0.02))
    price = DEFAULT_PRICES["gpt-4o-mini"]

    async def executor(atoms):
        for claimed_atom in atoms:
            request = ChatRequest(
                model="gpt-4o-mini",
                messages=[
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": f"Write `{claimed_atom.atom_id}.py`."},
                ],
                max_tokens=64,
                atom_id=claimed_atom.atom_id,
                trace_id=str(claimed_atom.trace_id),
            )
            worst = worst_case_call_cost(
                [count_tokens(m["content"]) for m in request.messages], request.max_tokens, price
            )
            reservation = await ledger.reserve(claimed_atom, "ex", worst, wait_s=None)
            if reservation is None:
                return
            answer = await batcher.submit(request)
            actual = answer.cost_usd
            if actual is None:
                actual = price.cost(
                    answer.prompt_tokens, answer.completion_tokens, answer.cached_prompt_tokens
                )
            await ledger.settle(
                reservation,
                claimed_atom,
                amount=actual,
                prompt_tokens=answer.prompt_tokens,
                completion_tokens=answer.completion_tokens,
            )

    try:
        await asyncio.gather(*(executor(claimed[n::50]) for n in range(50)))
    finally:
        await batcher.close()
        await llm.close()
        await server.stop()

    assert batcher.stats.batches > 0
    await _assert_never_past_the_cap(store, ledger, plan_id, limit)


@pytest.mark.parametrize("seed", [1, 2])
async def test_racing_writes_of_a_plan_whose_atoms_share_dependents_never_deadlock(store, seed):
    """Forty racers run a plan of eight levels of forty atoms, each depending on two of the level before, as
    executors do: every attempt's write settles its call, frees dependents (which the writes of their other
    dependency race to free) and claims the next atom with its call reserved; the plan row is locked last,
    for the money alone. The writes are made without the retry an executor adds, so a deadlock Postgres
    breaks fails the test: waiting for the plan row in the statement that then updates it, after the atom
    rows, deadlocked writes of the same wave with each other."""
    rnd = random.Random(seed)
    width, levels = 40, 8

    def dependencies(i: int) -> set[str]:
        level_before = (i // width - 1) * width
        return {f"a{level_before + rnd.randrange(width)}" for _ in range(2)} if i >= width else set()

    atoms = [atom(f"a{i}", *sorted(dependencies(i))) for i in range(width * levels)]
    plan_id, _ = await store.register_plan(
        namespace="ns",
        name="shared-dependents",
        trace_id="00000000-0000-4000-8000-0000000000cd",
        generation=1,
        spec=spec(*atoms, budget={"limitUSD": 1000}),
        atoms=atoms,
        plan=plan_dag((a.id, a.depends_on) for a in atoms),
    )
    await end_ramps(store)
    ledger = CostLedger(store.pool)
    record = AttemptRecord("0" * 16, "succeeded", None, 1, 1, False, Decimal(0), 1, datetime.now(UTC))
    unfinished = "SELECT count(*) FROM atoms WHERE masterplan_id = $1 AND state <> 'succeeded'"

    async def racer(name):
        claimed_atom = None
        while True:
            if claimed_atom is None:
                got = await store.claim(name, 1, 300)
                if not got:
                    if not await store.pool.fetchval(unfinished, plan_id):
                        return
                    await asyncio.sleep(0.005)
                    continue
                (claimed_atom,) = got
            reservation = claimed_atom.reservation or await ledger.reserve(
                claimed_atom, name, Decimal("0.01"), wait_s=None
            )
            finished = await store.finish_attempt(
                claimed_atom,
                name,
                record,
                settlement=Settlement(reservation, Decimal("0.005"), 1, 1),
                ending=Succeed("VALUE = 1"),
                claim_next=ClaimRequest(1, 300, None, Decimal("0.01"), 300),
            )
            claimed_atom = finished.claimed[0] if finished.claimed else None

    await asyncio.wait_for(asyncio.gather(*(racer(f"ex{n}") for n in range(40))), timeout=120)

    spend = await ledger.spend(plan_id)
    assert (spend.spent_usd, spend.reserved_usd) == (Decimal("0.005") * width * levels, Decimal(0))


async def test_a_loop_claim_reserves_the_first_call_of_each_atom_of_the_plans_it_names(store):
    """An executor's own claim (not an attempt's write) passes what each plan's next call should reserve: the
    atoms it claims for the first time come with that reserved, in the claim's transaction, where the budget
    has room; a plan it does not name, an atom claimed before, or a budget without room leaves the call to
    reserve its worst case as before (a claim after the first may follow a dead one, which may have left a
    reservation: the ledger's locked path gives those back). An atom handed back gives its claim's
    reservation back."""
    named = await _plan(store, atoms_count=3, limit=0.05, name="named")
    other = await _plan(store, atoms_count=1, limit=1.0, name="other")
    amount = Decimal("0.02")

    first = await store.claim("ex-1", 10, 300, None, {named: amount}, 60.0)
    reserved = {a.atom_id: a.reservation for a in first if a.masterplan_id == named}
    unnamed = [a.reservation for a in first if a.masterplan_id == other]
    after_claim = await CostLedger(store.pool).spend(named)
    handed_back = next(a for a in first if a.masterplan_id == named and a.reservation is not None)
    await store.release(
        handed_back, "ex-1", count_claim=True
    )  # as after a crash: its next claim is its second
    (again,) = await store.claim("ex-2", 10, 300, None, {named: amount}, 60.0)
    after_release = await CostLedger(store.pool).spend(named)

    # $0.05 holds two reservations of $0.02: the third atom is claimed without one.
    assert sorted(r is not None for r in reserved.values()) == [False, True, True]
    assert all(r.amount_usd == amount for r in reserved.values() if r is not None)
    assert unnamed == [None]
    assert after_claim.reserved_usd == 2 * amount
    assert (again.atom_id, again.claims, again.reservation) == (handed_back.atom_id, 2, None)
    assert after_release.reserved_usd == amount
