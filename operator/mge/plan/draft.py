"""Drafting a Masterplan from requirements: the prompts, and every check a proposed plan must pass (pure)."""

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

import yaml
from pydantic import ValidationError

from mge.acceptance.requirements import Priority, Requirement
from mge.generation.extract import NoCodeInAnswer, extract_code
from mge.models.base import API_GROUP
from mge.models.manifest import YAML_LOADER, describe_validation_error
from mge.models.masterplan import MAX_INLINE_ATOMS, Atom, MasterplanSpec
from mge.plan.dag import plan_dag
from mge.plan.errors import PlanError
from mge.plan.files import check_files

# The "atom" a draft's LLM calls are recorded and traced under (responses.jsonl, X-MGE-Atom).
DRAFT_CALL_ID: Final = "draft"
DRAFT_MAX_TOKENS: Final = 8000
_MAX_PROBLEMS: Final = 20
# Past these the atoms go to a ConfigMap: a Masterplan object stays well under etcd's 1.5 MiB, and a
# ConfigMap holds at most 1 MiB.
INLINE_ATOMS_BYTES: Final = 512 * 1024
MAX_CONFIG_MAP_BYTES: Final = 1_000_000
ATOMS_KEY: Final = "atoms.json"

_SYSTEM = """You plan code generation. Split a project into small atoms: one atom = one source file that an \
LLM can write in one answer from its description and the code of the atoms it depends on.
Answer with one ```yaml block and nothing else:
```yaml
atoms:
  - id: short-id            # letters, digits, '.', '_', '-'; unique
    file: pkg/module.py     # relative path, one file per atom, no two atoms share a file
    language: python        # python, typescript or javascript
    description: >-
      What the file must define and do, precisely enough to write it without guessing: names,
      signatures, behaviour, errors.
    dependsOn: [other-id]   # atoms whose code this one imports or needs; no cycles; may be empty
    estimatedTokens: 200    # expected size of the file in tokens
    covers: [MUST-1]        # the requirement ids this atom implements
```
Every MUST requirement must be covered by at least one atom; cover the SHOULD ones too. Keep atoms small \
(under ~400 lines each)."""


@dataclass(frozen=True, slots=True)
class Proposal:
    """A plan the checks accepted: its atoms and which requirements each atom says it implements."""

    atoms: tuple[Atom, ...]
    covers: Mapping[str, tuple[str, ...]]

    def coverage(self, requirements: Sequence[Requirement]) -> dict[str, list[str]]:
        """Requirement id -> the atoms that cover it, in plan order."""
        return {r.id: [a.id for a in self.atoms if r.id in self.covers.get(a.id, ())] for r in requirements}


@dataclass(frozen=True, slots=True)
class Review:
    proposal: Proposal | None
    problems: tuple[str, ...] = ()


def draft_messages(
    requirements: Sequence[Requirement],
    *,
    layout_hint: str = "",
    existing_files: Mapping[str, str] | None = None,
) -> list[dict[str, str]]:
    """The first request: the numbered requirements, the layout hint, and the files the project already has."""
    parts = ["Requirements (ids in brackets):"]
    parts += [f"[{r.id}] {r.text}" for r in requirements]
    if layout_hint:
        parts += ["", f"Layout: {layout_hint}"]
    if existing_files:
        parts += ["", "The project already has these files; plan only what is missing, and depend on them by"]
        parts += ["importing them (they are not atoms):"]
        for path, content in existing_files.items():
            parts += [f"--- {path}", content.rstrip("\n")]
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": "\n".join(parts)}]


def repair_message(problems: Sequence[str]) -> dict[str, str]:
    """Feedback for the next proposal: what was wrong with the last one."""
    listed = "\n".join(f"- {problem}" for problem in problems)
    return {
        "role": "user",
        "content": f"That plan cannot run:\n{listed}\nAnswer with the whole corrected plan as one ```yaml block.",
    }


def review_proposal(
    answer: str, requirements: Sequence[Requirement], *, model: str, budget_usd: Decimal
) -> Review:
    """Parse an answer and check it as `kubectl apply` and the planner would, plus requirement coverage."""
    try:
        document = yaml.load(extract_code(answer), Loader=YAML_LOADER)
    except (NoCodeInAnswer, yaml.YAMLError) as error:
        return Review(None, (f"the answer is not one ```yaml block with `atoms:` ({_first_line(error)})",))
    entries = document.get("atoms") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        return Review(None, ("the yaml block must be a mapping whose `atoms:` is a non-empty list of atoms",))
    problems: list[str] = []
    atoms: list[Atom] = []
    covers: dict[str, tuple[str, ...]] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            problems.append(f"atoms[{index}]: got {entry!r}: write each atom as a mapping (id:, file:, ...)")
            continue
        fields = dict(entry)
        covered = fields.pop("covers", [])
        try:
            atom = Atom.model_validate(fields)
        except ValidationError as error:
            problems.append(describe_validation_error(error, f"atoms[{index}]"))
            continue
        if not isinstance(covered, list) or not all(isinstance(c, str) for c in covered):
            problems.append(
                f"atoms[{index}] ({atom.id}).covers: write a list of requirement ids, e.g. [MUST-1]"
            )
            covered = []
        atoms.append(atom)
        covers[atom.id] = tuple(covered)
    if problems:
        return Review(None, tuple(problems[:_MAX_PROBLEMS]))
    problems += _plan_problems(atoms, model=model, budget_usd=budget_usd)
    problems += _coverage_problems(covers, requirements)
    if problems:
        return Review(None, tuple(problems[:_MAX_PROBLEMS]))
    return Review(Proposal(tuple(atoms), covers))


def _plan_problems(atoms: Sequence[Atom], *, model: str, budget_usd: Decimal) -> list[str]:
    problems = []
    for check in (
        lambda: plan_dag((a.id, a.depends_on) for a in atoms),
        lambda: check_files((a.id, a.file) for a in atoms),
    ):
        try:
            check()
        except PlanError as error:
            problems.append(str(error))
    fields = [_atom_fields(a) for a in atoms]
    if not _fits_inline(fields):
        size = len(json.dumps(fields))
        if size > MAX_CONFIG_MAP_BYTES:
            problems.append(
                f"the plan's atoms take {size:,} bytes, more than one ConfigMap holds ({MAX_CONFIG_MAP_BYTES:,}): "
                "shorten the descriptions or merge small atoms"
            )
        return problems
    try:  # what the API server enforces on the spec beyond each atom
        MasterplanSpec.model_validate({"model": model, "budget": {"limitUSD": budget_usd}, "atoms": fields})
    except ValidationError as error:
        problems.append(describe_validation_error(error, "spec"))
    return problems


def _fits_inline(fields: Sequence[Mapping[str, Any]]) -> bool:
    """Small plans keep their atoms in the Masterplan; large ones in a ConfigMap (spec.atomsFrom)."""
    return len(fields) <= MAX_INLINE_ATOMS and len(json.dumps(fields)) <= INLINE_ATOMS_BYTES


def _coverage_problems(covers: Mapping[str, Sequence[str]], requirements: Sequence[Requirement]) -> list[str]:
    known = {r.id for r in requirements}
    covered = {requirement for listed in covers.values() for requirement in listed}
    problems = [
        f"atom {atom}: covers {', '.join(sorted(set(listed) - known))}, which no requirement has "
        f"(the ids are {', '.join(sorted(known))})"
        for atom, listed in covers.items()
        if set(listed) - known
    ]
    problems += [
        f"{r.id} is covered by no atom ({r.text!r}): add an atom that implements it, or list {r.id} in the "
        "covers of the atom that does"
        for r in requirements
        if r.priority is Priority.MUST and r.id not in covered
    ]
    return problems


def _atom_fields(atom: Atom) -> dict[str, Any]:
    return atom.model_dump(by_alias=True, exclude_defaults=True, mode="json")


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def masterplan_manifests(
    name: str, *, model: str, budget_usd: Decimal, requirements: str, proposal: Proposal
) -> list[dict[str, Any]]:
    """The objects `kubectl apply` and `mge run` take, unchanged: the Masterplan, and for a large plan the
    ConfigMap its `atomsFrom` names."""
    fields = [_atom_fields(atom) for atom in proposal.atoms]
    spec: dict[str, Any] = {
        "model": model,
        "budget": {"limitUSD": float(budget_usd)},
        "requirements": requirements,
    }
    masterplan = {"apiVersion": f"{API_GROUP}/v1alpha1", "kind": "Masterplan", "metadata": {"name": name}}
    if _fits_inline(fields):
        return [{**masterplan, "spec": {**spec, "atoms": fields}}]
    config_map = f"{name}-atoms"[:253]
    return [
        {
            **masterplan,
            "spec": {**spec, "atomsFrom": {"configMapKeyRef": {"name": config_map, "key": ATOMS_KEY}}},
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": config_map},
            "data": {ATOMS_KEY: json.dumps(fields, ensure_ascii=False, indent=1)},
        },
    ]
