"""POST /admin/cache/invalidate: drop prompt/RAG cache entries by Masterplan, model or all (an admin route, not /api/v2)."""

import logging
from typing import Annotated

import redis.asyncio as aioredis
from fastapi import APIRouter, Depends, HTTPException, Request

from mge.adapters.cache import CacheUnavailable, LLMPromptCache, invalidate_all
from mge.adapters.kube_auth import Caller
from mge.adapters.store.store import Store
from mge.api.auth import INVALIDATE_CACHE, caller, identity, require
from mge.api.auth import store as store_of
from mge.models.cache_api import CacheInvalidateRequest, CacheInvalidateResponse

router = APIRouter(prefix="/admin/cache", tags=["admin"])
log = logging.getLogger("mge.api.cache")


def _redis(request: Request) -> aioredis.Redis:
    client: aioredis.Redis | None = getattr(request.app.state, "cache_redis", None)
    if client is None:
        raise HTTPException(503, "no cache configured: set MGE_REDIS_URL for `mge api`")
    return client


@router.post("/invalidate", response_model=CacheInvalidateResponse)
async def invalidate(
    request: Request,
    who: Annotated[Caller, Depends(caller)],
    body: CacheInvalidateRequest,
    store: Annotated[Store, Depends(store_of)],
) -> CacheInvalidateResponse:
    """Needs verb `delete` on `masterplans/cache`: in the plan's namespace for one plan, cluster-wide otherwise."""
    namespace: str | None = None
    if body.masterplan_id is not None:
        namespace = (await identity(store, body.masterplan_id)).namespace
    await require(request, who, INVALIDATE_CACHE, namespace)
    client = _redis(request)
    cache = LLMPromptCache(client)
    try:
        if body.masterplan_id is not None:
            scope, llm, rag = (
                f"masterplan {body.masterplan_id}",
                await cache.invalidate_masterplan(body.masterplan_id),
                0,
            )
        elif body.model is not None:
            scope, llm, rag = f"model {body.model}", await cache.invalidate_model(body.model), 0
        else:
            removed = await invalidate_all(client)
            scope, llm, rag = "all", removed["llm"], removed["rag"]
    except CacheUnavailable as error:
        raise HTTPException(503, str(error)) from None
    log.info("cache invalidated by %s: %s (%d prompt, %d RAG entries)", who.username, scope, llm, rag)
    return CacheInvalidateResponse(
        scope=scope, removed_llm_entries=llm, removed_rag_entries=rag, requested_by=who.username
    )
