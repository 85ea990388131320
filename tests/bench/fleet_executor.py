"""One executor process of `bench_fleet_http`: a real Executor with a chosen call-limit policy, until SIGTERM.

Usage: python -m tests.bench.fleet_executor DSN LLM_URL POLICY CAPACITY EXECUTORS EXECUTOR_ID
POLICY is `ours` (the executor's own adaptive gate, as deployed), `seed` or `fixed` (C / EXECUTORS).
"""

import asyncio
import signal
import sys

from mge.adapters.store.store import Store
from mge.concurrency.limiter import FixedLimiter, SeedRuleLimiter
from mge.executor.worker import ExecutorConfig
from tests.bench.bench_concurrency import bench_executor

# Time-scaled as bench_concurrency's real-HTTP run (6x): a 15 s heartbeat stands for 2.5 s here, the seed's
# 30 s period for 5 s.
HEARTBEAT_S = 2.5
SEED_PERIOD_S = 5.0
SEED_THRESHOLD_S = 2.0 / 1.5 * 0.5


async def serve(dsn: str, url: str, policy: str, capacity: int, executors: int, executor_id: str) -> None:
    concurrency = max(4, 4 * capacity // executors)
    store = await Store.connect(dsn, max_size=concurrency + 3)
    executor = bench_executor(
        store, url, ExecutorConfig(executor_id, concurrency=concurrency, heartbeat_s=HEARTBEAT_S)
    )
    if policy == "seed":
        executor.gate.limiter = SeedRuleLimiter(
            minimum=10, maximum=200, limit=10, period_s=SEED_PERIOD_S, p95_threshold_s=SEED_THRESHOLD_S
        )
    elif policy == "fixed":
        executor.gate.limiter = FixedLimiter(max(1, capacity // executors))
    elif policy != "ours":
        raise SystemExit(f"unknown policy {policy!r}: ours, seed or fixed")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await executor.run(stop)
    finally:
        await executor.validator.close()
        await executor.llm.close()
        await store.close()


if __name__ == "__main__":
    dsn, url, policy, capacity, executors, executor_id = sys.argv[1:7]
    asyncio.run(serve(dsn, url, policy, int(capacity), int(executors), executor_id))
