"""An HTTP client on the REST API app (real Postgres) whose caller the fake Kubernetes API authenticates."""

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

import httpx

from mge.adapters.kube import Kube, load_client_configuration
from mge.api.app import create_app
from tests.support.operator import fake_cluster


@asynccontextmanager
async def api_client(
    dsn: str, grants: Iterable[tuple[str | None, str, str]], redis_url: str = ""
) -> AsyncIterator[httpx.AsyncClient]:
    """Requests go as user `tester`, holding `grants` ((namespace or None, resource[/subresource], verb));
    `client.cluster` is the fake API server (tests/support/kube_api.py), which answers the reviews."""
    async with fake_cluster() as cluster:
        cluster.tokens = {"tester-token": ("tester", ["testers"])}
        cluster.grants = {("tester", *grant) for grant in grants}
        kube = Kube(load_client_configuration(str(cluster.url)))
        app = create_app(dsn, kube, redis_url)
        try:
            async with (
                app.router.lifespan_context(app),
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app),
                    base_url="http://api",
                    headers={"Authorization": "Bearer tester-token"},
                ) as client,
            ):
                client.cluster = cluster  # type: ignore[attr-defined]
                yield client
        finally:
            kube.close()
