"""Builds the CustomResourceDefinitions from the pydantic models (structural OpenAPI v3 schemas)."""

from typing import Any, Final

from pydantic import BaseModel

from mge.models.base import API_GROUP, API_VERSION
from mge.models.masterplan import MasterplanSpec, MasterplanStatus
from mge.models.wave import WaveSpec, WaveStatus

# Keys the API server rejects or that carry no meaning in a structural schema (a boolean
# additionalProperties, from models that forbid extra fields; a map's value schema is kept, or the API
# server would prune the map's entries).
_DROPPED_KEYS: Final = frozenset({"title", "$defs"})


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """Inline $refs and rewrite JSON Schema 2020-12 idioms into what apiextensions/v1 accepts."""
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        # A field's description wins over the referenced model's docstring.
        return _resolve(merged, defs)
    any_of = node.get("anyOf")
    if any_of is not None and any(branch == {"type": "null"} for branch in any_of):
        rest = [branch for branch in any_of if branch != {"type": "null"}]
        if len(rest) != 1:
            raise ValueError(f"cannot express a nullable union of {len(rest)} types in a CRD: {node}")
        # Optional means "may be omitted" here; the operator never writes null, so no `nullable`.
        merged = {**rest[0], **{k: v for k, v in node.items() if k != "anyOf"}}
        if merged.get("default", "absent") is None:
            del merged["default"]
        return _resolve(merged, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS or (key == "additionalProperties" and isinstance(value, bool)):
            continue
        if key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "properties":
            out[key] = {name: _resolve(schema, defs) for name, schema in value.items()}
        elif key == "default":
            out[key] = _strip_nulls(value)
        else:
            out[key] = _resolve(value, defs)
    return out


def _strip_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_nulls(v) for k, v in value.items() if v is not None}
    return value


def _with_nested_defaults(node: dict[str, Any], value: Any) -> Any:
    """`value` with the defaults of the fields it omits filled in, the way the API server defaults an object."""
    if not isinstance(value, dict):
        return value
    filled = dict(value)
    for name, child in node.get("properties", {}).items():
        if name not in filled and "default" in child:
            filled[name] = child["default"]
        if name in filled:
            filled[name] = _with_nested_defaults(child, filled[name])
    return filled


def _complete_defaults(node: Any) -> None:
    """Write object defaults out in full: at CRD creation the API server checks a default, and evaluates its
    node's CEL rules on it, as written (nested defaults are not applied first), so `{}` fails a rule such as
    `self.softCapPercent <= self.hardCapPercent`."""
    if not isinstance(node, dict):
        return
    for child in node.get("properties", {}).values():
        _complete_defaults(child)
    _complete_defaults(node.get("items"))
    if "default" in node:
        node["default"] = _with_nested_defaults(node, node["default"])


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema as a CRD-ready OpenAPI v3 schema."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    schema = dict(_resolve(raw, raw.get("$defs", {})))
    _complete_defaults(schema)
    return schema


def _column(name: str, type_: str, path: str, description: str, priority: int = 0) -> dict[str, Any]:
    column: dict[str, Any] = {"name": name, "type": type_, "jsonPath": path, "description": description}
    if priority:
        column["priority"] = priority
    return column


def _crd(
    *,
    kind: str,
    plural: str,
    short_names: list[str],
    spec: type[BaseModel],
    status: type[BaseModel],
    description: str,
    columns: list[dict[str, Any]],
) -> dict[str, Any]:
    status_schema = structural_schema(status)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{API_GROUP}",
            "labels": {"app.kubernetes.io/part-of": "mge-operator"},
        },
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
                "categories": ["mge"],
            },
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        *columns,
                        _column("Age", "date", ".metadata.creationTimestamp", "Time since creation."),
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": description,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": structural_schema(spec),
                                "status": {**status_schema, "description": f"Observed state of the {kind}."},
                            },
                        }
                    },
                }
            ],
        },
    }


def masterplan_crd() -> dict[str, Any]:
    return _crd(
        kind="Masterplan",
        plural="masterplans",
        short_names=["mp"],
        spec=MasterplanSpec,
        status=MasterplanStatus,
        description="An AI code-generation plan: atoms with dependencies, run in waves under a budget "
        "and a quality gate.",
        columns=[
            _column("Phase", "string", ".status.phase", "Summary of the conditions."),
            _column("Progress", "string", ".status.progress", "Succeeded atoms over total."),
            _column("Cost", "number", ".status.cost.currentUSD", "Settled spend in USD."),
            _column("Budget", "number", ".status.cost.limitUSD", "Effective budget in USD."),
            _column("Gate", "string", ".status.gate.status", "Gate S: Pending, Passed, Failed or Disabled."),
            _column("Precision", "number", ".status.precision.score", "Precision score, 0-100."),
            _column("Model", "string", ".spec.model", "LLM model.", priority=1),
            _column("Trace", "string", ".status.traceId", "trace_id of the run.", priority=1),
        ],
    )


def wave_crd() -> dict[str, Any]:
    return _crd(
        kind="Wave",
        plural="waves",
        short_names=["wv"],
        spec=WaveSpec,
        status=WaveStatus,
        description="One topological level of a Masterplan's atoms; the reporting and acceptance-test unit.",
        columns=[
            _column("Masterplan", "string", ".spec.masterplan", "Owning Masterplan."),
            _column("Index", "integer", ".spec.index", "Topological level."),
            _column("Atoms", "integer", ".status.atoms.total", "Atoms in this wave."),
            _column("Succeeded", "integer", ".status.atoms.succeeded", "Atoms that succeeded."),
            _column("Phase", "string", ".status.phase", "Pending, Running, Succeeded or Failed."),
            _column("Cost", "number", ".status.costUSD", "Settled spend in USD."),
        ],
    )


def all_crds() -> dict[str, dict[str, Any]]:
    """File name -> CRD manifest, for `mge crds`."""
    return {f"{crd['metadata']['name']}.yaml": crd for crd in (masterplan_crd(), wave_crd())}
