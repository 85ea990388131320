"""/api/v2/precision: a Masterplan's precision score and what it is made of."""

from typing import Annotated, Final

from fastapi import APIRouter, Depends, HTTPException

from mge.adapters.store.acceptance import AcceptanceStore
from mge.adapters.store.store import Store
from mge.api.auth import READ, Plan, plan_access
from mge.api.auth import store as store_of
from mge.models.testing_api import IntegrationCheckView, PrecisionResponse

router = APIRouter(prefix="/api/v2/precision", tags=["precision"])

WEIGHTS: Final = {"spec": 50.0, "integration": 30.0, "validation": 20.0}


@router.get("/{masterplan_id}", response_model=PrecisionResponse)
async def precision(
    plan: Annotated[Plan, Depends(plan_access(READ))], store: Annotated[Store, Depends(store_of)]
) -> PrecisionResponse:
    """50% spec conformance + 30% integration checks + 20% validation; computed with Gate S."""
    plan_id = plan.id
    stored = await AcceptanceStore(store.pool).verdict(plan_id)
    if stored is None:
        raise HTTPException(
            409,
            f"the precision score of Masterplan {plan_id} is not computed yet: it comes with Gate S once every "
            "wave's acceptance tests have reported (GET /api/v2/testing/gate/{id} shows the progress)",
        )
    score = stored.precision
    return PrecisionResponse(
        masterplan_id=str(plan_id),
        score=score.score,
        spec=score.spec,
        integration=score.integration,
        validation=score.validation,
        weights=WEIGHTS,
        integration_checks=[
            IntegrationCheckView(name=c.name, passed=c.passed, detail=c.detail) for c in stored.integration
        ],
        gate_passed=stored.gate.passed,
        evaluated_at=stored.updated_at,
    )
