"""Concurrency policies against an LLM provider with capacity C that halves mid-run and then doubles back.

Two runs, each comparing side by side fixed limits (low and high), the seed's rule (every period: -10% if
p95 is too high, else +5%) and our adaptive limiter:

- a discrete-event simulation (deterministic, seeded, a few seconds of CPU), 600 simulated seconds;
- a real-HTTP run: one real executor (real Postgres, real HTTP, validation) against the fake
  OpenAI-compatible server, whose latency grows past C and which answers 429 past 1.5 C. It is time-scaled:
  one 0.5 s call stands for a 3 s LLM call (6x), so the seed's 30 s period is 5 s here. The phases start
  with the executor's first request, and the run reports the machine's load, the event loop's lag and
  the latency the executor measured against the server's, to tell a busy machine from a policy.

The provider's latency past C is `base x in-flight / C`: throughput is flat from C up to the 429 point, so the
best a policy can do is to keep in-flight just past C. Goodput is successful calls over C / base; p95 is the
server-side latency over the uncongested p95; convergence is the time until the limit stays within
[0.9, 1.25] x the new capacity (90% of each later period), in control periods; the limiter's own drains to
re-measure its baseline (two round trips or so, every third wall-clock minute) count as inside.
"""

import asyncio
import bisect
import contextlib
import dataclasses
import heapq
import math
import os
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from redis.asyncio import Redis

from mge.adapters.llm import OpenAICompatibleLLM
from mge.adapters.store.store import Store
from mge.concurrency.limiter import (
    AdaptiveLimiter,
    Adjustment,
    CallLimiter,
    FixedLimiter,
    Outcome,
    SeedRuleLimiter,
)
from mge.cost.pricing import DEFAULT_PRICES
from mge.executor.validation import CodeValidator
from mge.executor.worker import Executor, ExecutorConfig
from mge.plan.dag import plan_dag
from tests.bench.common import fresh_database, layered_atoms, print_table, spec_of
from tests.support.fake_llm import FakeLLM, FakeLLMConfig
from tests.support.postgres import postgres_server

# The seed's threshold is 2 s against the 1.5 s p95 it calls healthy: 4/3 of the uncongested latency.
SEED_THRESHOLD_FACTOR = 2.0 / 1.5
CONVERGED_BAND = (0.9, 1.25)


@dataclass(frozen=True)
class Scenario:
    capacity: int
    base_latency_s: float
    jitter_s: float
    phase_s: float
    period_s: float  # the seed rule's control period

    @property
    def phases(self) -> tuple[tuple[float, int], ...]:
        c = self.capacity
        return ((0.0, c), (self.phase_s, c // 2), (2 * self.phase_s, c))

    @property
    def duration_s(self) -> float:
        return 3 * self.phase_s

    def capacity_at(self, t: float) -> int:
        return [c for start, c in self.phases if t >= start][-1]

    @property
    def ideal_calls(self) -> float:
        return sum(self.phase_s * c for _, c in self.phases) / (self.base_latency_s + self.jitter_s / 2)

    @property
    def uncongested_p95_s(self) -> float:
        return self.base_latency_s + 0.95 * self.jitter_s

    def policies(self) -> dict[str, Callable[[], CallLimiter]]:
        c = self.capacity
        return {
            f"fixed {c // 2} (low)": lambda: FixedLimiter(c // 2),
            f"fixed {2 * c} (high)": lambda: FixedLimiter(2 * c),
            # Started at the capacity, its best case (the seed's own start of 100 would take ~14 periods to
            # come down), with the seed's bounds 10..200.
            "seed rule (-10%/+5%)": lambda: SeedRuleLimiter(
                minimum=10,
                maximum=200,
                limit=c,
                period_s=self.period_s,
                p95_threshold_s=SEED_THRESHOLD_FACTOR * self.base_latency_s,
            ),
            "ours (adaptive)": lambda: AdaptiveLimiter(minimum=1, maximum=4 * c, initial=2),
        }


SIMULATED = Scenario(capacity=40, base_latency_s=1.0, jitter_s=0.2, phase_s=200.0, period_s=30.0)
# Time-scaled 6x: a 0.5 s call stands for a 3 s one and the 5 s period for the seed's 30 s (10 round trips
# either way). At 15x (0.2 s calls, 80 calls/s) one executor's Postgres and validation work no longer fit
# on a shared 2-core machine: it could not keep its limit in flight and every policy measured the machine.
REAL_HTTP = Scenario(capacity=16, base_latency_s=0.5, jitter_s=0.05, phase_s=25.0, period_s=5.0)
MAX_INLINE_ATOMS = 2000  # the most one Masterplan holds inline


@dataclass
class Result:
    completed: int = 0
    rejected: int = 0
    failed_atoms: int = 0
    latencies: list[float] = field(default_factory=list)
    # (time, limit, draining to re-measure the baseline)
    limits: list[tuple[float, int, bool]] = field(default_factory=list)
    # Real HTTP only: what the executor measured (the limiter's input) and how busy the machine was.
    client_latencies: list[float] = field(default_factory=list)
    loop_lags_s: list[float] = field(default_factory=list)
    changes: list[Adjustment] = field(default_factory=list)  # every limit change, at seconds into the run
    # Share of the 50 ms samples in which the executor had its whole limit in flight (give or take one):
    # below ~95% it could not keep up (claims, validation, Postgres), and the run measured the machine.
    limit_filled: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)


def p95(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[int(len(ordered) * 0.95)] if ordered else float("nan")


def convergence_periods(result: Result, scenario: Scenario, phase: int) -> float | None:
    """Control periods after phase `phase` starts until the limit is in the band for at least 90% of every
    later control period of the phase (a probe of a round trip or two is not a failure to converge);
    None if that never happens."""
    start, target = scenario.phases[phase]
    step = scenario.period_s / 10
    grid = [start + i * step for i in range(int(scenario.phase_s / step))]
    times = [t for t, _, _ in result.limits]
    low, high = CONVERGED_BAND
    inside = []
    for t in grid:
        at = bisect.bisect_right(times, t) - 1
        _, limit, probing = result.limits[at] if at >= 0 else (0.0, 0, False)
        inside.append(at >= 0 and (probing or low * target <= limit <= high * target))
    for first in range(len(grid) - 9):
        windows = range(first, len(grid) - 9)
        if all(sum(inside[j : j + 10]) >= 9 for j in windows):
            return first * step / scenario.period_s
    return None


def _probing(limiter: CallLimiter) -> bool:
    return isinstance(limiter, AdaptiveLimiter) and limiter.probing


def simulate(scenario: Scenario, limiter: CallLimiter, seed: int = 1) -> Result:
    """Keep `limiter.limit` calls in flight against the simulated provider; report every outcome back."""
    rnd = random.Random(seed)
    now, in_flight, result = 0.0, 0, Result()
    # (finish time, seq, overloaded, latency, calls in flight when it started)
    events: list[tuple[float, int, bool, float, int]] = []
    seq = 0
    while now < scenario.duration_s:
        while in_flight < limiter.limit:
            capacity = scenario.capacity_at(now)
            if in_flight >= 1.5 * capacity:
                latency, overloaded = 0.05, True
            else:
                load = max(1.0, (in_flight + 1) / capacity)
                base = scenario.base_latency_s + rnd.random() * scenario.jitter_s
                latency, overloaded = base * load, False
            in_flight += 1
            seq += 1
            heapq.heappush(events, (now + latency, seq, overloaded, latency, in_flight))
        finish, _, overloaded, latency, started_with = heapq.heappop(events)
        now = finish
        if overloaded:
            result.rejected += 1
        else:
            result.completed += 1
            result.latencies.append(latency)
        outcome = Outcome.OVERLOADED if overloaded else Outcome.OK
        limiter.record(
            outcome, in_flight=in_flight, now=now, latency_s=latency, tokens=400, started_with=started_with
        )
        in_flight -= 1
        result.limits.append((now, limiter.limit, _probing(limiter)))
    return result


class _Observed:
    """Passes every outcome on to the policy; keeps the executor-measured latency and each limit change."""

    def __init__(self, policy: CallLimiter, result: Result) -> None:
        self.policy, self.result = policy, result
        self.started = time.monotonic()

    @property
    def limit(self) -> int:
        return self.policy.limit

    @property
    def adjustments(self) -> deque[Adjustment]:
        return self.policy.adjustments

    def record(
        self,
        outcome: Outcome,
        *,
        in_flight: int,
        now: float,
        latency_s: float = 0.0,
        tokens: int = 0,
        started_with: int | None = None,
    ) -> None:
        if outcome is Outcome.OK:
            self.result.client_latencies.append(latency_s)
        before = self.policy.limit
        self.policy.record(
            outcome,
            in_flight=in_flight,
            now=now,
            latency_s=latency_s,
            tokens=tokens,
            started_with=started_with,
        )
        if self.policy.limit != before:
            reason = self.policy.adjustments[-1].reason if self.policy.adjustments else ""
            self.result.changes.append(Adjustment(now - self.started, before, self.policy.limit, reason))


async def _sample_loop_lag(lags: list[float], stop: asyncio.Event) -> None:
    """How late a 10 ms sleep wakes up: the delay every await in the executor and the server also suffers."""
    while not stop.is_set():
        before = time.perf_counter()
        await asyncio.sleep(0.01)
        lags.append(time.perf_counter() - before - 0.01)


def scenario_server(scenario: Scenario) -> FakeLLM:
    """The fake LLM server of a scenario: latency x in-flight / C past C, 429 past 1.5 C."""
    return FakeLLM(
        FakeLLMConfig(
            base_latency_s=scenario.base_latency_s,
            latency_jitter_s=scenario.jitter_s,
            capacity=scenario.capacity,
            reject_factor=1.5,
        )
    )


def bench_executor(
    store: Store, url: str, config: ExecutorConfig, fleet_redis: Redis | None = None
) -> Executor:
    """A real executor for the real-HTTP runs: quick retries past 429s, a 50 ms idle poll, a short drain."""
    llm = OpenAICompatibleLLM(url, "k", backoff_base_s=0.05, backoff_cap_s=0.5, max_attempts=20)
    config = dataclasses.replace(config, idle_poll_s=0.05, shutdown_grace_s=1.0)
    return Executor(store, llm, CodeValidator(), DEFAULT_PRICES, config, fleet_redis=fleet_redis)


async def register_independent_atoms(store: Store, scenario: Scenario) -> list[uuid.UUID]:
    """Independent atoms for 1.3 x the scenario's ideal calls, in as few Masterplans as hold them inline."""
    atoms_count = int(scenario.ideal_calls * 1.3)
    plans = math.ceil(atoms_count / MAX_INLINE_ATOMS)
    plan_ids = []
    for number in range(plans):
        atoms = layered_atoms(atoms_count // plans, width=atoms_count // plans)
        plan_id, _ = await store.register_plan(
            namespace="bench",
            name=f"http-{number}",
            trace_id=f"00000000-0000-4000-8000-{number:012x}",
            generation=1,
            spec=spec_of(atoms),
            atoms=atoms,
            plan=plan_dag((a.id, a.depends_on) for a in atoms),
        )
        plan_ids.append(plan_id)
    return plan_ids


async def real_run(server: str, scenario: Scenario, limiter: CallLimiter) -> Result:
    """One executor (4 C atoms at a time) against the fake LLM server while its capacity changes."""
    fake = scenario_server(scenario)
    await fake.start()
    result = Result()
    async with fresh_database(server) as dsn:
        store = await Store.connect(dsn, max_size=80)
        plan_ids = await register_independent_atoms(store, scenario)
        concurrency = 4 * scenario.capacity
        executor = bench_executor(store, fake.url, ExecutorConfig("bench", concurrency=concurrency))
        observed = _Observed(limiter, result)
        executor.gate.limiter = observed
        stop = asyncio.Event()
        load_before = os.getloadavg()[0]
        lag_sampler = asyncio.create_task(_sample_loop_lag(result.loop_lags_s, stop))
        task = asyncio.create_task(executor.run(stop))
        # The phases start with the first request: the executor's own start (connections, first claim)
        # is not the policy's doing, and would otherwise count as lost goodput.
        deadline = time.perf_counter() + 30.0
        while fake.stats.requests == 0 and time.perf_counter() < deadline:
            await asyncio.sleep(0.005)
        started, observed.started = time.perf_counter(), time.monotonic()
        filled = samples = 0
        while (elapsed := time.perf_counter() - started) < scenario.duration_s:
            fake.config.capacity = scenario.capacity_at(elapsed)
            result.limits.append((elapsed, min(limiter.limit, concurrency), _probing(limiter)))
            samples += 1
            filled += executor.gate.in_flight >= min(limiter.limit, concurrency) - 1
            await asyncio.sleep(0.05)
        result.limit_filled = filled / samples
        result.completed = fake.stats.completed
        result.rejected = fake.stats.rejected
        result.latencies = list(fake.stats.latencies_s)
        result.load = (load_before, os.getloadavg()[0])
        stop.set()
        await task
        with contextlib.suppress(asyncio.CancelledError):
            await lag_sampler
        result.failed_atoms = sum([(await store.progress(plan_id)).failed for plan_id in plan_ids])
        await executor.llm.close()
        await executor.validator.close()
        await store.close()
    await fake.stop()
    return result


def _periods(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f}"


def _report_machine(results: dict[str, Result]) -> None:
    """Whether the run measured the policies or the machine: load, event-loop lag, and how far the latency
    the executor measured (what the limiter sees) is from the server's."""
    cores = os.cpu_count() or 1
    rows = []
    for name, result in results.items():
        lags = sorted(result.loop_lags_s)
        rows.append(
            (
                name,
                f"{result.load[0]:.2f} -> {result.load[1]:.2f}",
                f"{1000 * lags[len(lags) // 2]:.1f}" if lags else "-",
                f"{1000 * lags[int(len(lags) * 0.99)]:.1f}" if lags else "-",
                f"{p95(result.client_latencies) / p95(result.latencies):.3f}x",
                f"{100 * result.limit_filled:.0f}%",
            )
        )
    print_table(
        [
            "policy",
            "load avg (1 min)",
            "loop lag p50 ms",
            "p99 ms",
            "executor-side p95 / server-side p95",
            "limit in flight",
        ],
        rows,
    )
    busiest = max(max(result.load) for result in results.values())
    if busiest > cores:
        print(
            f"WARNING: load average {busiest:.1f} on {cores} cores: "
            "this run measures the machine, not the policies"
        )


def _report_changes(scenario: Scenario, result: Result) -> None:
    """Our limit's changes in the first two periods of each phase: how it found, lost and regained C."""
    print("ours, limit changes in the first two periods of each phase:")
    for start, capacity in scenario.phases:
        window = [c for c in result.changes if start <= c.at < start + 2 * scenario.period_s]
        steps = ", ".join(f"{c.at - start:.1f}s {c.old}->{c.new} ({c.reason})" for c in window)
        print(f"  C={capacity} from {start:.0f}s: {steps or 'none'}")


def report(title: str, scenario: Scenario, results: dict[str, Result]) -> None:
    print(title)
    rows = []
    figures: dict[str, tuple[float, float, int, float, float]] = {}
    for name, result in results.items():
        goodput = 100 * result.completed / scenario.ideal_calls
        ratio = p95(result.latencies) / scenario.uncongested_p95_s
        halving = convergence_periods(result, scenario, 1)
        doubling = convergence_periods(result, scenario, 2)
        figures[name] = (
            goodput,
            ratio,
            result.rejected,
            float("inf") if halving is None else halving,
            float("inf") if doubling is None else doubling,
        )
        rows.append(
            (
                name,
                f"{goodput:.1f}%",
                f"{ratio:.2f}x",
                f"{result.rejected:,}",
                _periods(halving),
                _periods(doubling),
                result.failed_atoms,
            )
        )
    print_table(
        [
            "policy",
            "goodput % of C",
            "p95 / uncongested p95",
            "429s",
            "converge after halving (periods)",
            "after doubling (periods)",
            "failed atoms",
        ],
        rows,
    )
    if any(result.client_latencies for result in results.values()):
        _report_machine(results)
        _report_changes(scenario, results["ours (adaptive)"])
    ours, seed = figures["ours (adaptive)"], figures["seed rule (-10%/+5%)"]

    def ratio(a: float, b: float) -> float:
        return a / b if b else (1.0 if a == b else float("inf"))

    better = [
        ("goodput % of C", ours[0] > seed[0], ratio(ours[0], seed[0])),
        ("p95 / uncongested", ours[1] < seed[1], ratio(ours[1], seed[1])),
        ("429s", ours[2] < seed[2], ratio(ours[2], seed[2])),
        ("converge after halving", ours[3] < seed[3], ratio(ours[3], seed[3])),
        ("converge after doubling", ours[4] < seed[4], ratio(ours[4], seed[4])),
    ]
    print(
        "ours vs seed rule: "
        + ", ".join(f"{row} {ratio:.2f}x ({'better' if ok else 'NOT better'})" for row, ok, ratio in better)
    )
    checks = {
        "goodput >= 95% of C": ours[0] >= 95,
        "p95 <= 1.2x uncongested": ours[1] <= 1.2,
        "converges within 3 periods": max(ours[3], ours[4]) <= 3,
    }
    print("ours: " + ", ".join(f"{goal} {'met' if ok else 'MISSED'}" for goal, ok in checks.items()))
    print()


def simulation() -> None:
    scenario = SIMULATED
    results = {name: simulate(scenario, make()) for name, make in scenario.policies().items()}
    report(
        f"Simulation: capacity {scenario.capacity} -> {scenario.capacity // 2} -> {scenario.capacity} concurrent "
        f"calls, {scenario.base_latency_s:.0f} s per call, {scenario.duration_s:.0f} s simulated, "
        f"control period {scenario.period_s:.0f} s",
        scenario,
        results,
    )


async def real_http() -> None:
    scenario = REAL_HTTP
    with postgres_server() as server:
        results = {
            name: await real_run(server, scenario, make()) for name, make in scenario.policies().items()
        }
    report(
        f"Real HTTP: one executor ({4 * scenario.capacity} atoms at a time), fake LLM server at capacity "
        f"{scenario.capacity} -> {scenario.capacity // 2} -> {scenario.capacity}, "
        f"{scenario.base_latency_s} s per call, {scenario.phase_s:.0f} s per phase; time-scaled "
        f"{30 / scenario.period_s:.0f}x (control period {scenario.period_s:.0f} s stands for 30 s)",
        scenario,
        results,
    )


if __name__ == "__main__":
    simulation()
    asyncio.run(real_http())
