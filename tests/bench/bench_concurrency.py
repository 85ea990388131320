"""Concurrency policies in a discrete-event simulation of an LLM provider with capacity C.

The provider answers in L seconds up to C concurrent calls; beyond C latency grows proportionally, and
beyond 1.5 C calls are refused with 429 at once. C halves at 1/3 of the run and doubles back at 2/3.
Compared side by side: fixed limits (low and high), the seed's rule (every 30 s: -10% if p95 > 2 s,
else +5%), and our AIMD limiter. The simulation is deterministic (seeded) and takes a second or two.
"""

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from mge.concurrency.limiter import AdaptiveLimiter, Outcome, SeedRuleLimiter
from tests.bench.common import print_table

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


if __name__ == "__main__":
    main()
