"""Executors on one endpoint learn how many they are (from each other's reports in Postgres), so each limiter
grows and rounds as a part of the fleet; executors on another endpoint are not counted."""

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mge.adapters.cache import connect_redis
from mge.adapters.llm import OpenAICompatibleLLM
from mge.adapters.store.ledger import CostLedger
from mge.adapters.store.store import Store
from mge.concurrency.limiter import AdaptiveLimiter
from mge.cost.pricing import DEFAULT_PRICES
from mge.executor.validation import CodeValidator
from mge.executor.worker import Executor, ExecutorConfig
from tests.builders import atom, register
from tests.support.fake_llm import FakeLLM, FakeLLMConfig
from tests.support.operator import eventually
from tests.support.redis import redis_server

pytestmark = pytest.mark.component

OPERATOR_DIR = Path(__file__).resolve().parents[2] / "operator"


@contextlib.asynccontextmanager
async def _executors(
    pg: str, urls: list[str], heartbeat_s: float, stagger_s: float = 0.0, redis_url: str | None = None
) -> AsyncIterator[tuple[Store, list[Executor]]]:
    """Running executors, one per LLM endpoint URL, until the block ends; each starts `stagger_s` after the one
    before it, as pods of a rollout do. With `redis_url`, they share their estimates through it."""
    store = await Store.connect(pg)
    validator = CodeValidator()
    clients = [OpenAICompatibleLLM(url, "k") for url in urls]
    redis = connect_redis(redis_url) if redis_url else None
    executors = [
        Executor(
            store,
            llm,
            validator,
            DEFAULT_PRICES,
            ExecutorConfig(f"ex-{n}", heartbeat_s=heartbeat_s),
            fleet_redis=redis,
        )
        for n, llm in enumerate(clients)
    ]
    stop = asyncio.Event()

    async def started(executor: Executor, delay: float) -> None:
        await asyncio.sleep(delay)
        await executor.run(stop)

    running = [asyncio.create_task(started(e, n * stagger_s)) for n, e in enumerate(executors)]
    try:
        yield store, executors
    finally:
        stop.set()
        await asyncio.gather(*running)
        for client in clients:
            await client.close()
        if redis is not None:
            await redis.aclose()
        await validator.close()
        await store.close()


async def _fleet_sizes(executors: list[Executor], expected: list[int], timeout: float) -> list[int]:
    """The fleet each executor's limiter counts, once it is `expected` (or the last one seen, failing)."""

    async def sizes() -> list[int] | None:
        seen = [e.gate.limiter.fleet for e in executors if isinstance(e.gate.limiter, AdaptiveLimiter)]
        return seen if seen == expected else None

    result: list[int] = await eventually(sizes, timeout=timeout)
    return result


async def test_each_executor_counts_the_executors_on_its_endpoint(pg):
    shared, other = FakeLLM(), FakeLLM()
    await shared.start()
    await other.start()
    try:
        urls = [shared.url, shared.url, shared.url, other.url]
        async with _executors(pg, urls, heartbeat_s=0.2) as (store, executors):
            assert await _fleet_sizes(executors, [3, 3, 3, 1], timeout=10) == [3, 3, 3, 1]
            assert await store.fleet_size(executors[0].circuit.endpoint) == 3
    finally:
        await shared.stop()
        await other.stop()


async def test_executors_started_together_count_each_other_within_seconds_not_a_heartbeat(pg):
    """Started together (half a second apart, as a rollout's pods), each executor's first report sees only those
    that reported before it. At the default heartbeat (15 s) the first of them believed it was alone for 15 s,
    slow-starting as one; they report again a second later (and sooner whenever the count moved), so all count
    the whole fleet within seconds."""
    fake = FakeLLM()
    await fake.start()
    try:
        async with _executors(pg, [fake.url] * 3, heartbeat_s=15.0, stagger_s=0.5) as (_, executors):
            assert await _fleet_sizes(executors, [3, 3, 3], timeout=6) == [3, 3, 3]
    finally:
        await fake.stop()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _executor_process(
    pg: str, llm_url: str, name: str, folder: Path, logs: contextlib.ExitStack, **environment: str
) -> asyncio.subprocess.Process:
    """`mge executor`, as a pod runs it, its stderr in `folder`/`name`.log."""
    env = {
        **os.environ,
        "PYTHONPATH": f"{OPERATOR_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "MGE_DATABASE_URL": pg,
        "MGE_EXECUTOR_ID": name,
        "MGE_METRICS_PORT": str(_free_port()),
        "MGE_EXECUTOR_CONCURRENCY": "4",
        "OPENAI_BASE_URL": llm_url,
        "OPENAI_API_KEY": "k",
        **environment,
    }
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mge.cli",
        "executor",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=logs.enter_context((folder / f"{name}.log").open("wb")),
    )


async def test_executor_processes_count_each_other_and_share_a_plan(pg, tmp_path):
    """Two `mge executor` processes (the CLI a pod runs, each with its own interpreter and event loop) on one
    endpoint: both report it, so each counts a fleet of two, and both take atoms of the same plan. With the
    chart's MGE_REDIS_URL they share one estimate of the endpoint's limit: one leads, both have a share."""
    fake = FakeLLM(FakeLLMConfig(base_latency_s=0.2))
    await fake.start()
    store = await Store.connect(pg)
    processes = []
    logs = contextlib.ExitStack()
    redis = logs.enter_context(redis_server())
    for number in range(2):
        processes.append(
            await _executor_process(pg, fake.url, f"proc-{number}", tmp_path, logs, MGE_REDIS_URL=redis.url)
        )
    try:

        async def both_reported() -> bool:
            return await store.pool.fetchval("SELECT count(*) FROM executor_status") == 2

        # Registered once both run: a process that starts late (imports, its start jitter) would find it done.
        assert await eventually(both_reported, timeout=60)
        atoms = [atom(f"a{n}") for n in range(40)]
        plan_id = await register(store, *atoms, name="shared")

        async def finished() -> bool:
            return (await store.progress(plan_id)).finished

        assert await eventually(finished, timeout=60)
        endpoints = await store.pool.fetch(
            "SELECT executor, llm_endpoint FROM executor_status ORDER BY executor"
        )
        assert [r["executor"] for r in endpoints] == ["proc-0", "proc-1"]
        assert endpoints[0]["llm_endpoint"] == endpoints[1]["llm_endpoint"]
        assert await store.fleet_size(endpoints[0]["llm_endpoint"]) == 2
        workers = await store.pool.fetch(
            "SELECT DISTINCT executor FROM atom_attempts WHERE masterplan_id = $1 AND outcome = 'succeeded'",
            plan_id,
        )
        assert {r["executor"] for r in workers} == {"proc-0", "proc-1"}
        client = connect_redis(redis.url)
        try:
            [leader_key] = await client.keys("mge:fleet:*:leader")
            assert (await client.get(leader_key)).decode() in ("proc-0", "proc-1")
            [shares_key] = await client.keys("mge:fleet:*:shares")
            assert {b"proc-0", b"proc-1"} <= set(await client.hgetall(shares_key))
        finally:
            await client.aclose()
    finally:
        for process in processes:
            if process.returncode is None:
                process.terminate()
        for process in processes:
            await process.wait()
        logs.close()
        errors = [(tmp_path / f"proc-{n}.log").read_text(errors="replace")[-2000:] for n in range(2)]
        await store.close()
        await fake.stop()
    assert [process.returncode for process in processes] == [0, 0], errors


async def test_an_executor_process_stopped_by_sigterm_hands_its_atoms_back_and_settles_their_calls(
    pg, tmp_path
):
    """What a pod does on a rollout or scale-down: SIGTERM while its atoms wait for slow answers. Within its
    grace (here 0.5 s, MGE_EXECUTOR_SHUTDOWN_GRACE_S) and as long again, it cancels the calls, settles what
    they spent, hands the atoms back for other executors, and exits 0."""
    fake = FakeLLM(FakeLLMConfig(base_latency_s=30.0))
    await fake.start()
    store = await Store.connect(pg)
    atoms = [atom(f"a{n}") for n in range(3)]
    plan_id = await register(store, *atoms, name="stopped")
    with contextlib.ExitStack() as logs:
        process = await _executor_process(
            pg, fake.url, "pod-0", tmp_path, logs, MGE_EXECUTOR_SHUTDOWN_GRACE_S="0.5"
        )
        try:
            assert await eventually(lambda: fake.stats.in_flight >= 1, timeout=60)
            process.send_signal(signal.SIGTERM)
            stopped = asyncio.get_running_loop().time()
            await asyncio.wait_for(process.wait(), 15)
            took = asyncio.get_running_loop().time() - stopped
            states = await store.pool.fetch("SELECT state, count(*) FROM atoms GROUP BY state")
            spend = await CostLedger(store.pool).spend(plan_id)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            await store.close()
            await fake.stop()
    log = (tmp_path / "pod-0.log").read_text(errors="replace")[-3000:]
    assert process.returncode == 0, log
    assert took < 10, log  # not the 30 s answers
    assert {r["state"]: r["count"] for r in states} == {"ready": 3}, log
    assert spend.reserved_usd == 0


async def test_executors_with_redis_call_up_to_their_shares_of_one_estimate_led_by_one_of_them(pg):
    """Two executors of one endpoint and a third on another: the two share one estimate (one leads it, hears
    both, and their shares add up to its limit); the third has an estimate of its own."""
    shared, other = FakeLLM(FakeLLMConfig(base_latency_s=0.05)), FakeLLM(FakeLLMConfig(base_latency_s=0.05))
    await shared.start()
    await other.start()
    store = await Store.connect(pg)
    await register(store, *(atom(f"a{n}") for n in range(400)))
    await store.close()
    try:
        with redis_server() as redis:
            urls = [shared.url, shared.url, other.url]
            async with _executors(pg, urls, heartbeat_s=0.2, redis_url=redis.url) as (_, executors):

                async def one_estimate() -> list[int] | None:
                    pair, alone = executors[:2], executors[2]
                    if alone.fleet_link is None or not alone.fleet_link.leading:
                        return None  # its endpoint's fleet is itself: it leads its own estimate
                    leaders = [e for e in pair if e.fleet_link is not None and e.fleet_link.leading]
                    if len(leaders) != 1 or leaders[0].fleet_link is None:
                        return None
                    estimate = leaders[0].fleet_link.estimate
                    shares = [e.gate.limiter.limit for e in pair]
                    heard = estimate is not None and set(estimate.shares(time.monotonic()))
                    if heard != {"ex-0", "ex-1"} or estimate is None:
                        return None
                    return shares if sum(shares) == estimate.limiter.limit else None

                shares = await eventually(one_estimate, timeout=15)
                assert all(share >= 1 for share in shares)
    finally:
        await shared.stop()
        await other.stop()
