"""Settling a call's reservation to what it spent: the SQL shared by the ledger and an attempt's one write."""

import json
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Final


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


# The CTEs of a settlement, for a statement's WITH clause; parameters $1-$10 are `settlement_args`. The plan
# row is locked first (the held reservation is deleted only after), the order every ledger write takes, so
# a settlement and a reservation that gives dead reservations back never wait for each other. The amount
# moves from reserved to spent (an expired reservation was already given back, and is not again); "settle"
# is recorded and, when this call took spend over the soft cap, "soft_cap" (exactly once per crossing: the
# increment is applied to the row's latest version, so `spent - amount` is what it was just before).
SETTLE_CTES: Final = """
plan_lock AS (
    SELECT id FROM masterplans WHERE id = $2 AND $1::bigint IS NOT NULL FOR UPDATE
), held AS (
    DELETE FROM cost_reservations WHERE id = $1 AND EXISTS (SELECT 1 FROM plan_lock) RETURNING amount_usd
), spend AS (
    UPDATE masterplans
    SET current_cost_usd = current_cost_usd + $3::numeric,
        reserved_cost_usd = reserved_cost_usd - coalesce((SELECT amount_usd FROM held), 0), updated_at = now()
    WHERE id = (SELECT id FROM plan_lock)
    RETURNING trace_id, current_cost_usd, budget_limit_usd,
              budget_limit_usd * soft_cap_percentage / 100 AS soft_cap_usd
), cost_event AS (
    INSERT INTO cost_events (masterplan_id, trace_id, atom_id, wave_index, model, kind, amount_usd,
                             prompt_tokens, completion_tokens, cached_tokens, cumulative_cost_usd,
                             budget_limit_usd, detail)
    SELECT $2::uuid, trace_id, $7::text, $8::int, $9::text, 'settle', $3::numeric, $4::int, $5::int, $6::int,
           current_cost_usd, budget_limit_usd, $10::jsonb
    FROM spend
    UNION ALL
    SELECT $2, trace_id, $7, NULL, NULL, 'soft_cap', 0, 0, 0, 0, current_cost_usd, budget_limit_usd, '{}'::jsonb
    FROM spend
    WHERE current_cost_usd - $3::numeric < soft_cap_usd AND soft_cap_usd <= current_cost_usd
)"""


def settlement_args(
    settlement: Settlement | None,
    plan_id: uuid.UUID,
    atom_id: str,
    wave_index: int | None,
    model: str | None,
) -> tuple[object, ...]:
    """SETTLE_CTES' parameters; with no settlement (a cache hit reserved nothing) they change nothing."""
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
