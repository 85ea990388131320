"""Request and response bodies of the /api/v2/cost endpoints."""

from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class BudgetStatus(StrEnum):
    OK = "ok"
    SOFT_CAP_EXCEEDED = "soft_cap_exceeded"
    HARD_CAP_REACHED = "hard_cap_reached"


class CostStatusResponse(BaseModel):
    masterplan_id: str
    namespace: str
    name: str
    current_cost_usd: Decimal = Field(description="Settled spend.")
    reserved_cost_usd: Decimal = Field(description="Reserved by LLM calls in flight.")
    budget_limit_usd: Decimal = Field(description="Effective budget (override included).")
    soft_cap_usd: Decimal
    hard_cap_usd: Decimal
    utilization_percentage: Decimal
    status: BudgetStatus
    predicted_remaining_cost_usd: Decimal | None = Field(
        description="Atoms left x mean cost of finished atoms; null until an atom finished."
    )
    projected_total_cost_usd: Decimal | None
    will_exceed_budget: bool | None
    budget_override_approved_by: str | None


class CostEventView(BaseModel):
    id: int
    kind: str
    atom_id: str | None
    amount_usd: Decimal
    cumulative_cost_usd: Decimal
    budget_limit_usd: Decimal
    prompt_tokens: int
    completion_tokens: int
    detail: dict[str, Any]
    created_at: datetime


class CostEventsResponse(BaseModel):
    masterplan_id: str
    events: list[CostEventView]
    next_after: int | None = Field(description="Pass as ?after= to get the next page; null on the last page.")


class OverrideRequest(BaseModel):
    limit_usd: Decimal = Field(gt=0, le=1_000_000, description="The new budget in USD.")
    reason: str = Field(min_length=1, max_length=2000, description="Why; kept in the audit trail.")


class OverrideResponse(BaseModel):
    status: str = "approved"
    masterplan_id: str
    new_budget_usd: Decimal
    approved_by: str
    detail: str
