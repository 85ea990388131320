"""/api/v2/concurrency/status: executors' adaptive limits and queues, and the operator's replica decisions."""

from typing import Annotated

from fastapi import APIRouter, Depends

from mge.adapters.kube_auth import Caller
from mge.adapters.store.store import Store
from mge.api.auth import LIST, cluster_access
from mge.api.auth import store as store_of
from mge.models.concurrency_api import ConcurrencyStatus

router = APIRouter(prefix="/api/v2/concurrency", tags=["concurrency"])


@router.get("/status", response_model=ConcurrencyStatus)
async def concurrency_status(
    _: Annotated[Caller, Depends(cluster_access(LIST))], store: Annotated[Store, Depends(store_of)]
) -> ConcurrencyStatus:
    """Fleet-wide (every plan's ramp, every executor): needs verb list on masterplans in every namespace."""
    executors, decisions = await store.concurrency_snapshot()
    return ConcurrencyStatus(
        global_limit=sum(e.limit for e in executors),
        global_in_flight=sum(e.in_flight for e in executors),
        queue_depth=sum(e.queue_size for e in executors),
        executors=executors,
        replicas=decisions[0] if decisions else None,
        recent_decisions=decisions,
        signals=await store.scaling_signals(),
        ramps=await store.plan_ramps(),
    )
