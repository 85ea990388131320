"""Per-executor limit on in-flight LLM calls, adapted on every call's outcome (AIMD with slow start).

Pure: the caller passes each outcome and the time; nothing here sleeps or reads a clock.
"""

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

DECREASE_FACTOR: Final = 0.9
# A call is "slow" when its latency per output token exceeds the uncongested baseline by this factor.
SLOW_FACTOR: Final = 1.25
# The baseline is the fastest latency per token of the last 5 minutes (congestion only adds latency;
# the window lets it rise when the provider really got slower).
BASELINE_WINDOW_S: Final = 300.0
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
    # (time, latency per token), increasing in both: a monotonic queue whose head is the window's minimum.
    _minima: deque[tuple[float, float]] = field(init=False, default_factory=deque)
    _smoothed: float | None = field(init=False, default=None)
    _round_trip_s: float = field(init=False, default=MAX_COOLDOWN_S)
    adjustments: deque[Adjustment] = field(init=False, default_factory=lambda: deque(maxlen=50))
    _good_calls: int = field(init=False, default=0)
    _last_decrease: float = field(init=False, default=float("-inf"))

    def __post_init__(self) -> None:
        if not 1 <= self.minimum <= self.initial <= self.maximum:
            raise ValueError(
                f"need 1 <= minimum ({self.minimum}) <= initial ({self.initial}) <= maximum ({self.maximum})"
            )
        self.limit = self.initial

    @property
    def baseline_s_per_token(self) -> float | None:
        return self._minima[0][1] if self._minima else None

    def _set(self, new: int, now: float, reason: str) -> None:
        new = max(self.minimum, min(self.maximum, new))
        if new != self.limit:
            self.adjustments.append(Adjustment(now, self.limit, new, reason))
            self.limit = new

    def record(
        self, outcome: Outcome, *, in_flight: int, now: float, latency_s: float = 0.0, tokens: int = 0
    ) -> None:
        """One finished call: `in_flight` counts the calls still running when it finished, itself included."""
        slow = False
        if outcome is Outcome.OK and tokens > 0:
            per_token = latency_s / tokens
            while self._minima and self._minima[-1][1] >= per_token:
                self._minima.pop()
            self._minima.append((now, per_token))
            while self._minima[0][0] < now - BASELINE_WINDOW_S:
                self._minima.popleft()
            # Smooth over about one limit's worth of calls so single slow answers (noise) do not count.
            alpha = 1 / max(4, self.limit)
            self._smoothed = (
                per_token if self._smoothed is None else self._smoothed + alpha * (per_token - self._smoothed)
            )
            baseline = self.baseline_s_per_token
            slow = baseline is not None and self._smoothed > baseline * SLOW_FACTOR
        if outcome is Outcome.OK and latency_s > 0:
            bounded = min(MAX_COOLDOWN_S, max(MIN_COOLDOWN_S, latency_s))
            self._round_trip_s += 0.2 * (bounded - self._round_trip_s)
        if outcome is Outcome.OVERLOADED or slow:
            if now - self._last_decrease >= self._round_trip_s:
                self._last_decrease = now
                self._good_calls = 0
                reason = (
                    "overloaded (429/5xx/timeout)"
                    if outcome is Outcome.OVERLOADED
                    else "latency per token rose"
                )
                if self.slow_start:
                    # Slow start overshoots by up to 2x in its last round: go back to the last good size.
                    self.slow_start = False
                    self._set(self.limit // 2, now, f"{reason}; slow start ends")
                else:
                    self._set(min(self.limit - 1, int(self.limit * DECREASE_FACTOR)), now, reason)
            return
        if outcome is not Outcome.OK or in_flight < self.limit / 2:
            return
        self._good_calls += 1
        if self._good_calls >= self.limit:
            self._good_calls = 0
            if self.slow_start:
                self._set(self.limit * 2, now, "slow start")
            else:
                self._set(self.limit + 1, now, "additive increase")


@dataclass
class SeedRuleLimiter:
    """The original spec's rule, kept as the baseline: every 30 s, -10% if p95 is too high, else +5%."""

    minimum: int = 10
    maximum: int = 200
    limit: int = 100
    period_s: float = 30.0
    p95_threshold_s: float = 2.0
    _window: list[float] = field(default_factory=list)
    _next: float = 0.0

    def record(self, latency_s: float, now: float, overloaded: bool = False) -> None:
        self._window.append(float("inf") if overloaded else latency_s)
        if now < self._next:
            return
        self._next = now + self.period_s
        if not self._window:
            return
        ordered = sorted(self._window)
        p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
        self._window.clear()
        if p95 > self.p95_threshold_s:
            self.limit = max(self.minimum, int(self.limit * 0.9))
        else:
            self.limit = min(self.maximum, int(self.limit * 1.05))
