"""Reads Masterplan manifests (as `kubectl apply` would get them) into validated models."""

from collections.abc import Iterable, Mapping
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from mge.models.base import API_GROUP
from mge.models.masterplan import Atom, MasterplanSpec

_ATOM_LIST = TypeAdapter(list[Atom])


class ManifestError(ValueError):
    """Bad user input, with the field path and what to do about it."""


def describe_validation_error(error: ValidationError, prefix: str) -> str:
    """One line per problem: `spec.budget.limitUSD: Input should be greater than 0`."""
    lines = []
    for problem in error.errors():
        path = ".".join(str(part) for part in (prefix, *problem["loc"]) if part != "")
        lines.append(f"{path}: {problem['msg']}")
    return "; ".join(lines)


def parse_masterplan(document: Mapping[str, Any]) -> tuple[str, MasterplanSpec]:
    """Name and spec of a Masterplan manifest; raises ManifestError naming the field."""
    if document.get("kind") != "Masterplan" or not str(document.get("apiVersion", "")).startswith(
        f"{API_GROUP}/"
    ):
        raise ManifestError(f"expected kind: Masterplan with apiVersion: {API_GROUP}/v1alpha1")
    name = (document.get("metadata") or {}).get("name")
    if not name:
        raise ManifestError("metadata.name: required")
    try:
        return str(name), MasterplanSpec.model_validate(document.get("spec") or {})
    except ValidationError as error:
        raise ManifestError(describe_validation_error(error, "spec")) from None


def parse_atom_list(text: str, source: str) -> list[Atom]:
    """Atoms stored as a YAML/JSON list (the atomsFrom ConfigMap key)."""
    try:
        return _ATOM_LIST.validate_python(yaml.safe_load(text) or [])
    except yaml.YAMLError as error:
        raise ManifestError(f"{source}: not valid YAML/JSON: {error}") from None
    except ValidationError as error:
        raise ManifestError(describe_validation_error(error, source)) from None


def load_documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if isinstance(doc, dict)]


def find_config_map_value(documents: Iterable[Mapping[str, Any]], name: str, key: str) -> str | None:
    """A ConfigMap key from manifests shipped alongside the Masterplan (local mode's stand-in for the cluster)."""
    for doc in documents:
        if doc.get("kind") == "ConfigMap" and (doc.get("metadata") or {}).get("name") == name:
            value = (doc.get("data") or {}).get(key)
            return str(value) if value is not None else None
    return None
