"""Budget decisions: may this call reserve money, which caps are crossed, may this override apply."""

from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

_HUNDRED = Decimal(100)


@dataclass(frozen=True, slots=True)
class BudgetLimits:
    limit_usd: Decimal
    soft_cap_percent: Decimal
    hard_cap_percent: Decimal

    @property
    def soft_cap_usd(self) -> Decimal:
        return self.limit_usd * self.soft_cap_percent / _HUNDRED

    @property
    def hard_cap_usd(self) -> Decimal:
        return self.limit_usd * self.hard_cap_percent / _HUNDRED


@dataclass(frozen=True, slots=True)
class ReservationDecision:
    granted: bool
    headroom_usd: Decimal  # what was left before this request
    # Refused only because calls in flight hold the rest: once they settle it may fit, so the caller waits.
    # Not the hard cap, which is when the call would not fit even with nothing outstanding.
    wait: bool = False


def reservation_decision(
    spent: Decimal, reserved: Decimal, amount: Decimal, limits: BudgetLimits
) -> ReservationDecision:
    """Grant only if spent + already reserved + this worst case stays within the hard cap; refused, wait
    when settled spend alone leaves room for it (settling only ever returns money, never takes more)."""
    headroom = limits.hard_cap_usd - spent - reserved
    granted = amount <= headroom
    return ReservationDecision(
        granted=granted,
        headroom_usd=max(headroom, Decimal(0)),
        wait=not granted and spent + amount <= limits.hard_cap_usd,
    )


class BudgetState(StrEnum):
    WITHIN = "within"
    SOFT_CAP = "soft_cap"
    HARD_CAP = "hard_cap"


def budget_state(spent: Decimal, exhausted: bool, limits: BudgetLimits) -> BudgetState:
    if exhausted or spent >= limits.hard_cap_usd:
        return BudgetState.HARD_CAP
    if spent >= limits.soft_cap_usd:
        return BudgetState.SOFT_CAP
    return BudgetState.WITHIN


def projected_total(
    spent: Decimal, finished_atoms: int, remaining_atoms: int, estimate_per_atom: Decimal
) -> Decimal:
    """Spend so far plus the remaining atoms at the observed mean (the plan's estimate before any finished)."""
    mean = spent / finished_atoms if finished_atoms else estimate_per_atom
    return spent + mean * remaining_atoms


class OverrideRejected(ValueError):
    pass


def check_override(new_limit: Decimal, spent: Decimal, reserved: Decimal) -> None:
    """An override may lower a budget, but never below what is already spent or committed to calls in flight."""
    committed = spent + reserved
    if new_limit < committed:
        raise OverrideRejected(
            f"spec.budget.override.limitUSD ({usd(new_limit)}) is below what is already spent or reserved "
            f"({usd(committed)}); choose at least that much"
        )


# spec.budget.limitUSD and override.limitUSD allow at most this much (the CRD's maximum).
MAX_LIMIT_USD = Decimal(1_000_000)


def usd(amount: Decimal) -> str:
    """Dollars with cents; a sub-dollar amount with four decimals, or as many as it needs not to read as zero."""
    if amount == 0 or abs(amount) >= 1:
        return f"${amount:,.2f}"
    decimals = max(4, 1 - amount.adjusted())
    text = f"{amount:.{decimals}f}"
    if decimals > 4:
        text = text.rstrip("0")
    return f"${text}"


def suggested_limit(limit: Decimal, projected: Decimal, committed: Decimal) -> Decimal:
    """A budget to propose at the hard cap: room for the projected total, rounded up to two significant digits,
    never below what is committed and never above what the CRD admits."""
    wanted = max(limit * Decimal("1.5"), projected * Decimal("1.1"), committed * Decimal("1.1"))
    if wanted <= 0:
        return limit
    step = Decimal(1).scaleb(wanted.adjusted() - 1)
    rounded = (wanted / step).to_integral_value(rounding="ROUND_CEILING") * step
    return min(rounded, MAX_LIMIT_USD)


def json_number(amount: Decimal) -> str:
    """A Decimal as a plain JSON number: 0.0006 rather than 6E-4."""
    return format(amount.normalize(), "f")
