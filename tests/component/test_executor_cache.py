"""Executors behind the prompt cache on real Postgres, real Redis and the fake LLM server over HTTP.

A second plan with the same prompts is answered from the cache: no LLM call, no budget reservation,
and every hit records the tokens and dollars it avoided. A dead Redis never fails an atom.
"""

import asyncio
from decimal import Decimal
from pathlib import Path

import pytest

from mge.adapters import metrics
from mge.adapters.cache import CacheSavings, LLMPromptCache, connect_redis
from mge.adapters.llm import OpenAICompatibleLLM, ReplayLLM
from mge.adapters.llm_cache import CachingLLM
from mge.adapters.manifests import load_plan_input
from mge.adapters.store.ledger import CostLedger
from mge.cost.pricing import DEFAULT_PRICES
from mge.executor.worker import Executor, ExecutorConfig
from mge.plan.dag import plan_dag
from tests.support.fake_llm import FakeLLM, FakeLLMConfig
from tests.support.redis import kill, redis_server

pytestmark = pytest.mark.component

HELLO = Path(__file__).resolve().parents[2] / "examples" / "hello"
TRACES = {
    "first": "00000000-0000-4000-8000-0000000000c1",
    "second": "00000000-0000-4000-8000-0000000000c2",
    "third": "00000000-0000-4000-8000-0000000000c3",
}


@pytest.fixture
async def fake_llm():
    server = FakeLLM()
    server.load_recording(HELLO / "responses.jsonl")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def redis():
    with redis_server() as server:
        yield server


async def _run(store, validator, llm, name, temperature=0.0):
    _, plan_spec, atoms = load_plan_input(HELLO)
    plan_id, _ = await store.register_plan(
        namespace="ns",
        name=name,
        trace_id=TRACES[name],
        generation=1,
        spec=plan_spec,
        atoms=atoms,
        plan=plan_dag((a.id, a.depends_on) for a in atoms),
    )
    executor = Executor(
        store,
        llm,
        validator,
        DEFAULT_PRICES,
        ExecutorConfig(executor_id=f"ex-{name}", temperature=temperature),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(executor.run(stop))
    try:
        async with asyncio.timeout(30):
            while not (progress := await store.progress(plan_id)).finished:
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
    assert progress.succeeded == progress.total == 6
    return plan_id


async def _close(llm):
    await llm.cache.client.aclose()
    await llm.close()


def _caching(store, redis_url, inner):
    return CachingLLM(
        inner,
        cache=LLMPromptCache(connect_redis(redis_url)),
        prices=DEFAULT_PRICES,
        savings=CacheSavings(store.pool),
    )


async def test_a_second_plan_with_the_same_prompts_is_served_from_the_cache_without_spending(
    store, validator, fake_llm, redis
):
    llm = _caching(store, redis.url, OpenAICompatibleLLM(fake_llm.url, "k"))
    saved_before = metrics.CACHE_SAVINGS.labels("llm")._value.get()
    first = await _run(store, validator, llm, "first")
    calls_first = fake_llm.stats.requests

    second = await _run(store, validator, llm, "second")
    await _close(llm)

    # greet's recorded first answer is broken: it is never cached, so that one call is made again.
    assert calls_first == 7
    assert fake_llm.stats.requests - calls_first == 1
    assert await store.outputs(second) == [
        o.__class__(o.atom_id, o.file, o.output) for o in await store.outputs(first)
    ]
    # One call is made, and only it spends: a hit's call reserved with its claim (by the write of the call
    # before) is settled at $0.
    settled = await store.pool.fetch(
        "SELECT amount_usd FROM cost_events WHERE masterplan_id = $1 AND kind = 'settle'", second
    )
    assert len([r for r in settled if r["amount_usd"] > 0]) == 1
    hits = await store.pool.fetchval(
        "SELECT count(*) FROM atom_attempts WHERE masterplan_id = $1 AND cached", second
    )
    assert hits == 6
    saved = await CacheSavings(store.pool).summary(second)
    first_spend = await store.pool.fetchval("SELECT current_cost_usd FROM masterplans WHERE id = $1", first)
    second_spend = await store.pool.fetchval("SELECT current_cost_usd FROM masterplans WHERE id = $1", second)
    assert saved.hits == 6
    assert saved.saved_usd > 0
    # What the second plan spent plus what its hits avoided is what the first plan spent.
    assert second_spend + saved.saved_usd == pytest.approx(first_spend, abs=Decimal("0.000002"))
    # The ledger reports the avoided cost with the spend, so it lands in status.cost.cacheSavedUSD.
    assert (await CostLedger(store.pool).spend(second)).cache_saved_usd == saved.saved_usd
    assert (await CostLedger(store.pool).spend(first)).cache_saved_usd == 0
    # The table keeps 6 decimals per hit; the metric is not rounded.
    assert metrics.CACHE_SAVINGS.labels("llm")._value.get() == pytest.approx(
        saved_before + float(saved.saved_usd), abs=1e-5
    )


async def test_sampled_calls_are_not_cached(store, validator, fake_llm, redis):
    llm = _caching(store, redis.url, OpenAICompatibleLLM(fake_llm.url, "k"))

    await _run(store, validator, llm, "first", temperature=0.7)
    await _run(store, validator, llm, "second", temperature=0.7)
    await _close(llm)

    assert fake_llm.stats.requests == 14


async def test_replay_answers_are_keyed_by_recording_atom_and_attempt(store, validator, redis):
    llm = _caching(store, redis.url, ReplayLLM(HELLO / "responses.jsonl"))

    first = await _run(store, validator, llm, "first")
    second = await _run(store, validator, llm, "second")
    await _close(llm)

    assert await store.outputs(second) == await store.outputs(first)
    assert await CacheSavings(store.pool).summary(second) is not None
    assert (await CacheSavings(store.pool).summary(second)).hits == 6


async def test_redis_killed_mid_run_never_fails_an_atom(store, validator, redis):
    slow = FakeLLM(FakeLLMConfig(base_latency_s=0.15))
    slow.load_recording(HELLO / "responses.jsonl")
    await slow.start()
    llm = _caching(store, redis.url, OpenAICompatibleLLM(slow.url, "k"))
    errors_before = sum(metrics.CACHE_ERRORS.labels("llm", op)._value.get() for op in ("get", "set"))
    try:
        run = asyncio.create_task(_run(store, validator, llm, "third"))
        async with asyncio.timeout(20):
            while slow.stats.completed < 2:
                await asyncio.sleep(0.02)
        kill(redis)
        await run
    finally:
        await _close(llm)
        await slow.stop()

    errors = sum(metrics.CACHE_ERRORS.labels("llm", op)._value.get() for op in ("get", "set"))
    assert errors > errors_before
    assert slow.stats.requests == 7
