"""CRDs generated from the models: structural, self-describing, CEL rules that mean what they say, no drift."""

import re
from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml

from mge.cli import _render_crd
from mge.models.crd import all_crds, masterplan_crd, wave_crd
from mge.models.masterplan import MasterplanSpec
from tests.support.crd_schema import (
    admission_errors,
    apply_defaults,
    default_errors,
    unguarded_optional_fields,
)

REPO = Path(__file__).resolve().parents[2]
CRD_FOLDERS = [REPO / "crds", REPO / "helm" / "mge-operator" / "crds"]
EXAMPLES = sorted((REPO / "examples").glob("*/masterplan.yaml"))


def _shipped_crds() -> list[tuple[str, dict[str, Any]]]:
    """Every CRD a user can apply: crds/, the chart's crds/ and the plain manifest, as committed."""
    found = [
        (str(path.relative_to(REPO)), yaml.safe_load(path.read_text()))
        for folder in CRD_FOLDERS
        for path in sorted(folder.glob("*.yaml"))
    ]
    manifest = REPO / "manifests" / "mge-operator.yaml"
    found += [
        (f"{manifest.relative_to(REPO)}:{doc['metadata']['name']}", doc)
        for doc in yaml.safe_load_all(manifest.read_text())
        if doc and doc.get("kind") == "CustomResourceDefinition"
    ]
    assert len(found) >= 6, found
    return found


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
        for banned in ("$ref", "$defs", "anyOf", "oneOf", "allOf", "title", "const"):
            assert banned not in node, f"{path} uses {banned}"
        if "additionalProperties" in node:  # a map: a value schema, never a boolean, never with properties
            assert isinstance(node["additionalProperties"], dict), (
                f"{path}: additionalProperties is no schema"
            )
            assert "properties" not in node, f"{path}: additionalProperties beside properties"
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

    # The full value, not `{}`: the API server checks a default's CEL rules as written, nested defaults unapplied.
    assert budget["default"] == {"limitUSD": 200.0, "softCapPercent": 70.0, "hardCapPercent": 100.0}
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
        (".spec.llm.headers[]", {"name": "OpenAI-Project", "value": "p1"}, True),
        (".spec.llm.headers[]", {"name": "authorization", "value": "Bearer k"}, False),
        (".spec.llm.headers[]", {"name": "HOST", "value": "evil"}, False),
        (".spec.llm.headers[]", {"name": "X-Hostname", "value": "fine"}, True),
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


@pytest.mark.parametrize(("where", "crd"), _shipped_crds(), ids=[w for w, _ in _shipped_crds()])
def test_every_default_passes_its_schema_and_rules_as_written(where, crd):
    """The API server refuses the whole CRD when one default fails its node's schema or CEL rules."""
    assert default_errors(_schema(crd)) == []


@pytest.mark.parametrize(("where", "crd"), _shipped_crds(), ids=[w for w, _ in _shipped_crds()])
def test_rules_guard_fields_that_may_be_absent_with_has(where, crd):
    assert unguarded_optional_fields(_schema(crd)) == []


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.parent.name)
def test_every_example_is_admitted_by_the_schema_and_every_rule(example):
    # An example's file may carry the ConfigMaps its plan reads (atomsFrom, spec.context) before the plan.
    (document,) = [d for d in yaml.safe_load_all(example.read_text()) if d.get("kind") == "Masterplan"]

    assert admission_errors(_schema(masterplan_crd()), document) == []
    # The operator reads what the API server stored: the defaulted spec validates in the model too.
    spec = apply_defaults(_schema(masterplan_crd()), document)["spec"]
    MasterplanSpec.model_validate(spec)


def test_the_admission_check_refuses_what_the_api_server_refuses():
    """The checks above can fail: an unguarded rule on a `{}` default, and invalid specs."""
    node = {
        "type": "object",
        "default": {},
        "properties": {"a": {"type": "number", "default": 1}, "b": {"type": "number"}},
        "x-kubernetes-validations": [{"rule": "self.a <= self.b", "message": "a must not exceed b"}],
    }
    assert default_errors(node) != []
    assert unguarded_optional_fields(node) != []
    schema = _schema(masterplan_crd())
    document = yaml.safe_load(EXAMPLES[0].read_text())
    too_soft = {
        **document,
        "spec": {**document["spec"], "budget": {"softCapPercent": 90, "hardCapPercent": 80}},
    }
    assert admission_errors(schema, too_soft) != []
    free = {**document, "spec": {**document["spec"], "budget": {"limitUSD": 0}}}
    assert admission_errors(schema, free) != []
