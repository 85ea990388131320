"""The dependency graph's vocabulary: edges between project files, external modules, unresolved imports."""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final


class EdgeKind(StrEnum):
    STATIC = "static"
    TYPE = "type"
    SIDE_EFFECT = "side-effect"
    DYNAMIC = "dynamic"
    REQUIRE = "require"
    RE_EXPORT = "re-export"
    # Python: importing `a.b.c` first runs `a/__init__.py` and `a/b/__init__.py`. A runtime dependency, but
    # not one the importing code's author relies on, and packages often import their own submodules.
    PACKAGE = "package"


@dataclass(frozen=True, order=True)
class Edge:
    """`source` needs `target` (both project-relative paths); `via` names the barrel it was followed through.

    `deferred`: the import runs only when a function is called (Python imports in function bodies), so
    importing the module does not execute it; the dependency is just as real.
    """

    source: str
    target: str
    kind: EdgeKind
    line: int
    specifier: str
    via: str | None = None
    deferred: bool = False


@dataclass(frozen=True, order=True)
class Unresolved:
    """An import the analyzer could not tie to a file: reported with its location, never dropped."""

    file: str
    line: int
    specifier: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.specifier} ({self.reason})"


def grouped_unresolved(unresolved: Sequence[Unresolved]) -> list[str]:
    """One line per source line and reason: a line that probes several paths (`../x`, `../../x`, ...) is
    one problem, not one per path."""
    groups: dict[tuple[str, int, str], list[str]] = {}
    for item in unresolved:
        groups.setdefault((item.file, item.line, item.reason), []).append(item.specifier)
    return [
        f"{file}:{line}: {', '.join(specifiers)} ({reason})"
        for (file, line, reason), specifiers in groups.items()
    ]


@dataclass
class DependencyGraph:
    files: list[str] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    # Imports of packages outside the project (node_modules, site-packages): file -> module names.
    external: dict[str, set[str]] = field(default_factory=dict)
    unresolved: list[Unresolved] = field(default_factory=list)
    # Sources that are not valid code ("file:line:col: message"), and what could not be read exactly.
    invalid: list[str] = field(default_factory=list)

    def merge(self, other: "DependencyGraph") -> "DependencyGraph":
        external = {name: set(mods) for name, mods in self.external.items()}
        for name, mods in other.external.items():
            external.setdefault(name, set()).update(mods)
        return DependencyGraph(
            files=sorted({*self.files, *other.files}),
            edges=sorted({*self.edges, *other.edges}),
            external=external,
            unresolved=sorted({*self.unresolved, *other.unresolved}),
            invalid=sorted({*self.invalid, *other.invalid}),
        )

    def direct_pairs(self) -> set[tuple[str, str]]:
        """Source/target pairs written in the source files (not those found by following barrels)."""
        return {(e.source, e.target) for e in self.edges if e.via is None and e.source != e.target}

    def all_pairs(self) -> set[tuple[str, str]]:
        return {(e.source, e.target) for e in self.edges if e.source != e.target}


# Edges that run when the importing module loads. Type-only imports are erased, deferred and dynamic imports
# run later, and a package's own __init__ importing its submodules is the usual layout: none of these is a
# load-order cycle.
_LOAD_TIME: Final = frozenset({EdgeKind.STATIC, EdgeKind.SIDE_EFFECT, EdgeKind.REQUIRE, EdgeKind.RE_EXPORT})


def import_cycles(edges: Iterable[Edge]) -> list[list[str]]:
    """Files that import each other when they load, one cycle per strongly connected group, each as a path
    that starts and ends at its smallest file (`a -> b -> a`), sorted."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        if edge.kind in _LOAD_TIME and not edge.deferred and edge.via is None and edge.source != edge.target:
            graph.setdefault(edge.source, set()).add(edge.target)
            graph.setdefault(edge.target, set())
    return sorted(_cycle_through(component, graph) for component in _components(graph) if len(component) > 1)


def _components(graph: Mapping[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components, iterative (a long import chain must not hit the recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, targets = work[-1]
            target = next(targets, None)
            if target is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    found.append(component)
            elif target not in index:
                index[target] = low[target] = len(index)
                stack.append(target)
                on_stack.add(target)
                work.append((target, iter(sorted(graph[target]))))
            elif target in on_stack:
                low[node] = min(low[node], index[target])
    return found


def _cycle_through(component: set[str], graph: Mapping[str, set[str]]) -> list[str]:
    """A shortest cycle through the component's smallest file (breadth-first inside the component)."""
    start = min(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & component):
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if target not in previous:
                    previous[target] = node
                    following.append(target)
        frontier = following
    raise AssertionError("a strongly connected component always has a cycle through each member")
