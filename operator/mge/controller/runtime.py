"""Runs the kopf operator: registers handlers, tunes kopf, serves the liveness probe."""

import asyncio
import hashlib
import json
import logging
import threading
from collections.abc import Coroutine, Iterable, Sequence
from typing import Any, cast

import kopf

from mge.controller import masterplan
from mge.controller.deps import ControllerDeps
from mge.models.base import API_GROUP


class SpecDigestDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's last-handled-configuration annotation with the spec as a digest instead of a full copy.

    A full copy of a spec with hundreds of inline atoms exceeds the API server's 256 KiB limit on an
    object's annotations, which refuses every write kopf makes to it (the plan would never be planned).
    Our handlers reconcile from the whole spec and never read kopf's field diff, so a digest is enough
    to tell that the spec changed.
    """

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[kopf.FieldSpec] | None = None
    ) -> kopf.BodyEssence:
        # The digest is taken before kopf copies the body: a deep copy of a large spec on every watch event
        # (each status write is one) was most of the operator's CPU with many live plans.
        raw = dict(body)
        if "spec" in raw:
            canonical = json.dumps(raw["spec"], sort_keys=True, separators=(",", ":"))
            raw["spec"] = {"sha256": hashlib.sha256(canonical.encode()).hexdigest()}
        if not extra_fields:
            raw.pop("status", None)  # never part of the essence without extra fields: not worth copying
        return super().build(body=kopf.Body(cast(kopf.RawBody, raw)), extra_fields=extra_fields)


def tune(settings: kopf.OperatorSettings) -> None:
    """Explicit kopf settings: our own annotation prefix, bounded watches, quick retries, events on."""
    settings.persistence.finalizer = f"{API_GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = SpecDigestDiffBaseStorage(
        prefix=API_GROUP, key="last-handled-configuration"
    )
    # Restart watches regularly so a silently dropped connection cannot stall reconciliation for long.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.queueing.error_delays = (1, 2, 5, 10, 30, 60)
    settings.posting.level = logging.INFO
    # One replica with Recreate rollout: no peering objects to manage (see docs/operations.md).
    settings.peering.standalone = True
    # Resolve our CRDs once at start-up instead of watching CRDs and namespaces cluster-wide: the chart
    # installs the CRDs before the operator, and this keeps the operator's RBAC namespace-scoped.
    settings.scanning.disabled = True


def build_registry(registry: kopf.OperatorRegistry | None = None) -> kopf.OperatorRegistry:
    """Our handlers on `registry`; by default one that logs in like kubectl (in-cluster or kubeconfig)."""
    if registry is None:
        registry = kopf.OperatorRegistry()
        # Same credentials as the kubernetes client: in-cluster service account, else kubeconfig.
        kopf.on.login(registry=registry)(kopf.login_via_client)
    masterplan.register(registry)
    return registry


async def run_operator(
    deps: ControllerDeps,
    namespaces: list[str],
    *,
    registry: kopf.OperatorRegistry | None = None,
    liveness_endpoint: str | None = None,
    stop_flag: asyncio.Event | threading.Event | None = None,
    ready_flag: asyncio.Event | threading.Event | None = None,
    background_tasks: Sequence[Coroutine[Any, Any, None]] = (),
    progress_interval: float = masterplan.PROGRESS_INTERVAL_SECONDS,
    settings: kopf.OperatorSettings | None = None,
) -> None:
    """Reconcile Masterplans and Waves in `namespaces` until stopped (SIGTERM/SIGINT or `stop_flag`)."""
    if settings is None:
        settings = kopf.OperatorSettings()
        tune(settings)
    background = [asyncio.create_task(task) for task in background_tasks]
    background.append(asyncio.create_task(masterplan.retire_missing_forever(deps, namespaces)))
    background.append(asyncio.create_task(masterplan.sync_progress_forever(deps, progress_interval)))
    background.append(asyncio.create_task(masterplan.sync_waves_forever(deps)))
    try:
        await kopf.operator(
            registry=build_registry(registry),
            settings=settings,
            namespaces=namespaces,
            standalone=True,
            memo=kopf.Memo(deps=deps),
            liveness_endpoint=liveness_endpoint,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await deps.store.close()
        deps.kube.close()
