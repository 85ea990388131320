"""Shared pydantic base for Kubernetes-facing models: camelCase on the wire, snake_case in Python."""

from typing import Final

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

API_GROUP: Final = "mge.devmatrix.io"
API_VERSION: Final = "v1alpha1"


class KubeModel(BaseModel):
    """Base for spec/status models: camelCase aliases, accepts either name, ignores unknown status keys."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def to_kube(self) -> dict[str, object]:
        """Serialise as the API server stores it: camelCase keys, no unset optional fields."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
