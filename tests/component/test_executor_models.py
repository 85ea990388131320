"""One executor, plans on two models of one endpoint: a limiter per model (a provider's capacity and rate limits
are per model), both reported, each limit change naming its model. Real Postgres, real HTTP."""

import asyncio

import pytest

from mge.adapters.llm import OpenAICompatibleLLM
from mge.adapters.store.store import Store
from mge.concurrency.limiter import AdaptiveLimiter, Adjustment
from mge.cost.pricing import DEFAULT_PRICES
from mge.executor.gate import CallGate
from mge.executor.validation import CodeValidator
from mge.executor.worker import Executor, ExecutorConfig, _recent_adjustments
from mge.plan.dag import plan_dag
from tests.builders import atom, end_ramps, spec
from tests.support.fake_llm import FakeLLM
from tests.support.operator import eventually

pytestmark = pytest.mark.component


async def _register(store: Store, name: str, model: str) -> None:
    atoms = [atom(f"{name}-{i}") for i in range(6)]
    await store.register_plan(
        namespace="ns",
        name=name,
        trace_id="00000000-0000-4000-8000-0000000000ab",
        generation=1,
        spec=spec(*atoms, model=model),
        atoms=atoms,
        plan=plan_dag((a.id, a.depends_on) for a in atoms),
    )


async def test_each_model_has_its_own_limiter_and_the_report_sums_them(pg):
    server = FakeLLM()
    await server.start()
    store = await Store.connect(pg)
    validator = CodeValidator()
    llm = OpenAICompatibleLLM(server.url, "k")
    await _register(store, "small", "gpt-4o-mini")
    await _register(store, "large", "gpt-4o")
    await end_ramps(store)
    executor = Executor(store, llm, validator, DEFAULT_PRICES, ExecutorConfig("ex-1", heartbeat_s=0.2))
    stop = asyncio.Event()
    task = asyncio.create_task(executor.run(stop))
    try:

        async def finished() -> bool:
            return (await store.runnable()) == (0, 0)

        await eventually(finished, timeout=30)
        gates = {executor._primary_model: executor.gate, **executor._model_gates}
        assert set(gates) == {"gpt-4o-mini", "gpt-4o"}
        assert all(gate.limiter is not executor.gate.limiter for gate in executor._model_gates.values())
        assert all(
            gate.statistics.summary(asyncio.get_running_loop().time()).llm_requests > 0
            for gate in gates.values()
        )

        expected = sum(g.limiter.limit for g in gates.values())

        async def reported() -> bool:
            return await store.pool.fetchval("SELECT llm_limit FROM executor_status") == expected

        assert expected > executor.gate.limiter.limit
        await eventually(reported, timeout=5)
    finally:
        stop.set()
        await task
        await llm.close()
        await validator.close()
        await store.close()
        await server.stop()


def test_the_report_lists_limit_changes_of_every_model_oldest_first_each_naming_its_model() -> None:
    small, large = (
        CallGate(AdaptiveLimiter(minimum=1, maximum=8, initial=2), f"ex/{m}", queue_size=8, timeout_s=1.0)
        for m in ("s", "l")
    )
    small.limiter.adjustments.append(Adjustment(1.0, 2, 4, "slow start"))
    large.limiter.adjustments.append(Adjustment(2.0, 2, 1, "429"))
    small.limiter.adjustments.append(Adjustment(3.0, 4, 8, "slow start"))
    listed = _recent_adjustments({"gpt-4o-mini": small, "gpt-4o": large}, now=5.0)
    assert [(a["model"], a["new"], a["secondsAgo"]) for a in listed] == [
        ("gpt-4o-mini", 4, 4.0),
        ("gpt-4o", 1, 3.0),
        ("gpt-4o-mini", 8, 2.0),
    ]
    assert "model" not in _recent_adjustments({"gpt-4o-mini": small}, now=5.0)[0]
