"""Where and how big the pods the operator creates are: placement and resources from the chart's values."""

from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class _PodFields(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class LocalObjectReference(_PodFields):
    name: str = Field(min_length=1)


# The operator's own uid in the image; a pod security context without runAsUser leaves it to the platform
# (OpenShift's restricted SCC assigns one per namespace).
IMAGE_UID: Final = 10001
RESTRICTED_POD_SECURITY: Final[dict[str, Any]] = {
    "runAsNonRoot": True,
    "runAsUser": IMAGE_UID,
    "runAsGroup": IMAGE_UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}


class PodPlacement(_PodFields):
    """Pod-spec fields copied onto every pod the operator creates (executors, acceptance Jobs): the same
    `imagePullSecrets`, `nodeSelector`, `tolerations`, `affinity`, pod `securityContext` and
    `priorityClassName` as the operator's own pod, so an image in a private registry, a dedicated node pool
    or a platform that assigns its own uids works for all of them. `topologySpreadConstraints` apply to
    executor pods only (acceptance Jobs are one pod each)."""

    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    affinity: dict[str, Any] = Field(default_factory=dict)
    priority_class_name: str = ""
    topology_spread_constraints: list[dict[str, Any]] = Field(default_factory=list)
    security_context: dict[str, Any] = Field(default_factory=lambda: dict(RESTRICTED_POD_SECURITY))
    # Pod metadata (cost-allocation labels, a mesh's annotations); the operator's own labels win.
    pod_labels: dict[str, str] = Field(default_factory=dict)
    pod_annotations: dict[str, str] = Field(default_factory=dict)

    def pod_fields(self, *, spread: bool = True) -> dict[str, Any]:
        """The fields to add to a pod spec; none of the empty ones (they would only add noise to a diff).

        The pod stays non-root with the RuntimeDefault seccomp profile whatever the values say: these pods
        run generated code.
        """
        fields = self.model_dump(
            by_alias=True,
            exclude_defaults=True,
            exclude={"security_context", "pod_labels", "pod_annotations"},
        )
        if not spread:
            fields.pop("topologySpreadConstraints", None)
        fields["securityContext"] = {
            **self.security_context,
            "runAsNonRoot": True,
            "seccompProfile": self.security_context.get("seccompProfile") or {"type": "RuntimeDefault"},
        }
        return fields


class ContainerResources(_PodFields):
    requests: dict[str, str] = Field(default_factory=dict)
    limits: dict[str, str] = Field(default_factory=dict)

    def container_field(self) -> dict[str, dict[str, str]]:
        return self.model_dump(exclude_defaults=True)


class ContainerExtras(_PodFields):
    """The chart's `extraEnv`, `extraVolumes` and `extraVolumeMounts`, which executors need as much as the
    operator (an HTTPS_PROXY or a CA bundle for a private LLM endpoint): executors are what call the LLM."""

    env: list[dict[str, Any]] = Field(default_factory=list)
    volumes: list[dict[str, Any]] = Field(default_factory=list)
    volume_mounts: list[dict[str, Any]] = Field(default_factory=list)


EXECUTOR_RESOURCES = ContainerResources(requests={"cpu": "100m", "memory": "256Mi"}, limits={"memory": "1Gi"})
