"""Per-executor limit on in-flight LLM calls, adapted on every call's outcome (AIMD with slow start).

Pure: the caller passes each outcome and the time; nothing here sleeps or reads a clock.
"""

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, Protocol

DECREASE_FACTOR: Final = 0.9
# Smoothed latency per output token over the baseline. Past a provider's capacity more calls in flight add
# only latency, not throughput, so the limit stops growing as soon as queueing shows (HOLD) and falls only
# when it is clearly too high (SLOW). The band between keeps the limit just past capacity instead of
# see-sawing between it and the 429 point.
HOLD_FACTOR: Final = 1.05
SLOW_FACTOR: Final = 1.2
# The baseline is the lowest smoothed latency per token of this window: congestion only adds latency, so the
# minimum is the provider's uncongested speed; the window lets it rise when the provider really got slower.
BASELINE_WINDOW_S: Final = 120.0
# Calls the baseline's average spans (at least; more when the limit is higher).
BASELINE_CALLS: Final = 32
# Holding just past capacity, every call is slightly queued, so the window would slowly fill with congested
# samples and the baseline (and the limit) would creep up to the 429 point. After this long without an
# uncongested sample the limiter drains to PROBE_FACTOR of its limit for two round trips to measure again.
PROBE_AFTER_S: Final = BASELINE_WINDOW_S / 2
PROBE_FACTOR: Final = 0.75
PROBE_ROUND_TRIPS: Final = 2
# Cut at most once per round trip (a call's smoothed latency, within these bounds): one overload episode
# returns many failures at once.
MIN_COOLDOWN_S: Final = 0.05
MAX_COOLDOWN_S: Final = 2.0


class Outcome(StrEnum):
    OK = "ok"
    OVERLOADED = "overloaded"  # 429, 503, timeout
    ERROR = "error"  # other failures say nothing about load


@dataclass
class Adjustment:
    at: float
    old: int
    new: int
    reason: str


class CallLimiter(Protocol):
    """What the executor's call gate needs: the current limit, the changes, and a way to report each call."""

    @property
    def limit(self) -> int: ...

    @property
    def adjustments(self) -> deque[Adjustment]: ...

    def record(
        self, outcome: Outcome, *, in_flight: int, now: float, latency_s: float = 0.0, tokens: int = 0
    ) -> None: ...


def _adjustment_log() -> deque[Adjustment]:
    return deque(maxlen=50)


@dataclass
class AdaptiveLimiter:
    """Slow start (x2 per limit's worth of good calls), then +1 per limit's worth; x0.9 on overload.

    The limit only grows while the executor actually uses at least half of it, so an idle executor does not
    accumulate a limit it never tested.
    """

    minimum: int = 1
    maximum: int = 64
    initial: int = 2
    limit: int = field(init=False)
    slow_start: bool = field(init=False, default=True)
    adjustments: deque[Adjustment] = field(init=False, default_factory=_adjustment_log)
    # (time, smoothed latency per token), increasing in both: a monotonic queue whose head is the minimum.
    _minima: deque[tuple[float, float]] = field(init=False, default_factory=deque)
    _smoothed: float | None = field(init=False, default=None)
    _steady: float | None = field(init=False, default=None)
    _samples: int = field(init=False, default=0)
    _round_trip_s: float = field(init=False, default=MAX_COOLDOWN_S)
    _good_calls: int = field(init=False, default=0)
    _last_decrease: float = field(init=False, default=float("-inf"))
    _last_uncongested: float | None = field(init=False, default=None)
    _probe_until: float | None = field(init=False, default=None)
    _probe_restore: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if not 1 <= self.minimum <= self.initial <= self.maximum:
            raise ValueError(
                f"need 1 <= minimum ({self.minimum}) <= initial ({self.initial}) <= maximum ({self.maximum})"
            )
        self.limit = self.initial

    @property
    def baseline_s_per_token(self) -> float | None:
        return self._minima[0][1] if self._minima else None

    @property
    def latency_ratio(self) -> float | None:
        """Smoothed latency per token over the baseline: 1.0 uncongested, 1.5 at half again capacity."""
        baseline = self.baseline_s_per_token
        return None if self._smoothed is None or not baseline else self._smoothed / baseline

    def _set(self, new: int, now: float, reason: str) -> None:
        new = max(self.minimum, min(self.maximum, new))
        if new != self.limit:
            self.adjustments.append(Adjustment(now, self.limit, new, reason))
            self.limit = new

    def _observe_latency(self, now: float, latency_s: float, tokens: int) -> None:
        per_token = latency_s / tokens
        # The current latency is smoothed over about one limit's worth of calls, so one slow answer is not
        # congestion. The baseline is the minimum of a slower average: the minimum of a noisy series lies
        # below its mean by a few of its standard deviations, and that gap would read as queueing.
        self._samples += 1
        # A plain mean until each average has seen its span: an early fast answer must not become the baseline.
        self._smoothed = self._ewma(self._smoothed, per_token, 1 / min(self._samples, max(4, self.limit)))
        span = max(BASELINE_CALLS, self.limit)
        self._steady = self._ewma(self._steady, per_token, 1 / min(self._samples, span))
        if self._samples < BASELINE_CALLS:
            return
        while self._minima and self._minima[-1][1] >= self._steady:
            self._minima.pop()
        self._minima.append((now, self._steady))
        while self._minima[0][0] < now - BASELINE_WINDOW_S:
            self._minima.popleft()
        ratio = self.latency_ratio
        if self._last_uncongested is None or (ratio is not None and ratio <= HOLD_FACTOR):
            self._last_uncongested = now

    @staticmethod
    def _ewma(average: float | None, sample: float, alpha: float) -> float:
        return sample if average is None else average + alpha * (sample - average)

    def _cut(self, now: float, reason: str) -> None:
        self._last_decrease = now
        self._good_calls = 0
        if self._probe_until is not None:  # overload while draining: the drained limit was still too high
            self._probe_until = None
        if self.slow_start:
            # Slow start overshoots by up to 2x in its last round: go back to the last good size.
            self.slow_start = False
            self._set(self.limit // 2, now, f"{reason}; slow start ends")
        else:
            self._set(min(self.limit - 1, int(self.limit * DECREASE_FACTOR)), now, reason)

    def _probe(self, now: float) -> bool:
        """Drain now and then to re-measure the uncongested latency; True while a probe is running."""
        if self._probe_until is not None:
            if now < self._probe_until:
                return True
            self._probe_until = None
            self._last_uncongested = now
            self._set(self._probe_restore, now, "baseline re-measured; limit restored")
            return False
        if self._last_uncongested is not None and now - self._last_uncongested > PROBE_AFTER_S:
            self._probe_restore = self.limit
            self._probe_until = now + PROBE_ROUND_TRIPS * self._round_trip_s
            self._set(int(self.limit * PROBE_FACTOR), now, "draining briefly to re-measure the baseline")
            return True
        return False

    def record(
        self, outcome: Outcome, *, in_flight: int, now: float, latency_s: float = 0.0, tokens: int = 0
    ) -> None:
        """One finished call: `in_flight` counts the calls still running when it finished, itself included."""
        if outcome is Outcome.OK and latency_s > 0:
            if tokens > 0:
                self._observe_latency(now, latency_s, tokens)
            bounded = min(MAX_COOLDOWN_S, max(MIN_COOLDOWN_S, latency_s))
            self._round_trip_s += 0.2 * (bounded - self._round_trip_s)
        ratio = self.latency_ratio if outcome is Outcome.OK else None
        slow = ratio is not None and ratio > SLOW_FACTOR
        if outcome is Outcome.OVERLOADED or slow:
            if now - self._last_decrease >= self._round_trip_s:
                self._cut(
                    now,
                    "overloaded (429/5xx/timeout)"
                    if outcome is Outcome.OVERLOADED
                    else "latency per token rose",
                )
            return
        if outcome is not Outcome.OK or self._probe(now):
            return
        if ratio is not None and ratio > HOLD_FACTOR:
            # Queueing has begun: at capacity. Holding here is what keeps p95 near the uncongested one.
            # (Slow start only pauses: noise at a small limit must not end it.)
            return
        if in_flight < self.limit / 2:
            return
        self._good_calls += 1
        if self._good_calls >= self.limit:
            self._good_calls = 0
            if self.slow_start:
                self._set(self.limit * 2, now, "slow start")
            else:
                self._set(self.limit + 1, now, "additive increase")


@dataclass
class FixedLimiter:
    """A limit that never moves: the benchmark's fixed baselines, and a safe fallback."""

    limit: int
    adjustments: deque[Adjustment] = field(default_factory=_adjustment_log)

    def record(
        self, outcome: Outcome, *, in_flight: int, now: float, latency_s: float = 0.0, tokens: int = 0
    ) -> None:
        return None


@dataclass
class SeedRuleLimiter:
    """The original spec's rule, kept as the baseline: every 30 s, -10% if p95 is too high, else +5%.

    As specified: a failed call counts as an unhealthy sample (the spec's error-rate check), growth needs
    more than 80% of the limit in use, and both steps round down (so below 20 the limit cannot grow).
    """

    minimum: int = 10
    maximum: int = 200
    limit: int = 100
    period_s: float = 30.0
    p95_threshold_s: float = 2.0
    adjustments: deque[Adjustment] = field(default_factory=_adjustment_log)
    _window: list[float] = field(default_factory=list)
    _busiest: int = 0
    _next: float | None = None

    def record(
        self, outcome: Outcome, *, in_flight: int, now: float, latency_s: float = 0.0, tokens: int = 0
    ) -> None:
        self._window.append(float("inf") if outcome is Outcome.OVERLOADED else latency_s)
        self._busiest = max(self._busiest, in_flight)
        if self._next is None:
            self._next = now + self.period_s
        if now < self._next:
            return
        self._next = now + self.period_s
        ordered = sorted(self._window)
        p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
        busiest, self._busiest = self._busiest, 0
        self._window.clear()
        old = self.limit
        if p95 > self.p95_threshold_s:
            self.limit = max(self.minimum, int(self.limit * 0.9))
        elif busiest > 0.8 * self.limit:
            self.limit = min(self.maximum, int(self.limit * 1.05))
        if self.limit != old:
            self.adjustments.append(Adjustment(now, old, self.limit, f"seed rule: p95 {p95:.2f}s"))
