"""Concurrency policies when 1, 2 or 8 executors share one provider, on four capacity models.

A time-stepped simulation (10 ms steps, seeded, deterministic): each executor keeps its own limiter's limit
of calls in flight; the provider sees them all. Capacity C goes C -> C/2 -> C. The models:

- queueing: latency = base x max(1, in-flight / C); 429 past 1.5 C (the model `bench_concurrency` uses);
- processor sharing: each call needs `base` seconds of service and progresses at min(1, C / in-flight)
  per step, with the step's share jittered +-20% (scheduling noise); 429 past 1.5 C;
- rate limited: flat latency, but a requests budget of C / base per second (a bucket of C): past it
  429 at once;
- rate limited + headers: the same provider answering as OpenAI-compatible ones do, with
  `x-ratelimit-{limit,remaining,reset}-requests` read when the call was admitted and `Retry-After` on a 429.
  Each executor reads them as the product's call gate does (`ProviderBudget`): a call starts only when the
  last reading, refilled since and less the calls started since, leaves room for it.

Policies, per executor: ours (adaptive), the seed's rule (-10% / +5% per 30 s period on p95 > 2 s, bounds
10..200) and a fixed limit of C / executors (the best fixed split, knowing C). With more than one executor,
also "one shared estimate": the product's fleet estimate (docs/concurrency.md), one limiter fed every
executor's calls and counted against the fleet's calls in flight, each executor holding its share of the
limit, events and shares exchanged every 50 ms as the Redis link does. Goodput is completed calls over
C / base per second; p95 is over the uncongested p95.
"""

import itertools
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from mge.adapters.fleet_link import TICK_S
from mge.concurrency.fleet_estimate import STATUS_EVERY_S, FleetEstimate, SharedLimiter
from mge.concurrency.limiter import AdaptiveLimiter, CallLimiter, FixedLimiter, Outcome, SeedRuleLimiter
from mge.concurrency.rate_limits import ProviderBudget, RateLimitHeaders, parse_rate_limit_headers
from tests.bench.common import print_table

# C = 16: in the halved phase 8 executors get one call each; C = 48: a share of 3 or more.
CAPACITIES = (16, 48)
MODELS = ("queueing", "processor sharing", "rate limited", "rate limited + headers")
BASE_S = 1.0
JITTER_S = 0.1
# 120 round trips a phase; `bench_fleet_http`'s phases are 50 (MGE_BENCH_PHASE_S=50 simulates those).
PHASE_S = float(os.environ.get("MGE_BENCH_PHASE_S", "120"))
STEP_S = 0.01
REFUSED_S = 0.05
SEED_PERIOD_S = 30.0
EXECUTORS = (1, 2, 8)
# The simulation is deterministic for a seed; docs/benchmarks.md gives the ranges over seeds 1-4.
SEED = int(os.environ.get("MGE_BENCH_SEED", "1"))


@dataclass
class _Call:
    executor: int
    started: float
    started_with: int
    work: float  # seconds of service still needed (processor sharing), or the finish time
    refused: bool = False
    headers: RateLimitHeaders | None = None  # what the answer tells of the provider's budget
    sent: int = 0  # the request's number in its executor's ProviderBudget


@dataclass
class Result:
    completed: int = 0
    completed_by_phase: list[int] = field(default_factory=lambda: [0, 0, 0])
    refused: int = 0
    latencies: list[float] = field(default_factory=list)


def capacity_at(t: float, capacity: int) -> int:
    return capacity if t < PHASE_S or t >= 2 * PHASE_S else capacity // 2


class Provider:
    """One capacity model: `admit` decides on a new call, `advance` moves time and returns finished calls."""

    def __init__(self, model: str, capacity: int, rnd: random.Random) -> None:
        self.model, self.capacity, self.rnd = model, capacity, rnd
        self.calls: list[_Call] = []
        self.bucket = float(capacity)

    def admit(self, call: _Call, now: float) -> None:
        capacity = capacity_at(now, self.capacity)
        live = sum(not c.refused for c in self.calls)
        if self.model.startswith("rate limited"):
            refused = self.bucket < 1
            if refused:
                call.refused, call.work = True, now + REFUSED_S
            else:
                self.bucket -= 1
                call.work = now + BASE_S + self.rnd.random() * JITTER_S
            if self.model == "rate limited + headers":
                call.headers = self._headers(capacity, refused)
        elif live >= 1.5 * capacity:
            call.refused, call.work = True, now + REFUSED_S
        elif self.model == "queueing":
            load = max(1.0, (live + 1) / capacity)
            call.work = now + (BASE_S + self.rnd.random() * JITTER_S) * load
        else:  # processor sharing: seconds of service still needed
            call.work = BASE_S + self.rnd.random() * JITTER_S
        self.calls.append(call)

    def _headers(self, capacity: int, refused: bool) -> RateLimitHeaders | None:
        """The budget as the provider reports it at admission; a refusal says when one request fits again."""
        rate = capacity / BASE_S
        headers = {
            "x-ratelimit-limit-requests": str(capacity),
            "x-ratelimit-remaining-requests": str(int(self.bucket)),
            "x-ratelimit-reset-requests": f"{(capacity - self.bucket) / rate:.3f}s",
        }
        if refused:
            headers["retry-after"] = f"{(1 - self.bucket) / rate:.3f}"
        return parse_rate_limit_headers(headers)

    def advance(self, now: float) -> list[_Call]:
        capacity = capacity_at(now, self.capacity)
        self.bucket = min(float(capacity), self.bucket + capacity / BASE_S * STEP_S)
        served = [c for c in self.calls if not c.refused]
        if self.model == "processor sharing" and served:
            share = min(1.0, capacity / len(served)) * STEP_S
            for call in served:
                call.work -= share * (0.8 + 0.4 * self.rnd.random())
            done = [c for c in self.calls if (c.refused and c.work <= now) or (not c.refused and c.work <= 0)]
        else:
            done = [c for c in self.calls if c.work <= now]
        if done:
            finished = {id(c) for c in done}
            self.calls = [c for c in self.calls if id(c) not in finished]
        return done


def simulate(
    model: str, capacity: int, executors: int, make: Callable[[], CallLimiter], seed: int = 1
) -> Result:
    """`make` gives each executor its limiter. SharedLimiters share one FleetEstimate, the product's: their
    events reach it, and its shares reach them, every TICK_S, as the Redis link carries them."""
    rnd = random.Random(seed)
    provider = Provider(model, capacity, rnd)
    limiters = [make() for _ in range(executors)]
    shared = [limiter for limiter in limiters if isinstance(limiter, SharedLimiter)]
    estimate = FleetEstimate() if shared else None
    in_flight = [0] * executors
    # Each executor's reading of the provider's budget (its call gate's); only the headers model sends any.
    budgets = [ProviderBudget() for _ in range(executors)]
    result = Result()
    now, steps, status_at = 0.0, 0, -STATUS_EVERY_S
    while now < 3 * PHASE_S:
        if estimate is not None and steps % round(TICK_S / STEP_S) == 0:
            status_due = now - status_at >= STATUS_EVERY_S
            _exchange(estimate, shared, in_flight, now, status_due=status_due)
            if status_due:
                status_at = now
        steps += 1
        # Calls started in one step get distinct times, in the order the provider admits them, as calls of
        # real executors do: the fleet's estimate orders its counts by these times. As in the call gate, a
        # call's slot is taken (its START) just before its request is sent (the latency is measured from there).
        started_in_step = itertools.count()
        for number, limiter in enumerate(limiters):
            while in_flight[number] < limiter.limit and budgets[number].wait_s(0, now) == 0:
                in_flight[number] += 1
                sent = budgets[number].started(0, now)
                at = now + 1e-6 * next(started_in_step)
                if isinstance(limiter, SharedLimiter):
                    limiter.started(at)
                provider.admit(_Call(number, at + 5e-7, in_flight[number], 0.0, sent=sent), now)
        now += STEP_S
        for call in provider.advance(now):
            limiter = limiters[call.executor]
            if call.headers is not None:
                budgets[call.executor].observe(call.headers, now, call.sent)
            latency = now - call.started
            if call.refused:
                result.refused += 1
                # As the call gate classifies it: a refusal the headers explain is the budget's, not congestion.
                budget = call.headers is not None and call.headers.refused_for_budget(0)
                outcome = Outcome.RATE_LIMITED if budget else Outcome.OVERLOADED
                limiter.record(outcome, in_flight=in_flight[call.executor], now=now)
            else:
                result.completed += 1
                result.completed_by_phase[min(2, int(now // PHASE_S))] += 1
                result.latencies.append(latency)
                limiter.record(
                    Outcome.OK,
                    in_flight=in_flight[call.executor],
                    now=now,
                    latency_s=latency,
                    tokens=400,
                    started_with=call.started_with,
                )
            in_flight[call.executor] -= 1
            if isinstance(limiter, SharedLimiter):
                limiter.finished(now)
    return result


def _exchange(
    estimate: FleetEstimate,
    limiters: list[SharedLimiter],
    in_flight: list[int],
    now: float,
    *,
    status_due: bool,
) -> None:
    """One tick of the link: statuses and events to the leader's estimate, the shares back."""
    for number, limiter in enumerate(limiters):
        if status_due:
            limiter.status(now, in_flight=in_flight[number])
        while limiter.outbox:
            event = limiter.outbox.popleft()
            estimate.apply(event, event.at)
    shares = estimate.shares(now)
    for limiter in limiters:
        limiter.set_share(shares.get(limiter.executor), now, estimate.limiter.limit)


def policies(capacity: int, executors: int) -> dict[str, Callable[[], CallLimiter]]:
    numbers = itertools.count()

    def shared() -> CallLimiter:
        own = AdaptiveLimiter(minimum=1, maximum=4 * capacity, initial=2, fleet=executors)
        return SharedLimiter(f"executor-{next(numbers)}", own, wall_offset_s=0.0)

    one_estimate: dict[str, Callable[[], CallLimiter]] = (
        {"one shared estimate": shared} if executors > 1 else {}
    )
    return {
        "ours (adaptive)": lambda: AdaptiveLimiter(
            minimum=1, maximum=4 * capacity, initial=2, fleet=executors
        ),
        "seed rule": lambda: SeedRuleLimiter(
            minimum=10, maximum=200, limit=10, period_s=SEED_PERIOD_S, p95_threshold_s=2.0 * BASE_S / 1.5
        ),
        f"fixed C/{executors}": lambda: FixedLimiter(max(1, capacity // executors)),
        **one_estimate,
    }


def main() -> None:
    uncongested_p95 = BASE_S + 0.95 * JITTER_S
    print(
        "Fleet simulation: 1, 2 and 8 executors on one provider whose capacity C halves and comes back, "
        f"{BASE_S:.0f} s per call, {PHASE_S:.0f} s per phase, four capacity models, seed {SEED}"
    )
    rows = []
    misses = []
    for capacity in CAPACITIES:
        for model in MODELS:
            # The provider serves C calls per call time; the rate-limited one C per `base` seconds.
            per_s = [capacity_at(start, capacity) for start in (0.0, PHASE_S, 2 * PHASE_S)]
            call_s = BASE_S if model.startswith("rate limited") else BASE_S + JITTER_S / 2
            ideal = sum(per_s) * PHASE_S / call_s
            for executors in EXECUTORS:
                figures = {}
                for name, make in policies(capacity, executors).items():
                    result = simulate(model, capacity, executors, make, seed=SEED)
                    latencies = sorted(result.latencies)
                    p95 = latencies[int(len(latencies) * 0.95)] / uncongested_p95
                    goodput = 100 * result.completed / ideal
                    by_phase = " / ".join(
                        f"{100 * done / (c * PHASE_S / call_s):.0f}"
                        for done, c in zip(result.completed_by_phase, per_s, strict=True)
                    )
                    figures[name] = (goodput, p95, result.refused)
                    row = (
                        capacity,
                        model,
                        executors,
                        name,
                        f"{goodput:.1f}%",
                        by_phase,
                        f"{p95:.2f}x",
                        f"{result.refused:,}",
                    )
                    rows.append(row)
                ours = figures["ours (adaptive)"]
                if ours[0] < 95 or ours[1] > 1.2:
                    misses.append(
                        f"C={capacity}, {model}, {executors} executors: {ours[0]:.1f}% / {ours[1]:.2f}x"
                    )
    print_table(
        [
            "C",
            "capacity model",
            "executors",
            "policy",
            "goodput % of C",
            "by phase",
            "p95 / uncongested",
            "429s",
        ],
        rows,
    )
    print("ours: goals (goodput >= 95%, p95 <= 1.2x) " + ("met on every row" if not misses else "MISSED on:"))
    for miss in misses:
        print(f"  {miss}")
    print()


if __name__ == "__main__":
    main()
