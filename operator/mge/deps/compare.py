"""Declared atom dependencies against the analyzed file graph, and an analyzed graph against ground truth."""

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from mge.deps.graph import DependencyGraph, Edge, EdgeKind, Unresolved


@dataclass(frozen=True)
class AtomEdge:
    atom: str
    needs: str
    because: Edge | None = None  # the import behind a missing edge

    def __str__(self) -> str:
        if self.because is None:
            return f"{self.atom} -> {self.needs}"
        return f"{self.atom} -> {self.needs} ({self.because.source}:{self.because.line} imports {self.because.specifier!r})"


@dataclass
class PlanCheck:
    """`missing`: imports the plan does not order (the atom may run before what it needs).

    `extra`: declared dependencies with no import path between the atoms' files (harmless but serialising).
    """

    missing: list[AtomEdge] = field(default_factory=list)
    extra: list[AtomEdge] = field(default_factory=list)
    # Imports in the atoms' files that could not be tied to a file: they may hide a missing edge.
    unresolved: list[Unresolved] = field(default_factory=list)
    files: int = 0  # atom files the check covered

    @property
    def verified(self) -> bool:
        return not self.missing


def reachable(start: str, edges: Mapping[str, Collection[str]]) -> set[str]:
    """Everything `start` reaches through `edges` (not `start` itself unless on a cycle)."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in edges.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def check_plan(atoms: Iterable[tuple[str, str, Sequence[str]]], graph: DependencyGraph) -> PlanCheck:
    """Compare `(atom id, file, dependsOn)` triples with the file graph of the generated project.

    Implicit parent-package edges are left out (a package re-exporting its submodules would otherwise
    form a cycle with each of them). An import is covered when the importing atom reaches the imported file's atom through declared
    dependencies (directly or transitively), since waves then order them correctly.
    """
    atom_list = list(atoms)
    atoms_of: dict[str, set[str]] = {}
    declared: dict[str, set[str]] = {}
    files_of: dict[str, set[str]] = {}
    for atom, file, depends_on in atom_list:
        atoms_of.setdefault(file, set()).add(atom)
        declared.setdefault(atom, set()).update(depends_on)
        files_of.setdefault(atom, set()).add(file)
    reach = {atom: reachable(atom, declared) for atom in declared}
    file_edges: dict[str, set[str]] = {}
    for edge in graph.edges:
        file_edges.setdefault(edge.source, set()).add(edge.target)
    result = PlanCheck(
        unresolved=[u for u in graph.unresolved if u.file in atoms_of],
        files=len(atoms_of.keys() & set(graph.files)),
    )
    reported: set[tuple[str, str]] = set()
    for edge in sorted(graph.edges):
        if edge.kind is EdgeKind.PACKAGE:
            continue
        for atom in sorted(atoms_of.get(edge.source, ())):
            needed = atoms_of.get(edge.target, set()) - {atom}
            # Several atoms may write one file: the importer must come after each of them.
            for needs in sorted(needed):
                if needs not in reach[atom] and (atom, needs) not in reported:
                    reported.add((atom, needs))
                    result.missing.append(AtomEdge(atom, needs, edge))
    for atom, needs_all in sorted(declared.items()):
        reachable_files = set().union(*(reachable(f, file_edges) for f in files_of[atom]))
        for needs in sorted(needs_all):
            if needs in files_of and not (files_of[needs] & (reachable_files | files_of[atom])):
                result.extra.append(AtomEdge(atom, needs))
    return result


# Edges tsc never reports: computed dynamic imports (it does not guess) and `require()` in TypeScript files.
def seen_by_tsc(edge: Edge) -> bool:
    if edge.via is not None:
        return False
    if edge.kind is EdgeKind.DYNAMIC and "${" in edge.specifier:
        return False
    return not (edge.kind is EdgeKind.REQUIRE and edge.source.endswith((".ts", ".tsx", ".mts", ".cts")))


def seen_at_import(edge: Edge) -> bool:
    """Python edges the interpreter executes when the module is imported (its ground truth can see them).

    Not: imports in function bodies (they run when called), under `if TYPE_CHECKING:`, parent packages
    (run first, but not an import the code wrote), or names followed through `__init__` re-exports.
    """
    return edge.via is None and not edge.deferred and edge.kind not in (EdgeKind.TYPE, EdgeKind.PACKAGE)


@dataclass
class Agreement:
    """Direct file edges of our graph against a ground truth (tsc's own resolutions)."""

    true_positive: set[tuple[str, str]]
    false_positive: set[tuple[str, str]]
    false_negative: set[tuple[str, str]]
    beyond_truth: set[tuple[str, str]]  # edges the ground truth cannot see (see `seen_by_tsc`)

    @property
    def precision(self) -> float:
        found = len(self.true_positive) + len(self.false_positive)
        return len(self.true_positive) / found if found else 1.0

    @property
    def recall(self) -> float:
        expected = len(self.true_positive) + len(self.false_negative)
        return len(self.true_positive) / expected if expected else 1.0

    @property
    def f1(self) -> float:
        total = self.precision + self.recall
        return 2 * self.precision * self.recall / total if total else 0.0


def agreement(
    graph: DependencyGraph,
    truth: set[tuple[str, str]],
    program: set[str] | None = None,
    seen: Callable[[Edge], bool] = seen_by_tsc,
) -> Agreement:
    """Compare direct edges; with `program` (the files tsc compiled) only sources tsc read are judged.

    `seen` says which of our edges the ground truth can observe (`seen_by_tsc`, `seen_at_import`).
    """
    judged = [e for e in graph.edges if e.source != e.target and (program is None or e.source in program)]
    ours = {(e.source, e.target) for e in judged if seen(e)}
    beyond = {
        (e.source, e.target)
        for e in judged
        if not seen(e) and e.via is None and e.kind is not EdgeKind.PACKAGE
    } - ours
    truth = {pair for pair in truth if pair[0] != pair[1]}
    return Agreement(
        true_positive=ours & truth,
        false_positive=ours - truth,
        false_negative=truth - ours - beyond,
        beyond_truth=beyond,
    )
