"""/api/v2/cost: a Masterplan's budget status, its audit trail, and audited overrides by approvers."""

import uuid
from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request

from mge.adapters.kube import Kube, KubeUnavailable
from mge.adapters.kube_auth import Caller, KubeAuth
from mge.adapters.store.ledger import CostLedger
from mge.adapters.store.store import Store
from mge.cost.caps import BudgetLimits, BudgetState, OverrideRejected, budget_state, check_override
from mge.models.cost_api import (
    BudgetStatus,
    CostEventsResponse,
    CostStatusResponse,
    OverrideRequest,
    OverrideResponse,
)

router = APIRouter(prefix="/api/v2/cost", tags=["cost"])

_STATUS = {
    BudgetState.WITHIN: BudgetStatus.OK,
    BudgetState.SOFT_CAP: BudgetStatus.SOFT_CAP_EXCEEDED,
    BudgetState.HARD_CAP: BudgetStatus.HARD_CAP_REACHED,
}


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


async def _identity(store: Store, masterplan_id: str) -> tuple[uuid.UUID, str, str]:
    try:
        plan_id = uuid.UUID(masterplan_id)
    except ValueError:
        raise HTTPException(
            422, f"masterplan_id must be a UUID (status.masterplanId), got {masterplan_id!r}"
        ) from None
    found = await store.identity(plan_id)
    if found is None:
        raise HTTPException(404, f"no Masterplan with id {masterplan_id}")
    return plan_id, *found


@router.get("/{masterplan_id}", response_model=CostStatusResponse)
async def cost_status(masterplan_id: str, store: Annotated[Store, Depends(_store)]) -> CostStatusResponse:
    """Spend, reservations, caps and the projection of one Masterplan."""
    plan_id, namespace, name = await _identity(store, masterplan_id)
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
    masterplan_id: str,
    store: Annotated[Store, Depends(_store)],
    after: Annotated[
        int, Query(ge=0, description="Return events after this id (the previous page's next_after).")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> CostEventsResponse:
    """The audit trail: reserve, settle, release, soft_cap, hard_cap, override, resume; oldest first."""
    plan_id, _, _ = await _identity(store, masterplan_id)
    events = await CostLedger(store.pool).events(plan_id, after_id=after, limit=limit)
    return CostEventsResponse(
        masterplan_id=str(plan_id),
        events=events,
        next_after=events[-1].id if len(events) == limit else None,
    )


async def _caller(request: Request, authorization: Annotated[str | None, Header()] = None) -> Caller:
    auth: KubeAuth | None = request.app.state.auth
    if auth is None:
        raise HTTPException(503, "overrides need the Kubernetes API (run `mge api` in the cluster)")
    if not authorization or not authorization.lower().startswith("bearer "):
        raise HTTPException(401, "send a Kubernetes bearer token: Authorization: Bearer <token>")
    caller = await auth.authenticate(authorization.split(" ", 1)[1].strip())
    if caller is None:
        raise HTTPException(401, "the bearer token was not accepted by the Kubernetes API (TokenReview)")
    return caller


@router.post("/{masterplan_id}/override", response_model=OverrideResponse)
async def approve_override(
    masterplan_id: str,
    body: OverrideRequest,
    request: Request,
    store: Annotated[Store, Depends(_store)],
    caller: Annotated[Caller, Depends(_caller)],
) -> OverrideResponse:
    """Raise (or lower) the budget as the caller; same rules as `kubectl patch` through the admission policy."""
    plan_id, namespace, name = await _identity(store, masterplan_id)
    auth: KubeAuth = request.app.state.auth
    if not await auth.can_approve_budget(caller, namespace, name):
        raise HTTPException(
            403,
            f"{caller.username} may not approve budgets: needs verb approve on masterplans/budget in {namespace}",
        )
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
    return OverrideResponse(
        masterplan_id=str(plan_id),
        new_budget_usd=body.limit_usd,
        approved_by=caller.username,
        detail=f"spec.budget.override of {namespace}/{name} set; the operator applies it and resumes the plan",
    )
