"""The documents a plan's spec.context names, from the ConfigMaps that hold them."""

from collections.abc import Mapping
from dataclasses import dataclass

from mge.models.masterplan import PlanContext


@dataclass(frozen=True, slots=True)
class ContextDocument:
    """A document to retrieve from: a ConfigMap key (`configmap/<name>/<key>`) or a generated file."""

    origin: str
    path: str
    body: str


class ContextSourceMissing(LookupError):
    """A ConfigMap (or one of its keys) that spec.context names does not exist."""

    def __init__(self, name: str, key: str | None) -> None:
        self.name, self.key = name, key
        what = f"ConfigMap {name!r}" if key is None else f"key {key!r} of ConfigMap {name!r}"
        super().__init__(
            f"spec.context.configMaps names {what}, which does not exist; create it "
            f"(kubectl create configmap {name} --from-file=<docs folder>) or remove it from spec.context"
        )


def context_documents(
    context: PlanContext, config_maps: Mapping[str, Mapping[str, str] | None]
) -> list[ContextDocument]:
    """Every named key of every named ConfigMap (`config_maps`: name -> data, None when it does not exist),
    in spec order; raises ContextSourceMissing for a missing one."""
    documents = []
    for source in context.config_maps:
        data = config_maps.get(source.name)
        if data is None:
            raise ContextSourceMissing(source.name, None)
        for key in source.keys if source.keys is not None else sorted(data):
            if key not in data:
                raise ContextSourceMissing(source.name, key)
            documents.append(ContextDocument(f"configmap/{source.name}/{key}", key, data[key]))
    return documents
