"""Events about a Masterplan, annotated with its trace_id so `kubectl get events -o yaml` leads to the trace."""

import logging
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from mge.adapters.kube import TRACE_ANNOTATION, Kube, KubeUnavailable

log = logging.getLogger(__name__)


async def post_plan_event(
    kube: Kube,
    body: kopf.Body | dict[str, Any],
    *,
    type_: str,
    reason: str,
    message: str,
    trace_id: str | None,
) -> None:
    """A failure to post is logged and never fails the reconcile (Events are best effort, as in kopf)."""
    involved = {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"), "metadata": body["metadata"]}
    try:
        await kube.post_event(
            body["metadata"]["namespace"],
            involved,
            reason=reason,
            message=message,
            type_=type_,
            annotations={TRACE_ANNOTATION: trace_id} if trace_id else None,
        )
    except (KubeUnavailable, ApiException) as error:
        log.warning("event %s not posted: %s", reason, error)
