"""Where and how big the pods the operator creates are: placement and resources from the chart's values."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class _PodFields(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class LocalObjectReference(_PodFields):
    name: str = Field(min_length=1)


class PodPlacement(_PodFields):
    """Pod-spec fields copied onto every pod the operator creates (executors, acceptance Jobs): the same
    `imagePullSecrets`, `nodeSelector`, `tolerations`, `affinity` and `priorityClassName` as the operator's
    own pod, so an image in a private registry or a dedicated node pool works for all of them."""

    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    affinity: dict[str, Any] = Field(default_factory=dict)
    priority_class_name: str = ""

    def pod_fields(self) -> dict[str, Any]:
        """The fields to add to a pod spec; none of the empty ones (they would only add noise to a diff)."""
        return self.model_dump(by_alias=True, exclude_defaults=True)


class ContainerResources(_PodFields):
    requests: dict[str, str] = Field(default_factory=dict)
    limits: dict[str, str] = Field(default_factory=dict)

    def container_field(self) -> dict[str, dict[str, str]]:
        return self.model_dump(exclude_defaults=True)


EXECUTOR_RESOURCES = ContainerResources(requests={"cpu": "100m", "memory": "256Mi"}, limits={"memory": "1Gi"})
