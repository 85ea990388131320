"""/api/v2/testing: request test generation or a wave's re-run, read Gate S and the test results."""

import re
import uuid
from typing import Annotated, Final

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request

from mge.adapters.acceptance_job import job_name
from mge.adapters.kube_auth import Caller
from mge.adapters.store.acceptance import AcceptanceStore
from mge.adapters.store.store import Store
from mge.api.auth import GENERATE_TESTS, READ, RUN_TESTS, Plan, caller, identity, plan_access, require
from mge.api.auth import store as store_of
from mge.api.cost import MAX_ID
from mge.models.testing_api import (
    GateOutcome,
    GateResponse,
    GenerationRequested,
    TestResultsResponse,
    TestResultView,
    WaveRunRequested,
)

router = APIRouter(prefix="/api/v2/testing", tags=["testing"])

WAVE_ID: Final = re.compile(r"^(?P<plan>[0-9a-fA-F-]{36}):(?P<wave>[0-9]{1,6})$")


@router.post("/generate/{masterplan_id}", status_code=202, response_model=GenerationRequested)
async def generate(
    plan: Annotated[Plan, Depends(plan_access(GENERATE_TESTS))], store: Annotated[Store, Depends(store_of)]
) -> GenerationRequested:
    """(Re)generate the plan's acceptance tests from its requirements; an executor picks the request up.
    Paid LLM work: needs verb generate on masterplans/acceptance."""
    plan_id = plan.id
    accept = AcceptanceStore(store.pool)
    if await accept.generation_state(plan_id) == "running":
        raise HTTPException(
            409, f"tests of Masterplan {plan_id} are being generated right now; request again when that ends"
        )
    request = await accept.request_generation(plan_id)
    return GenerationRequested(
        masterplan_id=str(plan_id),
        request=request,
        detail="queued: an executor generates one test per requirement; re-run waves to execute the new tests",
    )


@router.post("/run/{wave_id}", status_code=202, response_model=WaveRunRequested)
async def run_wave(
    http: Request,
    who: Annotated[Caller, Depends(caller)],
    wave_id: Annotated[str, Path(max_length=100)],
    store: Annotated[Store, Depends(store_of)],
) -> WaveRunRequested:
    """Run one wave's tests again (wave_id = <masterplanId>:<wave index>); Gate S is decided anew after it.
    Needs verb run on masterplans/acceptance."""
    match = WAVE_ID.match(wave_id)
    if match is None:
        raise HTTPException(
            422, f"wave_id must be <masterplanId>:<wave index>, e.g. {uuid.UUID(int=0)}:2, got {wave_id!r}"
        )
    plan = await identity(store, match["plan"])
    await require(http, who, RUN_TESTS, plan.namespace, plan.name)
    plan_id, name = plan.id, plan.name
    wave = int(match["wave"])
    waves = {w.index: w for w in await store.wave_progress(plan_id)}
    if wave not in waves:
        raise HTTPException(
            404, f"Masterplan {plan_id} has waves 0-{len(waves) - 1}; there is no wave {wave}"
        )
    progress = waves[wave]
    if progress.succeeded < progress.total:
        raise HTTPException(
            409,
            f"wave {wave} has {progress.succeeded}/{progress.total} atoms succeeded; its tests run once all have",
        )
    accept = AcceptanceStore(store.pool)
    if wave != max(waves) and not await accept.tests(plan_id, wave):
        raise HTTPException(
            409, f"wave {wave} has no acceptance tests (each test runs after the wave it needs)"
        )
    request = await accept.request_wave_run(plan_id, wave)
    # The stored verdict no longer describes the plan; the operator decides Gate S again after this run.
    await accept.clear_verdict(plan_id)
    return WaveRunRequested(
        masterplan_id=str(plan_id),
        wave=wave,
        request=request,
        job=job_name(name, wave, request, plan_id),
        detail="queued: the operator runs the wave's tests in a new Job and then re-evaluates Gate S",
    )


@router.get("/gate/{masterplan_id}", response_model=GateResponse)
async def gate(
    plan: Annotated[Plan, Depends(plan_access(READ))], store: Annotated[Store, Depends(store_of)]
) -> GateResponse:
    """Gate S: 100% of MUST and at most floor(5% x n) SHOULD failures; pending until every wave reported."""
    plan_id = plan.id
    accept = AcceptanceStore(store.pool)
    not_generated = [n.requirement.id for n in await accept.not_generated(plan_id)]
    stored = await accept.verdict(plan_id)
    if stored is None:
        return GateResponse(
            masterplan_id=str(plan_id),
            status=GateOutcome.PENDING,
            must_pass_rate=None,
            should_pass_rate=None,
            failed_must=[],
            failed_should=[],
            should_failures_allowed=None,
            not_generated=not_generated,
            message="Gate S is decided when every wave's acceptance tests have reported",
            evaluated_at=None,
        )
    verdict = stored.gate
    return GateResponse(
        masterplan_id=str(plan_id),
        status=GateOutcome.PASSED if verdict.passed else GateOutcome.FAILED,
        must_pass_rate=verdict.must_pass_rate,
        should_pass_rate=verdict.should_pass_rate,
        failed_must=list(verdict.failed_must),
        failed_should=list(verdict.failed_should),
        should_failures_allowed=verdict.should_failures_allowed,
        not_generated=not_generated,
        message=verdict.message,
        evaluated_at=stored.updated_at,
    )


@router.get("/results/{masterplan_id}", response_model=TestResultsResponse)
async def results(
    plan: Annotated[Plan, Depends(plan_access(READ))],
    store: Annotated[Store, Depends(store_of)],
    after: Annotated[
        int, Query(ge=0, le=MAX_ID, description="Return results after this id (the previous next_after).")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> TestResultsResponse:
    """Every test run of the plan (re-runs included), oldest first."""
    plan_id = plan.id
    rows = await AcceptanceStore(store.pool).results(plan_id, limit=limit, after=after)
    views = [
        TestResultView(
            id=r.id,
            requirement_id=r.requirement_id,
            wave=r.wave,
            status=r.status.value,
            duration_s=r.duration_s,
            output=r.output,
            created_at=r.created_at,
        )
        for r in rows
    ]
    return TestResultsResponse(
        masterplan_id=str(plan_id), results=views, next_after=views[-1].id if len(views) == limit else None
    )
