"""Wave handlers: initialise a Wave's status from its spec when it appears or the operator restarts."""

from typing import Any

import kopf

from mge.controller.deps import deps_of
from mge.models.base import API_GROUP, API_VERSION
from mge.models.wave import WaveSpec, WaveStatus
from mge.plan.status import decide_wave_status, status_patch


async def reconcile_wave(
    spec: kopf.Spec,
    status: kopf.Status,
    meta: kopf.Meta,
    patch: kopf.Patch,
    memo: Any,
    **_: Any,
) -> None:
    deps = deps_of(memo)
    desired = decide_wave_status(
        WaveSpec.model_validate(dict(spec)),
        WaveStatus.model_validate(dict(status)),
        int(meta.get("generation") or 0),
        deps.now(),
    )
    changes = status_patch(dict(status), desired)
    if changes:
        patch.setdefault("status", {}).update(changes)


def register(registry: kopf.OperatorRegistry) -> None:
    for decorator in (kopf.on.create, kopf.on.update, kopf.on.resume):
        decorator(API_GROUP, API_VERSION, "waves", registry=registry, id="reconcile")(reconcile_wave)
