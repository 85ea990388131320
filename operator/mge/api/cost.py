"""/api/v2/cost: a Masterplan's budget status, its audit trail, and audited overrides by approvers."""

from decimal import Decimal
from typing import Annotated, Final

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from kubernetes.client.exceptions import ApiException

from mge.adapters.kube import Kube, KubeUnavailable
from mge.adapters.kube_auth import Caller
from mge.adapters.store.ledger import CostLedger
from mge.adapters.store.store import Store
from mge.api import auth
from mge.api.auth import APPROVE_BUDGET, READ, Plan, plan_access
from mge.cost.caps import BudgetLimits, BudgetState, OverrideRejected, budget_state, check_override
from mge.models.cost_api import (
    BudgetStatus,
    CostEventsResponse,
    CostStatusResponse,
    OverrideRequest,
    OverrideResponse,
)

router = APIRouter(prefix="/api/v2/cost", tags=["cost"])

MAX_ID: Final = 2**63 - 1  # ids are Postgres bigints

_STATUS = {
    BudgetState.WITHIN: BudgetStatus.OK,
    BudgetState.SOFT_CAP: BudgetStatus.SOFT_CAP_EXCEEDED,
    BudgetState.HARD_CAP: BudgetStatus.HARD_CAP_REACHED,
}


@router.get("/{masterplan_id}", response_model=CostStatusResponse)
async def cost_status(
    plan: Annotated[Plan, Depends(plan_access(READ))], store: Annotated[Store, Depends(auth.store)]
) -> CostStatusResponse:
    """Spend, reservations, caps and the projection of one Masterplan (verb get on masterplans)."""
    plan_id, namespace, name = plan.id, plan.namespace, plan.name
    spend = await CostLedger(store.pool).spend(plan_id)
    progress = await store.progress(plan_id)
    limits = BudgetLimits(spend.limit_usd, spend.soft_cap_percent, spend.hard_cap_percent)
    finished = progress.succeeded + progress.failed
    remaining: Decimal | None = None
    if finished:
        remaining = spend.spent_usd / finished * (progress.total - finished)
    projected = spend.spent_usd + remaining if remaining is not None else None
    return CostStatusResponse(
        masterplan_id=str(plan_id),
        namespace=namespace,
        name=name,
        current_cost_usd=spend.spent_usd,
        reserved_cost_usd=spend.reserved_usd,
        budget_limit_usd=spend.limit_usd,
        soft_cap_usd=limits.soft_cap_usd,
        hard_cap_usd=limits.hard_cap_usd,
        utilization_percentage=(spend.spent_usd / spend.limit_usd * 100).quantize(Decimal("0.01")),
        status=_STATUS[budget_state(spend.spent_usd, spend.exhausted, limits)],
        predicted_remaining_cost_usd=remaining,
        projected_total_cost_usd=projected,
        will_exceed_budget=projected > spend.limit_usd if projected is not None else None,
        budget_override_approved_by=spend.override_by,
    )


@router.get("/{masterplan_id}/events", response_model=CostEventsResponse)
async def cost_events(
    plan: Annotated[Plan, Depends(plan_access(READ))],
    store: Annotated[Store, Depends(auth.store)],
    after: Annotated[
        int,
        Query(ge=0, le=MAX_ID, description="Return events after this id (the previous page's next_after)."),
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> CostEventsResponse:
    """The audit trail: reserve, settle, release, soft_cap, hard_cap, override, resume; oldest first."""
    plan_id = plan.id
    events = await CostLedger(store.pool).events(plan_id, after_id=after, limit=limit)
    return CostEventsResponse(
        masterplan_id=str(plan_id),
        events=events,
        next_after=events[-1].id if len(events) == limit else None,
    )


@router.post("/{masterplan_id}/override", response_model=OverrideResponse)
async def approve_override(
    body: OverrideRequest,
    request: Request,
    plan: Annotated[Plan, Depends(plan_access(APPROVE_BUDGET))],
    store: Annotated[Store, Depends(auth.store)],
    caller: Annotated[Caller, Depends(auth.caller)],
) -> OverrideResponse:
    """Raise (or lower) the budget as the caller (verb approve on masterplans/budget); same rules as
    `kubectl patch` through the admission policy."""
    plan_id, namespace, name = plan.id, plan.namespace, plan.name
    spend = await CostLedger(store.pool).spend(plan_id)
    try:
        check_override(body.limit_usd, spend.spent_usd, spend.reserved_usd)
    except OverrideRejected as error:
        raise HTTPException(400, str(error)) from None
    kube: Kube = request.app.state.kube
    override = {"limitUSD": float(body.limit_usd), "approvedBy": caller.username, "reason": body.reason}
    try:
        await kube.patch_masterplan_spec(namespace, name, {"budget": {"override": override}})
    except KubeUnavailable as error:
        raise HTTPException(503, str(error)) from None
    except ApiException as error:
        if error.status != 404:
            raise
        raise HTTPException(
            409,
            f"Masterplan {namespace}/{name} no longer exists in the cluster; there is nothing to override",
        ) from None
    return OverrideResponse(
        masterplan_id=str(plan_id),
        new_budget_usd=body.limit_usd,
        approved_by=caller.username,
        detail=f"spec.budget.override of {namespace}/{name} set; the operator applies it and resumes the plan",
    )
