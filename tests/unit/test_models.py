"""Model validation: defaults from the seed, and errors that name the field and the fix."""

import pytest
from pydantic import ValidationError

from mge.models.manifest import ManifestError, masterplan_count_problem, parse_atom_list, parse_masterplan
from mge.models.masterplan import Budget, MasterplanSpec
from tests.builders import manifest


def test_budget_defaults_are_200_usd_with_caps_at_70_and_100_percent():
    budget = MasterplanSpec.model_validate({"atoms": []}).budget

    assert (budget.limit_usd, budget.soft_cap_percent, budget.hard_cap_percent) == (200.0, 70.0, 100.0)


def test_override_replaces_the_limit():
    budget = Budget.model_validate(
        {"limitUSD": 100, "override": {"limitUSD": 300, "approvedBy": "a", "reason": "r"}}
    )

    assert budget.effective_limit_usd == 300


def test_soft_cap_above_hard_cap_is_rejected():
    with pytest.raises(ValidationError, match="softCapPercent"):
        Budget.model_validate({"softCapPercent": 90, "hardCapPercent": 80})


def test_spec_needs_exactly_one_atom_source():
    with pytest.raises(ValidationError, match=r"exactly one of spec\.atoms"):
        MasterplanSpec.model_validate({})
    with pytest.raises(ValidationError, match=r"exactly one of spec\.atoms"):
        MasterplanSpec.model_validate(
            {"atoms": [], "atomsFrom": {"configMapKeyRef": {"name": "plan", "key": "atoms.yaml"}}}
        )


def test_manifest_error_names_the_field_path():
    doc = manifest(budget={"limitUSD": -5})

    with pytest.raises(ManifestError, match=r"spec\.budget\.limitUSD: must be greater than 0, got -5"):
        parse_masterplan(doc)


def test_atom_with_unknown_language_is_rejected_naming_the_atom_index():
    doc = manifest(atoms=[{"id": "a", "file": "a.rb", "language": "ruby", "description": "x"}])

    with pytest.raises(ManifestError, match=r"spec\.atoms\.0\.language"):
        parse_masterplan(doc)


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.py", "src/../../x.py"])
def test_atom_files_must_stay_inside_the_project(path):
    doc = manifest(atoms=[{"id": "a", "file": path, "language": "python", "description": "x"}])

    with pytest.raises(ManifestError, match="relative path inside the project"):
        parse_masterplan(doc)


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.json", "client/../../x", "a\x00b", "a\nb"])
def test_scaffold_files_must_stay_inside_the_project(path):
    doc = manifest(atoms=[], scaffold={"files": [{"path": path, "content": "{}"}]})

    with pytest.raises(
        ManifestError, match=r"spec\.scaffold\.files\.0\.path: .*relative to the project root"
    ):
        parse_masterplan(doc)


def test_wrong_kind_is_rejected_with_the_expected_kind():
    with pytest.raises(ManifestError, match="kind: Masterplan"):
        parse_masterplan({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}})


def test_atom_list_from_a_config_map_reports_bad_yaml_with_its_source():
    with pytest.raises(ManifestError, match="ConfigMap plan key atoms: not valid YAML"):
        parse_atom_list("- id: [unclosed", "ConfigMap plan key atoms")


def test_spec_round_trips_through_camel_case():
    spec = MasterplanSpec.model_validate(
        {"atoms": [{"id": "a", "file": "a.py", "language": "python", "description": "x", "dependsOn": []}]}
    )

    dumped = spec.to_kube()

    assert dumped["budget"] == {"limitUSD": 200.0, "softCapPercent": 70.0, "hardCapPercent": 100.0}
    assert "dependsOn" in dumped["atoms"][0]


@pytest.mark.parametrize(
    ("budget", "field"),
    [
        ({"limitUSD": 0}, "limitUSD"),
        ({"hardCapPercent": 120}, "hardCapPercent"),
        ({"override": {"limitUSD": 300, "reason": "more"}}, "approvedBy"),
        ({"override": {"limitUSD": 300, "approvedBy": "alice"}}, "reason"),
        ({"override": {"limitUSD": -1, "approvedBy": "alice", "reason": "r"}}, "limitUSD"),
    ],
)
def test_bad_budgets_are_rejected_naming_the_field(budget, field):
    with pytest.raises(ManifestError, match=rf"spec\.budget\.(override\.)?{field}"):
        parse_masterplan(manifest(budget=budget))


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ({"budget": {"limitUSD": "$5"}}, "spec.budget.limitUSD: got '$5': write a plain number, e.g. 5"),
        ({"budget": 5}, "spec.budget: got 5 (a number): write its fields under it as a mapping (key: value)"),
        ({"budget": {"limitUSD": -5}}, "spec.budget.limitUSD: must be greater than 0, got -5"),
        (
            {"atoms": [{"id": "api client", "file": "a.py", "language": "python", "description": "x"}]},
            "spec.atoms.0.id: got 'api client': use 1-128 letters, digits, '_', '.' or '-' (no spaces)",
        ),
        (
            {"atoms": [{"id": "a", "file": "a.rb", "language": "ruby", "description": "x"}]},
            "spec.atoms.0.language: got 'ruby': use one of 'python', 'typescript' or 'javascript'",
        ),
        (
            {"atoms": [{"id": "a", "file": "/a.py", "language": "python", "description": "x"}]},
            "spec.atoms.0: atom 'a': file must be a relative path inside the project",
        ),
        (
            {"atoms": [{"id": "a", "file": "a.py", "language": "python"}]},
            "spec.atoms.0.description: required",
        ),
    ],
)
def test_each_message_names_the_field_what_was_given_and_the_fix(override, says):
    with pytest.raises(ManifestError) as raised:
        parse_masterplan(manifest(**override))

    message = str(raised.value)
    assert says in message
    for internal in ("Input should", "String should", "Value error", "instance of", "Budget'", "^["):
        assert internal not in message


@pytest.mark.parametrize(
    ("kinds", "says"),
    [
        (
            ["MasterPlan"],
            "kind 'MasterPlan' is not a kind; kinds are case-sensitive: write 'kind: Masterplan'",
        ),
        (["ConfigMap"], "holds no Masterplan document (found 'ConfigMap'); add one with 'kind: Masterplan'"),
        (["Masterplan", "Masterplan"], "holds 2 Masterplan documents; put each in its own file"),
    ],
)
def test_a_file_without_exactly_one_masterplan_says_what_it_found(kinds, says):
    assert masterplan_count_problem([{"kind": kind} for kind in kinds]) == says
