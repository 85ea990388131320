"""/api/v2/concurrency/status: executors' adaptive limits and queues, and the operator's replica decisions."""

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from mge.adapters.store.store import Store
from mge.models.concurrency_api import ConcurrencyStatus, ExecutorConcurrency, ScalingDecision

router = APIRouter(prefix="/api/v2/concurrency", tags=["concurrency"])


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


@router.get("/status", response_model=ConcurrencyStatus)
async def concurrency_status(store: Annotated[Store, Depends(_store)]) -> ConcurrencyStatus:
    executors, decisions = await store.concurrency_snapshot()
    views = [
        ExecutorConcurrency(
            executor=e["executor"],
            limit=e["llm_limit"],
            in_flight=e["in_flight"],
            queue_size=e["queue_size"],
            adjustments=e["adjustments"],
            updated_at=e["updated_at"],
        )
        for e in executors
    ]
    history = [ScalingDecision(**d) for d in decisions]
    return ConcurrencyStatus(
        global_limit=sum(v.limit for v in views),
        global_in_flight=sum(v.in_flight for v in views),
        queue_depth=sum(v.queue_size for v in views),
        executors=views,
        replicas=history[0] if history else None,
        recent_decisions=history,
    )
