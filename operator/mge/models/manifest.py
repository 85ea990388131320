"""Reads Masterplan manifests (as `kubectl apply` would get them) into validated models."""

import difflib
import functools
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

import yaml
from pydantic import TypeAdapter, ValidationError

from mge.models.base import API_GROUP
from mge.models.crd import structural_schema
from mge.models.masterplan import (
    ATOM_ID_PATTERN,
    MAX_INLINE_ATOMS,
    PATH_PATTERN,
    PROJECT_PATH_PATTERN,
    TEXT_PATTERN,
    Atom,
    MasterplanSpec,
)

_ATOM_LIST = TypeAdapter(list[Atom])

# What the API server accepts as a Masterplan's name (a DNS-1123 subdomain); it also keeps the name a single,
# harmless path component where local runs use it (.mge/<name>, out/<name>).
MAX_NAME_LENGTH: Final = 253
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
# etcd refuses objects over 1.5 MiB, so the API server never stores a larger Masterplan.
MAX_MASTERPLAN_BYTES: Final = 1_572_864
# A local plan file may also carry its atomsFrom list: larger, but still bounded before it is parsed.
MAX_PLAN_FILE_BYTES: Final = 16 * 1024 * 1024
_METADATA_FIELDS: Final = [
    "name",
    "generateName",
    "namespace",
    "labels",
    "annotations",
    "finalizers",
    "ownerReferences",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
]
_MAX_REPORTED: Final = 10
# libyaml's parser is about ten times faster than the pure-Python one on large files.
YAML_LOADER: Final = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ManifestError(ValueError):
    """Bad user input, with the field path and what to do about it."""


def describe_validation_error(error: ValidationError, prefix: str) -> str:
    """One line per problem, each naming the field, what was given and what to write instead:
    `spec.budget.limitUSD: got '$5': write a plain number, e.g. 5`."""
    lines = []
    for problem in error.errors():
        path = ".".join(str(part) for part in (prefix, *problem["loc"]) if part != "")
        lines.append(f"{path}: {problem_text(problem)}")
    return "; ".join(lines)


# What a pattern means, for the patterns users meet (the raw regex says nothing to most of them).
_PATTERN_MEANINGS: Final = {
    ATOM_ID_PATTERN: "use 1-128 letters, digits, '_', '.' or '-' (no spaces), starting and ending with a "
    "letter or digit, e.g. 'api-client'",
    TEXT_PATTERN: "remove the control characters (only tabs and line breaks are allowed)",
    PATH_PATTERN: "remove the control characters from the path",
    PROJECT_PATH_PATTERN: "write a relative path inside the project, with no control characters",
}


def _given(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def problem_text(problem: Any) -> str:
    """pydantic's message rewritten for a user: no class names, no regexes, no "Value error," prefix."""
    kind, given, ctx = problem["type"], problem.get("input"), problem.get("ctx") or {}
    message = str(problem["msg"])
    if kind == "missing":
        return "required: add it"
    if kind in ("float_parsing", "decimal_parsing", "int_parsing", "float_type", "int_type", "decimal_type"):
        digits = "".join(c for c in str(given) if c.isdigit() or c == ".") if isinstance(given, str) else ""
        example = digits.strip(".") or "5"
        return f"got {_given(given)}: write a plain number, e.g. {example}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"got {_given(given)} ({_kind_of(given)}): write its fields under it as a mapping (key: value)"
    if kind == "list_type":
        return f"got {_given(given)} ({_kind_of(given)}): write a list (one '- item' per line)"
    if kind == "string_type":
        return f"got {_given(given)} ({_kind_of(given)}): write a string (quote it in YAML)"
    if kind == "string_pattern_mismatch":
        meaning = _PATTERN_MEANINGS.get(str(ctx.get("pattern")), f"match the pattern {ctx.get('pattern')}")
        return f"got {_given(given)}: {meaning}"
    if kind in ("enum", "literal_error"):
        return f"got {_given(given)}: use one of {ctx.get('expected', '')}"
    if kind == "extra_forbidden":
        return "unknown field: remove it"
    if kind == "value_error":
        return message.removeprefix("Value error, ")
    if message.startswith("Input should be "):
        return f"must be {message.removeprefix('Input should be ')}, got {_given(given)}"
    if message.startswith("String should have "):
        return f"must have {message.removeprefix('String should have ')}, got {len(str(given))} characters"
    if message.startswith("List should have "):
        count = len(given) if isinstance(given, list) else "?"
        return f"must have {message.removeprefix('List should have ')}, got {count}"
    return message


def masterplan_count_problem(documents: Iterable[Mapping[str, Any]]) -> str:
    """Why a file does not hold exactly one Masterplan, naming the kinds it does hold."""
    kinds = [str(d.get("kind")) for d in documents]
    found = sum(1 for kind in kinds if kind == "Masterplan")
    if found > 1:
        return f"holds {found} Masterplan documents; put each in its own file"
    near = [kind for kind in kinds if kind.lower() == "masterplan"]
    if near:
        return f"kind {near[0]!r} is not a kind; kinds are case-sensitive: write 'kind: Masterplan'"
    listed = ", ".join(repr(kind) for kind in kinds) if kinds else "no documents"
    return f"holds no Masterplan document (found {listed}); add one with 'kind: Masterplan'"


def check_name(name: object) -> str:
    """A Masterplan name as the API server requires it; raises ManifestError saying what is wrong."""
    if not isinstance(name, str):
        raise ManifestError(f"metadata.name: must be a string, got {name!r} (quote it in YAML)")
    if not name:
        raise ManifestError("metadata.name: required")
    if len(name) > MAX_NAME_LENGTH or not _NAME.fullmatch(name):
        raise ManifestError(
            f"metadata.name: {name[:80]!r} is not a valid name: use at most {MAX_NAME_LENGTH} lowercase letters, "
            "digits, '-' and '.', starting and ending with a letter or digit (e.g. 'hello-api')"
        )
    return name


def unknown_fields(value: Any, schema: Mapping[str, Any], path: str) -> list[str]:
    """Fields the CRD schema does not declare, each with the closest declared name as a hint.

    The API server refuses them under strict field validation (kubectl's default); local runs must not
    silently drop a typo such as `dependOn` either.
    """
    found: list[str] = []
    stack: list[tuple[Any, Mapping[str, Any], str]] = [(value, schema, path)]
    while stack and len(found) < _MAX_REPORTED:
        node, node_schema, node_path = stack.pop()
        properties = node_schema.get("properties")
        if isinstance(node, dict) and properties is not None:
            for key in node:
                field = f"{node_path}.{key}" if node_path else str(key)
                if key in properties:
                    stack.append((node[key], properties[key], field))
                    continue
                close = difflib.get_close_matches(str(key), list(properties), n=1)
                hint = (
                    f"; did you mean {close[0]!r}?" if close else f"; known fields: {', '.join(properties)}"
                )
                found.append(f"{field}: unknown field{hint}")
        elif isinstance(node, list) and "items" in node_schema:
            stack.extend((item, node_schema["items"], f"{node_path}.{i}") for i, item in enumerate(node))
    return sorted(found)


@functools.cache
def _spec_schema() -> dict[str, Any]:
    return structural_schema(MasterplanSpec)


def _document_schema() -> dict[str, Any]:
    return {
        "properties": {
            "apiVersion": {},
            "kind": {},
            "metadata": {"properties": {field: {} for field in _METADATA_FIELDS}},
            "spec": _spec_schema(),
            "status": {},
        }
    }


def _refuse_unknown(value: Any, schema: Mapping[str, Any], path: str) -> None:
    problems = unknown_fields(value, schema, path)
    if problems:
        raise ManifestError("; ".join(problems))


def parse_masterplan(document: Mapping[str, Any]) -> tuple[str, MasterplanSpec]:
    """Name and spec of a Masterplan manifest; raises ManifestError naming the field."""
    if document.get("kind") != "Masterplan" or not str(document.get("apiVersion", "")).startswith(
        f"{API_GROUP}/"
    ):
        raise ManifestError(f"expected kind: Masterplan with apiVersion: {API_GROUP}/v1alpha1")
    name = check_name((document.get("metadata") or {}).get("name"))
    spec = document.get("spec") or {}
    atoms = spec.get("atoms") if isinstance(spec, dict) else None
    # Counted before anything else looks at them: validating a huge list only to refuse it wastes minutes.
    if isinstance(atoms, list) and len(atoms) > MAX_INLINE_ATOMS:
        raise ManifestError(
            f"spec.atoms: {len(atoms)} atoms inline, at most {MAX_INLINE_ATOMS}; "
            "move them to a ConfigMap and use spec.atomsFrom"
        )
    _refuse_unknown(dict(document), _document_schema(), "")
    try:
        return name, MasterplanSpec.model_validate(spec)
    except ValidationError as error:
        raise ManifestError(describe_validation_error(error, "spec")) from None


def parse_atom_list(text: str, source: str) -> list[Atom]:
    """Atoms stored as a YAML/JSON list (the atomsFrom ConfigMap key)."""
    try:
        documents = load_yaml(text, source)
    except yaml.YAMLError as error:
        raise ManifestError(f"{source}: not valid YAML/JSON: {error}") from None
    if len(documents) > 1:
        raise ManifestError(f"{source}: expected one YAML list of atoms, found {len(documents)} documents")
    atoms = documents[0] if documents else None
    if atoms is not None and not isinstance(atoms, list):
        raise ManifestError(f"{source}: expected a YAML list of atoms, got {type(atoms).__name__}")
    _refuse_unknown(atoms or [], _spec_schema()["properties"]["atoms"], source)
    try:
        return _ATOM_LIST.validate_python(atoms or [])
    except ValidationError as error:
        raise ManifestError(describe_validation_error(error, source)) from None


def load_yaml(text: str, source: str, max_bytes: int = MAX_PLAN_FILE_BYTES) -> list[Any]:
    """YAML documents, refused by size before parsing and by expanded size after (aliases included)."""
    if len(text) > max_bytes or len(text.encode()) > max_bytes:
        raise ManifestError(f"{source}: larger than {max_bytes:,} bytes; split the plan")
    try:
        documents = list(yaml.load_all(text, Loader=YAML_LOADER))
    except RecursionError:
        raise ManifestError(f"{source}: nested too deeply") from None
    for document in documents:
        if expanded_size(document, max_bytes) > max_bytes:
            raise ManifestError(
                f"{source}: expands to more than {max_bytes:,} bytes once YAML aliases (*name) are "
                "resolved; write the values out or shorten them"
            )
    return documents


def expanded_size(value: Any, limit: int) -> int:
    """About the JSON size of `value` with every alias written out; stops counting past `limit`.

    Aliased nodes are the same Python object, so each is measured once; a self-referencing alias counts as
    unbounded (no JSON can express it).
    """
    sizes: dict[int, int] = {}
    total_guard = limit + 1
    stack: list[tuple[Any, bool]] = [(value, False)]
    open_nodes: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if isinstance(node, (dict, list)):
            if key in sizes and not children_done:
                continue
            children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
            if not children_done:
                if key in open_nodes:
                    return total_guard
                open_nodes.add(key)
                stack.append((node, True))
                stack.extend((child, False) for child in children if isinstance(child, (dict, list)))
                continue
            open_nodes.discard(key)
            size = 2 + sum(
                sizes[id(child)] if isinstance(child, (dict, list)) else _scalar_size(child) + 1
                for child in children
            )
            sizes[key] = min(size, total_guard)
            if sizes[key] > limit:
                return total_guard
        elif not children_done:
            continue
    return sizes.get(id(value), _scalar_size(value))


def _scalar_size(value: Any) -> int:
    return len(value) + 2 if isinstance(value, (str, bytes)) else 8


_DOCUMENT_START: Final = re.compile(r"^---(?=\s|$)", re.MULTILINE)
_MASTERPLAN_KIND: Final = re.compile(r"^kind:[ \t]*['\"]?Masterplan['\"]?[ \t]*$", re.MULTILINE)


def load_documents(text: str, source: str = "manifest") -> list[dict[str, Any]]:
    """The mapping documents of a manifest file; a Masterplan too large for the API server is refused unparsed."""
    for chunk in _DOCUMENT_START.split(text):
        big = len(chunk) > MAX_MASTERPLAN_BYTES // 4 and len(chunk.encode()) > MAX_MASTERPLAN_BYTES
        if big and _MASTERPLAN_KIND.search(chunk):
            raise ManifestError(masterplan_too_large(source))
    return [doc for doc in load_yaml(text, source) if isinstance(doc, dict)]


def masterplan_too_large(source: str) -> str:
    return (
        f"{source}: the Masterplan is larger than {MAX_MASTERPLAN_BYTES:,} bytes, more than the API server "
        "can store; move the atoms to a ConfigMap (spec.atomsFrom)"
    )


def find_config_map_value(documents: Iterable[Mapping[str, Any]], name: str, key: str) -> str | None:
    """A ConfigMap key from manifests shipped alongside the Masterplan (local mode's stand-in for the cluster)."""
    for doc in documents:
        if doc.get("kind") == "ConfigMap" and (doc.get("metadata") or {}).get("name") == name:
            value = (doc.get("data") or {}).get(key)
            return str(value) if value is not None else None
    return None
