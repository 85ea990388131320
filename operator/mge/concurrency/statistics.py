"""Executors' own latency and error statistics over a recent window, and the fleet's view for the scaler.

Pure, time passed in. Without Prometheus these are the scaler's LLM/DB p95 and error-rate signals:
each executor keeps the last `window_s` seconds of samples and reports a summary with its heartbeat;
the operator combines the fresh reports (the slowest executor's p95, errors weighted by calls).
"""

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

# Like the Prometheus queries' rate(...[5m]).
WINDOW_S: Final = 300.0
# Below this many calls in the window one failure would read as a high error rate: no reading instead.
MIN_CALLS_FOR_ERROR_RATE: Final = 20


class RecentSamples:
    """Samples of the last `window_s` seconds (at most `max_samples`, oldest dropped first)."""

    def __init__(self, window_s: float = WINDOW_S, max_samples: int = 4096) -> None:
        if window_s <= 0 or max_samples < 1:
            raise ValueError("recent samples: window_s must be > 0 and max_samples >= 1")
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque(maxlen=max_samples)

    def add(self, value: float, now: float) -> None:
        self._samples.append((now, value))

    def _expire(self, now: float) -> None:
        while self._samples and self._samples[0][0] <= now - self.window_s:
            self._samples.popleft()

    def values(self, now: float) -> list[float]:
        self._expire(now)
        return [value for _, value in self._samples]

    def percentile(self, quantile: float, now: float) -> float | None:
        """Nearest-rank percentile (`quantile` in (0, 1]); None without samples in the window."""
        if not 0 < quantile <= 1:
            raise ValueError(f"quantile must be in (0, 1], got {quantile}")
        values = sorted(self.values(now))
        if not values:
            return None
        return values[max(0, math.ceil(quantile * len(values)) - 1)]


@dataclass
class CallStatistics:
    """One executor's LLM call latency and outcomes, and its store latency, over the recent window."""

    window_s: float = WINDOW_S
    llm_latency: RecentSamples = field(init=False)
    llm_failures: RecentSamples = field(init=False)  # 1.0 per failed request, 0.0 per good one
    db_latency: RecentSamples = field(init=False)

    def __post_init__(self) -> None:
        self.llm_latency = RecentSamples(self.window_s)
        self.llm_failures = RecentSamples(self.window_s)
        self.db_latency = RecentSamples(self.window_s)

    def summary(self, now: float) -> "CallSummary":
        failures = self.llm_failures.values(now)
        return CallSummary(
            llm_p95_s=self.llm_latency.percentile(0.95, now),
            db_p95_s=self.db_latency.percentile(0.95, now),
            llm_requests=len(failures),
            llm_errors=int(sum(failures)),
        )


@dataclass(frozen=True, slots=True)
class CallSummary:
    """What an executor reports: p95s (None without calls) and request/error counts in the window."""

    llm_p95_s: float | None
    db_p95_s: float | None
    llm_requests: int
    llm_errors: int


@dataclass(frozen=True, slots=True)
class FleetSignals:
    llm_p95_s: float | None
    db_p95_s: float | None
    error_rate: float | None


def fleet_signals(reports: Sequence[CallSummary]) -> FleetSignals:
    """The slowest executor's p95 (the one the scaler must not make worse) and the fleet's error rate."""
    llm = [r.llm_p95_s for r in reports if r.llm_p95_s is not None]
    db = [r.db_p95_s for r in reports if r.db_p95_s is not None]
    requests = sum(r.llm_requests for r in reports)
    errors = sum(r.llm_errors for r in reports)
    return FleetSignals(
        llm_p95_s=max(llm) if llm else None,
        db_p95_s=max(db) if db else None,
        error_rate=errors / requests if requests >= MIN_CALLS_FOR_ERROR_RATE else None,
    )
