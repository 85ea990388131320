"""/api/v2/concurrency/status: executors' adaptive limits and queues, and the operator's replica decisions."""

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from mge.adapters.store.store import Store
from mge.models.concurrency_api import ConcurrencyStatus

router = APIRouter(prefix="/api/v2/concurrency", tags=["concurrency"])


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


@router.get("/status", response_model=ConcurrencyStatus)
async def concurrency_status(store: Annotated[Store, Depends(_store)]) -> ConcurrencyStatus:
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
