"""One executor process of `bench_fleet_http`: a real Executor with a chosen call-limit policy, until SIGTERM.

Usage: python -m tests.bench.fleet_executor DSN LLM_URL POLICY CAPACITY EXECUTORS EXECUTOR_ID [REDIS_URL]
POLICY is `ours` (the executor's own adaptive gate, each limiting alone), `shared` (the executor's gate sharing
the fleet's one estimate through REDIS_URL, as deployed with Redis), `seed` or `fixed` (C / EXECUTORS).
"""

import asyncio
import signal
import sys

from mge.adapters.cache import connect_redis
from mge.adapters.store.store import Store
from mge.concurrency.limiter import FixedLimiter, SeedRuleLimiter
from mge.executor.worker import ExecutorConfig, tune_gc_for_bursts
from tests.bench.bench_concurrency import bench_executor

# Time-scaled as bench_concurrency's real-HTTP run (6x): a 15 s heartbeat stands for 2.5 s here, the seed's
# 30 s period for 5 s.
HEARTBEAT_S = 2.5
SEED_PERIOD_S = 5.0
SEED_THRESHOLD_S = 2.0 / 1.5 * 0.5


async def serve(
    dsn: str, url: str, policy: str, capacity: int, executors: int, executor_id: str, redis_url: str
) -> None:
    concurrency = max(4, 4 * capacity // executors)
    store = await Store.connect(dsn, max_size=concurrency + 3)
    if policy == "shared" and not redis_url:
        raise SystemExit("policy `shared` needs REDIS_URL")
    fleet_redis = connect_redis(redis_url) if policy == "shared" else None
    executor = bench_executor(
        store, url, ExecutorConfig(executor_id, concurrency=concurrency, heartbeat_s=HEARTBEAT_S), fleet_redis
    )
    if policy == "seed":
        executor.gate.limiter = SeedRuleLimiter(
            minimum=10, maximum=200, limit=10, period_s=SEED_PERIOD_S, p95_threshold_s=SEED_THRESHOLD_S
        )
    elif policy == "fixed":
        executor.gate.limiter = FixedLimiter(max(1, capacity // executors))
    elif policy not in ("ours", "shared"):
        raise SystemExit(f"unknown policy {policy!r}: ours, shared, seed or fixed")
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
        if fleet_redis is not None:
            await fleet_redis.aclose()


if __name__ == "__main__":
    dsn, url, policy, capacity, executors, executor_id = sys.argv[1:7]
    redis_url = sys.argv[7] if len(sys.argv) > 7 else ""
    tune_gc_for_bursts()  # as `mge executor` does
    asyncio.run(serve(dsn, url, policy, int(capacity), int(executors), executor_id, redis_url))
