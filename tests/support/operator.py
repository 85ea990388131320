"""Runs the real operator (kopf + our handlers) in its own thread and event loop against the fake API."""

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import kmock
import kopf

from mge.adapters.kube import Kube, load_client_configuration
from mge.adapters.store.store import LazyStore
from mge.controller.deps import ControllerDeps
from mge.controller.runtime import run_operator, tune
from tests.support import yaml_files
from tests.support.kube_api import KubeAPI

REPO = Path(__file__).resolve().parents[2]


@contextlib.asynccontextmanager
async def fake_cluster() -> AsyncIterator[KubeAPI]:
    """The fake API server with the built-ins the operator touches and our CRDs from crds/."""
    api = KubeAPI()
    api.declare("", "v1", "namespaces", "Namespace", namespaced=False)
    api.declare("", "v1", "events", "Event")
    api.declare("", "v1", "configmaps", "ConfigMap")
    api.declare("", "v1", "secrets", "Secret")
    api.declare("events.k8s.io", "v1", "events", "Event")
    api.declare("apps", "v1", "deployments", "Deployment")
    api.declare("batch", "v1", "jobs", "Job")
    api.declare("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy")
    api.declare("", "v1", "pods", "Pod", subresources=frozenset({"status", "log"}))
    api.declare(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        namespaced=False,
    )
    for file in sorted((REPO / "crds").glob("*.yaml")):
        api.declare_crd(yaml_files.load(file))
    async with kmock.Server(api):
        yield api


def test_settings() -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    tune(settings)
    settings.watching.server_timeout = 10
    settings.watching.client_timeout = 15
    settings.queueing.idle_timeout = 0.1
    settings.queueing.error_delays = (0.5, 1, 2)
    return settings


@contextlib.asynccontextmanager
async def running_operator(
    api: KubeAPI,
    dsn: str,
    namespaces: list[str],
    *,
    progress_interval: float = 0.5,
    customize: Callable[[ControllerDeps], None] | None = None,
) -> AsyncIterator[None]:
    """The operator as deployed, but logged in to the fake API and with a short progress interval."""
    url = str(api.url)
    stop, ready = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    def serve() -> None:
        async def main() -> None:
            registry = kopf.OperatorRegistry()

            @kopf.on.login(registry=registry)
            def _login(**_: Any) -> kopf.ConnectionInfo:
                return kopf.ConnectionInfo(server=url, scheme="Bearer", token="test", insecure=True)

            deps = ControllerDeps(
                kube=Kube(load_client_configuration(url)),
                store=LazyStore(dsn),
                retry_missing_source_s=0.5,
                retry_store_s=0.5,
            )
            if customize is not None:
                customize(deps)
            await run_operator(
                deps,
                namespaces,
                registry=registry,
                stop_flag=stop,
                ready_flag=ready,
                progress_interval=progress_interval,
                settings=test_settings(),
            )

        try:
            asyncio.run(main())
        except BaseException as error:  # surfaced in the test, not lost in the thread
            failure.append(error)
            ready.set()

    thread = threading.Thread(target=serve, name="operator", daemon=True)
    thread.start()
    await asyncio.to_thread(ready.wait, 30)
    if failure:
        raise failure[0]
    try:
        yield
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 30)
    if failure:
        raise failure[0]


async def eventually(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll until `check()` returns something truthy (or an awaitable of it); fail with the last value."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: Any = None
    while asyncio.get_running_loop().time() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s; last value: {last!r}")
