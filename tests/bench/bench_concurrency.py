"""Concurrency policies in a discrete-event simulation of an LLM provider with capacity C.

The provider answers in L seconds up to C concurrent calls; beyond C latency grows proportionally, and
beyond 1.5 C calls are refused with 429 at once. C halves at 1/3 of the run and doubles back at 2/3.
Compared side by side: fixed limits (low and high), the seed's rule (every 30 s: -10% if p95 > 2 s,
else +5%), and our AIMD limiter. The simulation is deterministic (seeded) and takes a second or two.
"""

import asyncio
import heapq
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mge.adapters.llm import OpenAICompatibleLLM
from mge.adapters.store.store import Store
from mge.concurrency.limiter import AdaptiveLimiter, Outcome, SeedRuleLimiter
from mge.cost.pricing import DEFAULT_PRICES
from mge.executor.validation import CodeValidator
from mge.executor.worker import Executor, ExecutorConfig
from mge.plan.dag import plan_dag
from tests.bench.common import fresh_database, layered_atoms, print_table, spec_of
from tests.support.fake_llm import FakeLLM, FakeLLMConfig
from tests.support.postgres import postgres_server

BASE_LATENCY_S = 1.0
TOKENS = 400
CAPACITY = 40
DURATION_S = 600.0
PHASES = ((0.0, CAPACITY), (DURATION_S / 3, CAPACITY // 2), (2 * DURATION_S / 3, CAPACITY))


def capacity_at(t: float) -> int:
    return [c for start, c in PHASES if t >= start][-1]


@dataclass
class Result:
    completed: int = 0
    rejected: int = 0
    latencies: list[float] = field(default_factory=list)
    limits: list[tuple[float, int]] = field(default_factory=list)


def simulate(
    limit_of: Callable[[], int], on_result: Callable[[bool, float, int, float], None], seed: int = 1
) -> Result:
    """Keep `limit_of()` calls in flight; `on_result(overloaded, latency, in_flight, now)` after each call."""
    rnd = random.Random(seed)
    now, in_flight, result = 0.0, 0, Result()
    events: list[tuple[float, int, bool, float]] = []  # (finish time, seq, overloaded, latency)
    seq = 0
    while now < DURATION_S:
        while in_flight < limit_of():
            capacity = capacity_at(now)
            if in_flight >= 1.5 * capacity:
                latency, overloaded = 0.05, True
            else:
                load = max(1.0, (in_flight + 1) / capacity)
                latency, overloaded = BASE_LATENCY_S * load * rnd.uniform(0.9, 1.1), False
            in_flight += 1
            seq += 1
            heapq.heappush(events, (now + latency, seq, overloaded, latency))
        finish, _, overloaded, latency = heapq.heappop(events)
        now = finish
        in_flight -= 1
        if overloaded:
            result.rejected += 1
        else:
            result.completed += 1
            result.latencies.append(latency)
        on_result(overloaded, latency, in_flight + 1, now)
        result.limits.append((now, limit_of()))
    return result


def fixed(limit: int) -> Result:
    return simulate(lambda: limit, lambda *_: None)


def seed_rule() -> Result:
    limiter = SeedRuleLimiter(minimum=10, maximum=200, limit=100)
    return simulate(
        lambda: limiter.limit, lambda overloaded, latency, _, now: limiter.record(latency, now, overloaded)
    )


def ours() -> Result:
    limiter = AdaptiveLimiter(minimum=1, maximum=200, initial=2)

    def record(overloaded: bool, latency: float, in_flight: int, now: float) -> None:
        outcome = Outcome.OVERLOADED if overloaded else Outcome.OK
        limiter.record(outcome, in_flight=in_flight, now=now, latency_s=latency, tokens=TOKENS)

    return simulate(lambda: limiter.limit, record)


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[int(len(ordered) * 0.95)] if ordered else float("nan")


def convergence_s(result: Result, start: float, target: int) -> float:
    """Seconds after `start` until the limit stays within [0.8, 1.5] x target for the rest of the phase."""
    end = start + DURATION_S / 3
    samples = [(t, limit) for t, limit in result.limits if start <= t < end]
    last_bad = start
    for t, limit in samples:
        if not 0.8 * target <= limit <= 1.5 * target:
            last_bad = t
    return last_bad - start


def main() -> None:
    bounds = [p[0] for p in PHASES[1:]] + [DURATION_S]
    ideal = sum((end - start) * c for (start, c), end in zip(PHASES, bounds, strict=True)) / BASE_LATENCY_S
    uncongested = p95(fixed(CAPACITY // 4).latencies)
    policies = {
        f"fixed {CAPACITY // 4}": fixed(CAPACITY // 4),
        f"fixed {CAPACITY * 3}": fixed(CAPACITY * 3),
        "seed 30 s rule": seed_rule(),
        "ours (AIMD)": ours(),
    }
    rows = []
    for name, result in policies.items():
        rows.append(
            (
                name,
                f"{100 * result.completed / ideal:.1f}%",
                f"{p95(result.latencies) / uncongested:.2f}x",
                result.rejected,
                f"{convergence_s(result, PHASES[1][0], PHASES[1][1]):.0f} s",
                f"{convergence_s(result, PHASES[2][0], PHASES[2][1]):.0f} s",
            )
        )
    print(
        f"Provider capacity {CAPACITY} -> {CAPACITY // 2} -> {CAPACITY} concurrent calls, "
        f"{BASE_LATENCY_S:.0f} s per call, {DURATION_S:.0f} s simulated"
    )
    print_table(
        [
            "policy",
            "goodput % of C",
            "p95 / uncongested p95",
            "429s",
            "converge after halving",
            "after doubling",
        ],
        rows,
    )
    ours_row = rows[-1]
    goodput, ratio = float(ours_row[1].rstrip("%")), float(ours_row[2].rstrip("x"))
    converge = max(float(ours_row[4].split()[0]), float(ours_row[5].split()[0]))
    checks = {
        "goodput >= 95% of C": goodput >= 95,
        "p95 <= 1.2x uncongested": ratio <= 1.2,
        "converges within 90 s": converge <= 90,
    }
    print("ours: " + ", ".join(f"{goal} {'met' if ok else 'MISSED'}" for goal, ok in checks.items()))


async def _real_run(server: str, limit: int | None, atoms_count: int = 960) -> tuple[float, float, int]:
    """One executor (64 atoms at a time) against the fake LLM server with capacity 16; `limit=None` = adaptive."""
    fake = FakeLLM(FakeLLMConfig(base_latency_s=0.2, capacity=16, reject_factor=1.5))
    await fake.start()
    async with fresh_database(server) as dsn:
        store = await Store.connect(dsn, max_size=80)
        validator = CodeValidator()
        llm = OpenAICompatibleLLM(fake.url, "k", backoff_base_s=0.05, backoff_cap_s=0.5, max_attempts=20)
        atoms = layered_atoms(atoms_count, width=atoms_count)
        plan = plan_dag((a.id, a.depends_on) for a in atoms)
        plan_id, _ = await store.register_plan(
            namespace="bench",
            name="http",
            trace_id="00000000-0000-4000-8000-0000000000ab",
            generation=1,
            spec=spec_of(atoms),
            atoms=atoms,
            plan=plan,
        )
        executor = Executor(
            store, llm, validator, DEFAULT_PRICES, ExecutorConfig("bench", concurrency=64, idle_poll_s=0.05)
        )
        if limit is not None:
            executor.gate.limiter.minimum = executor.gate.limiter.maximum = executor.gate.limiter.limit = (
                limit
            )
        stop = asyncio.Event()
        started = time.perf_counter()
        task = asyncio.create_task(executor.run(stop))
        while not (await store.progress(plan_id)).finished:
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        stop.set()
        await task
        await llm.close()
        await validator.close()
        await store.close()
    await fake.stop()
    ideal_s = atoms_count / 16 * 0.2
    return ideal_s / elapsed, p95(fake.stats.latencies_s) / 0.2, fake.stats.rejected


async def real_http() -> None:
    rows = []
    with postgres_server() as server:
        for name, limit in (("fixed 4", 4), ("fixed 64", 64), ("ours (AIMD)", None)):
            goodput, latency, rejected = await _real_run(server, limit)
            rows.append((name, f"{100 * goodput:.1f}%", f"{latency:.2f}x", rejected))
    print()
    print(
        "Real HTTP: 960 atoms, one executor (64 at a time), fake LLM server with capacity 16 at 0.2 s per call"
    )
    print_table(["policy", "goodput % of C", "server p95 / uncongested", "429s"], rows)


if __name__ == "__main__":
    main()
    asyncio.run(real_http())
