"""The DependenciesVerified condition and status from a plan check, and learned dependsOn applied on re-plans."""

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from mge.deps.compare import AtomEdge, PlanCheck, reachable
from mge.models.conditions import ConditionStatus, ConditionType, Reason
from mge.models.masterplan import (
    MAX_DEPENDENCIES_PER_ATOM,
    MAX_REPORTED,
    Atom,
    DependenciesStatus,
    LearnedDependency,
    MissingDependency,
)

# A condition message stays readable in `kubectl describe`; the full list is in `mge deps analyze`.
MAX_LISTED = 5


@dataclass(frozen=True)
class DependenciesDecision:
    type: ConditionType
    status: ConditionStatus
    reason: Reason
    message: str
    # dependsOn to add before a re-run, per atom (sorted): what the imports say the atom needs.
    additions: dict[str, list[str]]
    # Imports that cannot become dependsOn: the imported atom already (transitively) depends on the importer.
    circular: list[AtomEdge] = field(default_factory=list)


def _acyclic_additions(
    wanted: Sequence[tuple[str, str]], declared: Mapping[str, Collection[str]]
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Split (atom, needs) edges into those the plan can take and those that would close a cycle."""
    graph = {atom: set(needs) for atom, needs in declared.items()}
    accepted, cyclic = [], []
    for atom, needs in wanted:
        if needs == atom or atom in reachable(needs, graph):
            cyclic.append((atom, needs))
        else:
            graph.setdefault(atom, set()).add(needs)
            accepted.append((atom, needs))
    return accepted, cyclic


def decide_dependencies(
    check: PlanCheck, declared: Mapping[str, Collection[str]] | None = None
) -> DependenciesDecision:
    """`declared`: the dependsOn the plan ran with, so imports that would form a cycle are told apart."""
    accepted, cyclic = _acyclic_additions(
        sorted({(edge.atom, edge.needs) for edge in check.missing}), declared or {}
    )
    additions: dict[str, list[str]] = {}
    for atom, needs in accepted:
        additions.setdefault(atom, []).append(needs)
    cyclic_pairs = set(cyclic)
    circular = [edge for edge in check.missing if (edge.atom, edge.needs) in cyclic_pairs]
    unresolved = (
        f" {len(check.unresolved)} imports could not be tied to a file (see status.dependencies.unresolvedImports)."
        if check.unresolved
        else ""
    )
    if not check.missing:
        extra = f"; {len(check.extra)} dependsOn entries have no import behind them" if check.extra else ""
        return DependenciesDecision(
            ConditionType.DEPENDENCIES_VERIFIED,
            ConditionStatus.TRUE,
            Reason.IMPORTS_MATCH_PLAN,
            f"Every import between generated files is ordered by dependsOn{extra}.{unresolved}",
            additions,
        )
    listed = "; ".join(str(edge) for edge in check.missing[:MAX_LISTED])
    more = f" (and {len(check.missing) - MAX_LISTED} more)" if len(check.missing) > MAX_LISTED else ""
    fix = ", ".join(f"{atom}: [{', '.join(needs)}]" for atom, needs in list(additions.items())[:MAX_LISTED])
    advice = (
        f" Those atoms may have been generated before the code they use; add to dependsOn ({fix}) and re-run."
        if additions
        else ""
    )
    if circular:
        pairs = ", ".join(f"{edge.atom} <-> {edge.needs}" for edge in circular[:MAX_LISTED])
        advice += f" Circular imports cannot be ordered ({pairs}): merge those atoms or break the cycle."
    return DependenciesDecision(
        ConditionType.DEPENDENCIES_VERIFIED,
        ConditionStatus.FALSE,
        Reason.IMPORTS_MISSING_FROM_PLAN,
        f"{len(check.missing)} imports are not ordered by dependsOn: {listed}{more}.{advice}{unresolved}",
        additions,
        circular,
    )


def dependencies_report(
    check: PlanCheck,
    decision: DependenciesDecision,
    *,
    generation: int,
    atom_ids: Collection[str],
    learned_before: Sequence[LearnedDependency] = (),
) -> DependenciesStatus:
    """Status for `generation`: what was found, and every learned edge so far (kept while both atoms exist)."""
    learned = {
        (entry.atom, entry.needs): entry
        for entry in learned_before
        if entry.atom in atom_ids and entry.needs in atom_ids
    }
    for atom, needs_all in decision.additions.items():
        for needs in needs_all:
            learned.setdefault(
                (atom, needs), LearnedDependency(atom=atom, needs=needs, learned_generation=generation)
            )
    return DependenciesStatus(
        observed_generation=generation,
        verified=not check.missing,
        files=check.files,
        missing_count=len(check.missing),
        missing=[
            MissingDependency(
                atom=edge.atom,
                needs=edge.needs,
                file=edge.because.source if edge.because else "",
                line=edge.because.line if edge.because else 0,
                specifier=edge.because.specifier if edge.because else "",
            )
            for edge in check.missing[:MAX_REPORTED]
        ],
        extra_count=len(check.extra),
        unresolved_imports=[str(u) for u in check.unresolved[:MAX_REPORTED]],
        learned=[learned[key] for key in sorted(learned)],
    )


def unavailable_decision(why: str) -> DependenciesDecision:
    return DependenciesDecision(
        ConditionType.DEPENDENCIES_VERIFIED,
        ConditionStatus.UNKNOWN,
        Reason.DEPENDENCY_CHECK_UNAVAILABLE,
        f"The generated code was not analysed: {why}. The operator's log has the details; the next "
        "generation is analysed again.",
        {},
    )


def unchecked_report(generation: int, learned_before: Sequence[LearnedDependency]) -> DependenciesStatus:
    """The output could not be analysed: nothing verified, nothing learned lost."""
    return DependenciesStatus(observed_generation=generation, verified=None, learned=list(learned_before))


def apply_learned(atoms: Sequence[Atom], learned: Sequence[LearnedDependency], generation: int) -> list[Atom]:
    """The atoms with learned edges added, for planning `generation`.

    Only edges learned at an earlier generation apply: re-planning the same generation (an operator restart)
    must register the same plan, or it would regenerate atoms nobody asked to redo. Edges to atoms that are
    gone, already declared, over the per-atom limit or closing a cycle are left out.
    """
    by_id = {atom.id: atom for atom in atoms}
    declared = {atom.id: set(atom.depends_on) for atom in atoms}
    wanted = sorted(
        (entry.atom, entry.needs)
        for entry in learned
        if entry.learned_generation < generation
        and entry.atom in by_id
        and entry.needs in by_id
        and entry.atom != entry.needs
        and entry.needs not in declared[entry.atom]
    )
    accepted, _ = _acyclic_additions(wanted, declared)
    added: dict[str, list[str]] = {}
    for atom, needs in accepted:
        if len(by_id[atom].depends_on) + len(added.get(atom, [])) < MAX_DEPENDENCIES_PER_ATOM:
            added.setdefault(atom, []).append(needs)
    return [
        atom.model_copy(update={"depends_on": [*atom.depends_on, *added[atom.id]]})
        if atom.id in added
        else atom
        for atom in atoms
    ]
