"""Atom DAG -> topological waves, critical path and per-atom priority, in O(atoms + edges)."""

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mge.plan.errors import (
    DependencyCycle,
    DuplicateAtomIds,
    EmptyPlan,
    SelfDependencies,
    UnknownDependencies,
)


@dataclass(frozen=True, slots=True)
class Plan:
    """Waves are topological levels: an atom sits one level after its deepest dependency."""

    ids: tuple[str, ...]
    waves: tuple[tuple[str, ...], ...]
    critical_path: tuple[str, ...]
    # Atoms on the longest chain starting at each atom (itself included): the claim priority,
    # so the atoms that gate the most work start first.
    priority: dict[str, int]
    edge_count: int

    @property
    def wave_of(self) -> dict[str, int]:
        return {atom: index for index, wave in enumerate(self.waves) for atom in wave}


def plan_dag(atoms: Iterable[tuple[str, Sequence[str]]]) -> Plan:
    """Plan atoms given as (id, dependsOn) pairs; raises a PlanError naming the offending atoms."""
    ids: list[str] = []
    deps_by_atom: list[Sequence[str]] = []
    for atom_id, deps in atoms:
        ids.append(atom_id)
        deps_by_atom.append(deps)
    if not ids:
        raise EmptyPlan()
    index = {atom_id: i for i, atom_id in enumerate(ids)}
    if len(index) != len(ids):
        raise DuplicateAtomIds(sorted(atom for atom, n in Counter(ids).items() if n > 1))

    size = len(ids)
    dependents: list[list[int]] = [[] for _ in range(size)]
    dependencies: list[list[int]] = [[] for _ in range(size)]
    missing: list[tuple[str, str]] = []
    self_deps: list[str] = []
    edges = 0
    for i, deps in enumerate(deps_by_atom):
        for dep in dict.fromkeys(deps):  # a repeated dependsOn entry is one edge
            j = index.get(dep)
            if j is None:
                missing.append((ids[i], dep))
            elif j == i:
                self_deps.append(ids[i])
            else:
                dependents[j].append(i)
                dependencies[i].append(j)
                edges += 1
    if self_deps:
        raise SelfDependencies(self_deps)
    if missing:
        raise UnknownDependencies(missing)

    order, level, unresolved = _topological_order(dependents, dependencies)
    if len(order) != size:
        raise DependencyCycle([ids[i] for i in _find_cycle(dependencies, unresolved)])

    waves: list[list[str]] = [[] for _ in range(max(level) + 1)]
    for i in order:
        waves[level[i]].append(ids[i])

    # Longest chain below each atom, computed in reverse topological order.
    chain = [1] * size
    next_on_chain = [-1] * size
    for i in reversed(order):
        for d in dependents[i]:
            if chain[d] + 1 > chain[i]:
                chain[i] = chain[d] + 1
                next_on_chain[i] = d
    start = max(range(size), key=lambda i: (chain[i], -i))
    path = [start]
    while next_on_chain[path[-1]] != -1:
        path.append(next_on_chain[path[-1]])

    return Plan(
        ids=tuple(ids),
        waves=tuple(tuple(wave) for wave in waves),
        critical_path=tuple(ids[i] for i in path),
        priority={ids[i]: chain[i] for i in range(size)},
        edge_count=edges,
    )


def _topological_order(
    dependents: list[list[int]], dependencies: list[list[int]]
) -> tuple[list[int], list[int], list[int]]:
    """Kahn's algorithm: the order reached, each atom's level, and each atom's count of unresolved dependencies."""
    unresolved = [len(deps) for deps in dependencies]
    level = [0] * len(dependencies)
    order = [i for i, n in enumerate(unresolved) if n == 0]
    cursor = 0
    while cursor < len(order):
        i = order[cursor]
        cursor += 1
        for d in dependents[i]:
            if level[i] + 1 > level[d]:
                level[d] = level[i] + 1
            unresolved[d] -= 1
            if unresolved[d] == 0:
                order.append(d)
    return order, level, unresolved


def _find_cycle(dependencies: list[list[int]], unresolved: list[int]) -> list[int]:
    """Follow unresolved dependencies from a stuck atom until one repeats: that loop is a cycle.

    Every atom Kahn's algorithm could not reach has at least one unreached dependency, so the walk never ends
    early; it repeats within the stuck set.
    """
    current = next(i for i, n in enumerate(unresolved) if n > 0)
    position: dict[int, int] = {}
    walk: list[int] = []
    while current not in position:
        position[current] = len(walk)
        walk.append(current)
        current = next(j for j in dependencies[current] if unresolved[j] > 0)
    return walk[position[current] :]
