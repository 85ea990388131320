"""Executors on one endpoint learn how many they are (from each other's reports in Postgres), so each limiter
grows and rounds as a part of the fleet; executors on another endpoint are not counted."""

import asyncio

import pytest

from mge.adapters.llm import OpenAICompatibleLLM
from mge.adapters.store.store import Store
from mge.concurrency.limiter import AdaptiveLimiter
from mge.cost.pricing import DEFAULT_PRICES
from mge.executor.validation import CodeValidator
from mge.executor.worker import Executor, ExecutorConfig
from tests.support.fake_llm import FakeLLM
from tests.support.operator import eventually

pytestmark = pytest.mark.component


async def test_each_executor_counts_the_executors_on_its_endpoint(pg):
    shared, other = FakeLLM(), FakeLLM()
    await shared.start()
    await other.start()
    store = await Store.connect(pg)
    validator = CodeValidator()
    clients = [OpenAICompatibleLLM(url, "k") for url in (shared.url, shared.url, shared.url, other.url)]
    executors = [
        Executor(store, llm, validator, DEFAULT_PRICES, ExecutorConfig(f"ex-{n}", heartbeat_s=0.2))
        for n, llm in enumerate(clients)
    ]
    stop = asyncio.Event()
    running = [asyncio.create_task(e.run(stop)) for e in executors]
    try:

        async def fleets() -> list[int] | None:
            sizes = [e.gate.limiter.fleet for e in executors if isinstance(e.gate.limiter, AdaptiveLimiter)]
            return sizes if sizes == [3, 3, 3, 1] else None

        assert await eventually(fleets, timeout=10) == [3, 3, 3, 1]
        assert await store.fleet_size(executors[0].circuit.endpoint) == 3
    finally:
        stop.set()
        await asyncio.gather(*running)
        for client in clients:
            await client.close()
        await validator.close()
        await store.close()
        await shared.stop()
        await other.stop()
