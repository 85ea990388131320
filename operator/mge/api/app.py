"""The FastAPI application: routers, health, Prometheus metrics, Postgres pool lifecycle."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import make_asgi_app

from mge import __version__
from mge.adapters.cache import connect_redis
from mge.adapters.kube import Kube
from mge.adapters.kube_auth import KubeAuth
from mge.adapters.store.store import Store
from mge.api import admin_cache, concurrency, cost, precision, testing


def create_app(dsn: str, kube: Kube | None = None, redis_url: str = "") -> FastAPI:
    """`kube` enables overrides (TokenReview, SubjectAccessReview, patching the Masterplan); `redis_url` the
    cache admin route."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.store = await Store.connect(dsn)
        app.state.cache_redis = connect_redis(redis_url, socket_timeout_s=5.0) if redis_url else None
        try:
            yield
        finally:
            await app.state.store.close()
            if app.state.cache_redis is not None:
                await app.state.cache_redis.aclose()

    app = FastAPI(title="MGE API", version=__version__, lifespan=lifespan)
    app.state.kube = kube
    app.state.auth = KubeAuth(kube.api_client) if kube is not None else None
    app.include_router(cost.router)
    app.include_router(concurrency.router)
    app.include_router(admin_cache.router)
    app.include_router(testing.router)
    app.include_router(precision.router)
    app.mount("/metrics", make_asgi_app())

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
