"""How many executor pods the queue needs right now (the demand signal the scaler damps)."""

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ReplicaBounds:
    minimum: int
    maximum: int
    atoms_per_executor: int

    def __post_init__(self) -> None:
        if not 0 <= self.minimum <= self.maximum:
            raise ValueError(f"executor replicas: need 0 <= min ({self.minimum}) <= max ({self.maximum})")
        if self.atoms_per_executor < 1:
            raise ValueError("executor concurrency must be at least 1")


def demanded_replicas(ready: int, running: int, bounds: ReplicaBounds) -> int:
    """Enough executors for every runnable atom at full concurrency; the minimum when idle (0 allows scale-to-zero)."""
    if ready + running == 0:
        return bounds.minimum
    needed = math.ceil((ready + running) / bounds.atoms_per_executor)
    return max(bounds.minimum, min(bounds.maximum, max(needed, 1)))
