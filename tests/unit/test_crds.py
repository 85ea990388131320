"""CRDs generated from the models: structural, self-describing, CEL rules that mean what they say, no drift."""

import re
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import pytest
import yaml

from mge.cli import _render_crd
from mge.models.crd import all_crds, masterplan_crd, wave_crd

REPO = Path(__file__).resolve().parents[2]
CRD_FOLDERS = [REPO / "crds", REPO / "helm" / "mge-operator" / "crds"]


def _schema(crd: dict[str, Any]) -> dict[str, Any]:
    return dict(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        found.append((path, node))
        for name, child in node.get("properties", {}).items():
            found += _walk(child, f"{path}.{name}")
        if "items" in node:
            found += _walk(node["items"], f"{path}[]")
    return found


@pytest.mark.parametrize("crd", [masterplan_crd(), wave_crd()], ids=["masterplan", "wave"])
def test_schema_is_structural(crd):
    for path, node in _walk(_schema(crd)):
        assert "type" in node or path == ".metadata", f"{path} has no type"
        for banned in ("$ref", "$defs", "anyOf", "oneOf", "allOf", "title", "const", "additionalProperties"):
            assert banned not in node, f"{path} uses {banned}"
        for key in ("exclusiveMinimum", "exclusiveMaximum"):
            assert isinstance(node.get(key, True), bool), f"{path}.{key} must be a boolean in a CRD"
        if "default" in node:
            assert node["default"] is not None, f"{path} defaults to null"


@pytest.mark.parametrize("crd", [masterplan_crd(), wave_crd()], ids=["masterplan", "wave"])
def test_every_spec_field_has_a_description_for_kubectl_explain(crd):
    spec = _schema(crd)["properties"]["spec"]
    undocumented = [
        path for path, node in _walk(spec, "spec")[1:] if "description" not in node and "[]" not in path
    ]

    assert undocumented == []


def test_status_is_a_subresource_and_printer_columns_match_the_design():
    version = masterplan_crd()["spec"]["versions"][0]

    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Phase", "Progress", "Cost", "Budget", "Gate", "Precision", "Age"]


def test_printer_columns_point_at_fields_the_status_schema_has():
    for crd in (masterplan_crd(), wave_crd()):
        schema = _schema(crd)
        known = {path for path, _ in _walk(schema)}
        for column in crd["spec"]["versions"][0]["additionalPrinterColumns"]:
            assert column["jsonPath"] in known | {".metadata.creationTimestamp"}, column


def test_budget_defaults_are_applied_by_the_api_server():
    budget = _schema(masterplan_crd())["properties"]["spec"]["properties"]["budget"]

    assert budget["default"] == {}
    defaults = {name: field.get("default") for name, field in budget["properties"].items()}
    assert defaults == {"limitUSD": 200.0, "softCapPercent": 70.0, "hardCapPercent": 100.0, "override": None}
    assert budget["properties"]["limitUSD"]["minimum"] == 0
    assert budget["properties"]["limitUSD"]["exclusiveMinimum"] is True


def test_duplicate_atom_ids_are_rejected_by_list_map_keys():
    atoms = _schema(masterplan_crd())["properties"]["spec"]["properties"]["atoms"]

    assert atoms["x-kubernetes-list-type"] == "map"
    assert atoms["x-kubernetes-list-map-keys"] == ["id"]


def _rules_at(path: str) -> list[dict[str, str]]:
    nodes = dict(_walk(_schema(masterplan_crd())))
    return list(nodes[path]["x-kubernetes-validations"])


def _verdict(rule: dict[str, str], obj: dict[str, Any]) -> bool:
    env = celpy.Environment()
    return bool(env.program(env.compile(rule["rule"])).evaluate({"self": celpy.json_to_cel(obj)}))


@pytest.mark.parametrize(
    ("path", "obj", "admitted"),
    [
        (".spec", {"atoms": []}, True),
        (".spec", {"atomsFrom": {"configMapKeyRef": {"name": "p", "key": "k"}}}, True),
        (".spec", {}, False),
        (".spec", {"atoms": [], "atomsFrom": {"configMapKeyRef": {"name": "p", "key": "k"}}}, False),
        (".spec.budget", {"softCapPercent": 70.0, "hardCapPercent": 100.0}, True),
        (".spec.budget", {"softCapPercent": 90.0, "hardCapPercent": 80.0}, False),
        (".spec.atoms[]", {"id": "a", "file": "a.py", "dependsOn": ["b"]}, True),
        (".spec.atoms[]", {"id": "a", "file": "a.py"}, True),
        (".spec.atoms[]", {"id": "a", "file": "a.py", "dependsOn": ["a"]}, False),
        (".spec.atoms[]", {"id": "a", "file": "/etc/x.py"}, False),
        (".spec.atoms[]", {"id": "a", "file": "src/../../x.py"}, False),
        (".spec.scaffold.files[]", {"path": "client/tsconfig.json", "content": "{}"}, True),
        (".spec.scaffold.files[]", {"path": "../x.json", "content": ""}, False),
        (".spec.scaffold.files[]", {"path": "client/../../x.json", "content": ""}, False),
    ],
)
def test_cel_rules_admit_and_reject_like_the_models(path, obj, admitted):
    assert all(_verdict(rule, obj) for rule in _rules_at(path)) is admitted


@pytest.mark.parametrize(
    ("path", "admitted"),
    [
        ("tsconfig.json", True),
        ("client/package.json", True),
        ("/etc/passwd", False),
        ("a\x00b", False),
        ("a\nb", False),
        ("a\x7fb", False),
        ("", False),
    ],
)
def test_scaffold_paths_are_relative_without_control_characters(path, admitted):
    files = _schema(masterplan_crd())["properties"]["spec"]["properties"]["scaffold"]["properties"]["files"]
    pattern = files["items"]["properties"]["path"]["pattern"]

    # No lookaround in the pattern: Python's re and the API server's RE2 read it alike.
    assert (re.search(pattern, path) is not None) is admitted
    assert files["x-kubernetes-list-type"] == "map"
    assert files["x-kubernetes-list-map-keys"] == ["path"]


def test_every_cel_rule_carries_a_message_a_user_can_act_on():
    for path, node in _walk(_schema(masterplan_crd())):
        for rule in node.get("x-kubernetes-validations", []):
            assert len(rule.get("message", "")) > 20, f"{path}: {rule}"


@pytest.mark.parametrize("folder", CRD_FOLDERS, ids=lambda p: str(p.relative_to(REPO)))
def test_committed_crds_match_the_models(folder):
    for file_name, crd in all_crds().items():
        committed = folder / file_name
        assert committed.exists(), f"{committed} missing: run `make crds`"
        assert committed.read_text() == _render_crd(crd), f"{committed} is stale: run `make crds`"
        assert yaml.safe_load(committed.read_text()) == crd


def _with_defaults(schema: dict[str, Any], value: Any) -> Any:
    """What the API server does before validating a custom resource: fill in every missing default."""
    if isinstance(value, dict):
        filled = dict(value)
        for name, child in schema.get("properties", {}).items():
            if name not in filled and "default" in child:
                filled[name] = child["default"]
            if name in filled:
                filled[name] = _with_defaults(child, filled[name])
        return filled
    if isinstance(value, list) and "items" in schema:
        return [_with_defaults(schema["items"], item) for item in value]
    return value


def _cel_failures(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    failures = [
        f"{path}: {rule['message']}"
        for rule in schema.get("x-kubernetes-validations", [])
        if not _verdict(rule, value)
    ]
    if isinstance(value, dict):
        for name, child in schema.get("properties", {}).items():
            if name in value:
                failures += _cel_failures(child, value[name], f"{path}.{name}")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            failures += _cel_failures(schema["items"], item, f"{path}[{index}]")
    return failures


@pytest.mark.parametrize("example", sorted(p.name for p in (REPO / "examples").iterdir() if p.is_dir()))
def test_every_example_is_admitted_as_kubectl_apply_sends_it(example):
    schema = _schema(masterplan_crd())
    documents = [
        doc
        for file in sorted((REPO / "examples" / example).glob("*.yaml"))
        for doc in yaml.safe_load_all(file.read_text())
        if doc and doc.get("kind") == "Masterplan"
    ]

    assert len(documents) == 1
    body = _with_defaults(schema, documents[0])
    # OpenAPI v3.0 schemas are JSON Schema draft 4 (boolean exclusiveMinimum); x-kubernetes-* are ignored.
    jsonschema.Draft4Validator(schema).validate(body)
    assert _cel_failures(schema, body) == []
