"""Fleet-wide ramp-up of a Masterplan: how many of its atoms all executors together may run at once.

Pure. Without it a newly applied (or resumed, or re-planned) big plan would get every free slot of every
executor in one round of claims and hit the LLM with it at once; the limiter's slow start only protects a
freshly started executor. The store keeps one allowance per ramping plan, which claims respect across the
fleet; these rules say where it starts, how it grows and when it ends.
"""

from dataclasses import dataclass
from typing import Final

INITIAL_ALLOWANCE: Final = 2


@dataclass(frozen=True)
class RampPolicy:
    """Slow start for a plan across the fleet: each of its LLM calls that answers lets one more of its atoms
    run (its own slot frees when its atom finishes, so every answer starts two), which doubles the
    allowance once per round trip of its calls, whatever the model's speed, and not at all while its calls
    fail. From `ends_at` the ramp is over and the plan is limited only by the executors' own limits."""

    ends_at: int = 64

    def __post_init__(self) -> None:
        if self.ends_at <= INITIAL_ALLOWANCE:
            raise ValueError(f"plan ramp: ends_at must be > {INITIAL_ALLOWANCE} (got ends_at={self.ends_at})")

    def grown(self, allowance: int) -> int | None:
        """The allowance after one answer; None when the ramp is over (it would no longer limit)."""
        grown = allowance + 1
        return None if grown >= self.ends_at else grown


def restart_allowance(running: int) -> int:
    """Where a plan's ramp (re)starts: a few atoms, but never below what already runs (a re-planned plan keeps
    its share while its changed atoms ramp)."""
    return max(INITIAL_ALLOWANCE, running)
