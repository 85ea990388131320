"""An executor near its plan's budget, on real Postgres against the fake LLM server: a call waits for calls in
flight instead of stopping the plan, and a reservation lives as long as its call."""

import asyncio
from decimal import Decimal

import pytest

from mge.adapters.llm import OpenAICompatibleLLM
from mge.adapters.llm_cache import BatchConfig, CachingLLM
from mge.adapters.store.ledger import BudgetBusy, CostLedger
from mge.cost.pricing import DEFAULT_PRICES
from mge.executor.worker import Executor, ExecutorConfig
from mge.plan.dag import plan_dag
from tests.builders import atom, end_ramps, spec
from tests.support.batch_answers import batch_responder
from tests.support.fake_llm import FakeLLM, FakeLLMConfig

pytestmark = pytest.mark.component

# An executor call's worst case is about $0.0013 (2,048 completion tokens of gpt-4o-mini): this budget holds
# one such call beside the test's own reservation of $0.0006, not two.
LIMIT = 0.002


@pytest.fixture
async def fake_llm():
    server = FakeLLM()
    await server.start()
    yield server
    await server.stop()


async def _plan(store):
    """Two atoms: the test holds a0 (and the budget it reserves for it), the executor gets a1."""
    atoms = [atom("a0"), atom("a1")]
    plan_id, _ = await store.register_plan(
        namespace="ns",
        name="tight",
        trace_id="00000000-0000-4000-8000-0000000000dd",
        generation=1,
        spec=spec(*atoms, budget={"limitUSD": LIMIT}),
        atoms=atoms,
        plan=plan_dag((a.id, a.depends_on) for a in atoms),
    )
    await end_ramps(store)
    (held,) = await store.claim("test", 1, 300)
    assert held.atom_id == "a0"
    return plan_id, held


def _executor(store, fake_llm, validator, **config):
    llm = OpenAICompatibleLLM(fake_llm.url, "k")
    return Executor(store, llm, validator, DEFAULT_PRICES, ExecutorConfig("ex", **config))


async def _atom(store, plan_id, atom_id):
    return await store.pool.fetchrow(
        "SELECT state, attempts FROM atoms WHERE masterplan_id = $1 AND atom_id = $2", plan_id, atom_id
    )


async def test_an_atom_refused_for_a_call_in_flight_waits_and_runs_once_it_settles(
    store, fake_llm, validator
):
    plan_id, held = await _plan(store)
    ledger = CostLedger(store.pool)
    in_flight = await ledger.reserve(held, "test", Decimal("0.0012"))  # a call of the test's, in flight
    executor = _executor(store, fake_llm, validator, budget_wait_s=0.2, idle_poll_s=0.1)
    stop = asyncio.Event()
    running = asyncio.create_task(executor.run(stop))
    try:
        async with asyncio.timeout(10):  # a1 was claimed, refused and handed back at least once
            while not await store.pool.fetchval(
                """SELECT started_at IS NOT NULL AND updated_at > started_at FROM atoms
                   WHERE masterplan_id = $1 AND atom_id = 'a1'""",
                plan_id,
            ):
                await asyncio.sleep(0.02)
        waiting = await ledger.spend(plan_id)
        await ledger.settle(in_flight, held, amount=Decimal("0.0001"), prompt_tokens=1, completion_tokens=1)
        async with asyncio.timeout(10):
            while (await _atom(store, plan_id, "a1"))["state"] != "succeeded":
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await running
        await executor.llm.close()

    assert not waiting.exhausted
    assert (await _atom(store, plan_id, "a1"))["attempts"] == 1  # the waits counted no attempt
    assert "hard_cap" not in [e.kind for e in await ledger.events(plan_id)]
    assert fake_llm.stats.requests == 1


async def test_a_call_slower_than_the_reservation_ttl_keeps_its_reservation(store, fake_llm, validator):
    fake_llm.config = FakeLLMConfig(base_latency_s=2.0)
    plan_id, held = await _plan(store)
    ledger = CostLedger(store.pool)
    executor = _executor(store, fake_llm, validator, reservation_ttl_s=0.5, heartbeat_s=0.1, idle_poll_s=0.1)
    stop = asyncio.Event()
    running = asyncio.create_task(executor.run(stop))
    try:
        async with asyncio.timeout(10):
            while fake_llm.stats.in_flight == 0:
                await asyncio.sleep(0.02)
        await asyncio.sleep(1.0)  # the call has now run for twice its reservation's TTL
        with pytest.raises(BudgetBusy):  # the executor's reservation still holds its worst case
            await ledger.reserve(held, "test", Decimal("0.0012"))
        async with asyncio.timeout(10):
            while (await _atom(store, plan_id, "a1"))["state"] != "succeeded":
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await running
        await executor.llm.close()

    kinds = [e.kind for e in await ledger.events(plan_id)]
    assert "release" not in kinds
    assert (await ledger.spend(plan_id)).reserved_usd == 0


async def test_atoms_cancelled_mid_batch_settle_what_their_batch_spent(store, fake_llm, validator):
    fake_llm.config = FakeLLMConfig(base_latency_s=3.0)
    fake_llm.responder = batch_responder(
        {"a0": {1: "```python\nA = 0\n```"}, "a1": {1: "```python\nB = 1\n```"}}
    )
    atoms = [atom("a0"), atom("a1")]
    plan_id, _ = await store.register_plan(
        namespace="ns",
        name="batched",
        trace_id="00000000-0000-4000-8000-0000000000de",
        generation=1,
        spec=spec(*atoms),
        atoms=atoms,
        plan=plan_dag((a.id, a.depends_on) for a in atoms),
    )
    await end_ramps(store)
    llm = CachingLLM(
        OpenAICompatibleLLM(fake_llm.url, "k"),
        cache=None,
        prices=DEFAULT_PRICES,
        batching=BatchConfig(max_batch=2, window_s=1.0),
    )
    executor = Executor(
        store, llm, validator, DEFAULT_PRICES, ExecutorConfig("ex", shutdown_grace_s=0.2, idle_poll_s=0.1)
    )
    stop = asyncio.Event()
    running = asyncio.create_task(executor.run(stop))
    try:
        async with asyncio.timeout(10):
            while fake_llm.stats.in_flight == 0:  # the batch of both atoms is out
                await asyncio.sleep(0.02)
        stop.set()  # the grace period ends long before the batch answers: both atom tasks are cancelled
        await asyncio.wait_for(running, 15)
    finally:
        stop.set()
        await llm.close()

    ledger = CostLedger(store.pool)
    spend = await ledger.spend(plan_id)
    settled = [e for e in await ledger.events(plan_id) if e.kind == "settle"]
    assert fake_llm.stats.requests == 1
    assert sorted(e.atom_id for e in settled) == ["a0", "a1"]
    assert all(e.amount_usd > 0 for e in settled)  # the batch was paid: each atom settles its share
    assert spend.reserved_usd == 0
