"""Execution progress of a Masterplan as read from the store: the input of the status decisions."""

from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class WaveProgress:
    index: int
    total: int
    succeeded: int
    failed: int
    running: int
    cost_usd: Decimal


@dataclass(frozen=True, slots=True)
class Progress:
    total: int
    pending: int
    ready: int
    running: int
    succeeded: int
    failed: int
    blocked: int
    cost_usd: Decimal
    waves_total: int
    waves_complete: int
    failed_atoms: tuple[str, ...] = ()
    blocked_atoms: tuple[str, ...] = ()

    @property
    def finished(self) -> bool:
        """Nothing can run any more: every atom succeeded, failed, or waits on a failed dependency."""
        return self.ready == 0 and self.running == 0 and self.pending == self.blocked


@dataclass(frozen=True, slots=True)
class Spend:
    """A Masterplan's money as the cost ledger sees it."""

    spent_usd: Decimal
    reserved_usd: Decimal
    limit_usd: Decimal
    soft_cap_percent: Decimal
    hard_cap_percent: Decimal
    # A reservation was refused at the hard cap: no new LLM calls until the budget is raised.
    exhausted: bool
    override_by: str | None = None
    # What prompt-cache hits would have cost at the price table (never charged, not in spent_usd).
    cache_saved_usd: Decimal = Decimal(0)
