"""Executor replicas from observed load, damped like the HorizontalPodAutoscaler: up fast, down slowly."""

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Final

from mge.concurrency.replicas import ReplicaBounds, demanded_replicas

SCALE_DOWN_WINDOW_S: Final = 300.0
MAX_DOWN_FRACTION: Final = 0.25


@dataclass(frozen=True, slots=True)
class Observation:
    """What the scaler sees each period; `None` for a signal it could not read."""

    ready_atoms: int
    running_atoms: int
    llm_p95_s: float | None = None
    db_p95_s: float | None = None
    error_rate: float | None = None
    # Executors holding no atoms; None when unknown (no limit). Busy executors are never scaled away.
    idle_executors: int | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    replicas: int
    reason: str


@dataclass
class ScalerPolicy:
    bounds: ReplicaBounds
    llm_p95_limit_s: float = 2.0
    db_p95_limit_s: float = 0.1
    error_rate_limit: float = 0.05
    _recommendations: deque[tuple[float, int]] = field(default_factory=deque)

    def decide(self, current: int, observed: Observation | None, now: float) -> Decision:
        """`observed=None` means the metrics could not be read: hold rather than act blind."""
        if observed is None:
            return Decision(current, "holding: metrics unavailable")
        wanted = demanded_replicas(observed.ready_atoms, observed.running_atoms, self.bounds)
        strained = [
            name
            for name, value, limit in (
                ("LLM p95", observed.llm_p95_s, self.llm_p95_limit_s),
                ("DB p95", observed.db_p95_s, self.db_p95_limit_s),
                ("error rate", observed.error_rate, self.error_rate_limit),
            )
            if value is not None and value > limit
        ]
        if strained and wanted > current:
            # More executors would only add load to a struggling LLM or database.
            wanted = current
        if wanted > current:
            target = min(wanted, max(current * 2, current + 4), self.bounds.maximum)
            self._recommendations.clear()
            return Decision(
                target, f"scale up: {observed.ready_atoms} ready, {observed.running_atoms} running"
            )
        # Scale down to the highest recommendation of the stabilization window, at most 25% per step.
        self._recommendations.append((now, wanted))
        while self._recommendations and self._recommendations[0][0] < now - SCALE_DOWN_WINDOW_S:
            self._recommendations.popleft()
        stable = max(r for _, r in self._recommendations)
        floor = current - max(1, math.floor(current * MAX_DOWN_FRACTION)) if current > 0 else 0
        target = max(stable, floor, self.bounds.minimum)
        if observed.idle_executors is not None and target < current - observed.idle_executors:
            # Removing a busy executor hands its atoms back mid-generation: wasted LLM calls.
            idle = max(observed.idle_executors, 0)
            if idle == 0:
                return Decision(current, f"holding: would scale down to {target}, but no executor is idle")
            return Decision(current - idle, f"scale down: only {idle} idle executors (would go to {target})")
        if target < current:
            return Decision(target, f"scale down: demand {wanted} held for {SCALE_DOWN_WINDOW_S:.0f}s")
        reason = f"holding: {', '.join(strained)} over limit" if strained else "holding: demand met"
        return Decision(current, reason)
