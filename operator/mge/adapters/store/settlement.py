"""Settling a call's reservation to what it spent: the values passed to `mge_settle` (migration 0017), the one
definition of the settlement, which the ledger and an attempt's one write both call."""

import json
import uuid
from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class Reservation:
    id: int
    masterplan_id: uuid.UUID
    amount_usd: Decimal


@dataclass(frozen=True, slots=True)
class Settlement:
    """A reservation replaced by the call's actual cost (0 for a call that never happened)."""

    reservation: Reservation
    amount_usd: Decimal
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


def settlement_args(
    settlement: Settlement | None,
    plan_id: uuid.UUID,
    atom_id: str,
    wave_index: int | None,
    model: str | None,
) -> tuple[object, ...]:
    """`mge_settle`'s parameters (the first ten of `mge_finish_attempt`); with no settlement (a cache hit
    reserved nothing) they change nothing."""
    if settlement is None:
        return (None, plan_id, Decimal(0), 0, 0, 0, atom_id, wave_index, model, "{}")
    return (
        settlement.reservation.id,
        plan_id,
        settlement.amount_usd,
        settlement.prompt_tokens,
        settlement.completion_tokens,
        settlement.cached_tokens,
        atom_id,
        wave_index,
        model,
        json.dumps({"reserved": str(settlement.reservation.amount_usd)}),
    )
