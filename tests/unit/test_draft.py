"""Checking a drafted plan: what the planner, the API server and requirement coverage refuse; large plans."""

from decimal import Decimal

import pytest
import yaml

from mge.acceptance.requirements import parse_requirements
from mge.adapters.manifests import load_plan_input
from mge.executor.draft import manifest_text
from mge.models.crd import masterplan_crd
from mge.plan.draft import masterplan_manifests, repair_message, review_proposal
from tests.support.crd_schema import admission_errors

REQUIREMENTS = """## Requirements
### MUST
- `add(1, 2)` returns 3.
- `python -m calc 1 2` prints 3.
### SHOULD
- `add` accepts floats.
"""
PARSED = parse_requirements(REQUIREMENTS).requirements


def _atom(atom_id, file, depends=(), covers=("MUST-1",), **extra):
    return {
        "id": atom_id,
        "file": file,
        "language": "python",
        "description": f"Write {file}.",
        "dependsOn": list(depends),
        "covers": list(covers),
        **extra,
    }


def _answer(*atoms) -> str:
    return "Here is the plan:\n```yaml\n" + yaml.safe_dump({"atoms": list(atoms)}, sort_keys=False) + "```\n"


VALID = (
    _atom("add", "calc/add.py", covers=["MUST-1", "SHOULD-1"]),
    _atom("cli", "calc/__main__.py", ["add"], covers=["MUST-2"]),
)


def _review(answer: str):
    return review_proposal(answer, PARSED, model="gpt-4o-mini", budget_usd=Decimal(5))


def test_a_valid_plan_is_accepted_with_its_coverage():
    review = _review(_answer(*VALID))
    assert review.problems == ()
    assert review.proposal is not None
    assert [a.id for a in review.proposal.atoms] == ["add", "cli"]
    assert review.proposal.coverage(PARSED) == {"MUST-1": ["add"], "MUST-2": ["cli"], "SHOULD-1": ["add"]}


def test_the_manifest_is_admitted_by_the_crd_schema_and_its_rules():
    proposal = _review(_answer(*VALID)).proposal
    assert proposal is not None
    (manifest,) = masterplan_manifests(
        "calc", model="gpt-4o-mini", budget_usd=Decimal(5), requirements=REQUIREMENTS, proposal=proposal
    )
    schema = masterplan_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert admission_errors(schema, manifest) == []
    assert "covers" not in str(manifest)  # coverage is ours, not a field the API server would keep


def test_a_plan_too_large_to_inline_goes_to_a_configmap_that_mge_run_reads(tmp_path):
    atoms = [
        _atom(f"a{n}", f"pkg/m{n}.py", covers=["MUST-1", "MUST-2"] if n == 0 else []) for n in range(2500)
    ]
    proposal = _review(_answer(*atoms)).proposal
    assert proposal is not None
    manifests = masterplan_manifests(
        "big", model="gpt-4o-mini", budget_usd=Decimal(50), requirements=REQUIREMENTS, proposal=proposal
    )
    masterplan, config_map = manifests
    assert masterplan["spec"]["atomsFrom"] == {"configMapKeyRef": {"name": "big-atoms", "key": "atoms.json"}}
    assert config_map["kind"] == "ConfigMap"
    schema = masterplan_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert admission_errors(schema, masterplan) == []
    path = tmp_path / "big.yaml"
    path.write_text(manifest_text(manifests, proposal.coverage(PARSED), "t"))
    name, _, loaded = load_plan_input(path)
    assert (name, len(loaded), loaded[-1].id) == ("big", 2500, "a2499")


@pytest.mark.parametrize(
    ("atoms", "expected"),
    [
        (
            (_atom("a", "a.py", ["b"]), _atom("b", "b.py", ["a"], covers=["MUST-2"])),
            "dependency cycle: a -> b -> a",
        ),
        ((_atom("a", "a.py", ["a"]), _atom("b", "b.py", covers=["MUST-2"])), "depend on themselves: a"),
        ((_atom("a", "a.py", ["ghost"]), _atom("b", "b.py", covers=["MUST-2"])), "a -> ghost"),
        ((_atom("a", "x.py"), _atom("b", "x.py", covers=["MUST-2"])), "'a' and 'b' both write 'x.py'"),
        ((_atom("a", "a.py"), _atom("a", "b.py", covers=["MUST-2"])), "duplicated: a"),
        ((_atom("a", "a.py"),), "MUST-2 is covered by no atom"),
        (
            (_atom("a", "a.py", covers=["MUST-1", "MUST-2", "MUST-9"]),),
            "covers MUST-9, which no requirement has",
        ),
        ((_atom("a", "a.py", language="rust"), _atom("b", "b.py")), "atoms[0].language: got 'rust'"),
        ((_atom("my atom", "a.py"),), "atoms[0].id: got 'my atom': use 1-128 letters"),
        (
            (_atom("a", "/etc/passwd", covers=["MUST-1", "MUST-2"]),),
            "file must be a relative path inside the project",
        ),
    ],
    ids=[
        "cycle",
        "self",
        "unknown",
        "shared-file",
        "duplicate",
        "uncovered",
        "unknown-cover",
        "language",
        "id",
        "path",
    ],
)
def test_each_kind_of_bad_plan_is_refused_with_a_problem_that_says_what_to_fix(atoms, expected):
    review = _review(_answer(*atoms))
    assert review.proposal is None
    assert any(expected in problem for problem in review.problems), review.problems


@pytest.mark.parametrize(
    "answer",
    ["I cannot help with that.", "```yaml\natoms: []\n```", "```yaml\n- a\n- b\n```", "```yaml\n: : :\n```"],
)
def test_an_answer_that_is_not_a_plan_is_refused_saying_what_shape_to_use(answer):
    review = _review(answer)
    assert review.proposal is None
    assert "```yaml" in review.problems[0] or "`atoms:`" in review.problems[0]


def test_the_repair_message_lists_every_problem():
    message = repair_message(["dependency cycle: a -> b -> a", "MUST-2 is covered by no atom"])
    assert message["role"] == "user"
    assert "- dependency cycle: a -> b -> a\n- MUST-2 is covered by no atom" in message["content"]
