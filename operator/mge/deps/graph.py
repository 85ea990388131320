"""The dependency graph's vocabulary: edges between project files, external modules, unresolved imports."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum


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

    def merge(self, other: "DependencyGraph") -> "DependencyGraph":
        external = {name: set(mods) for name, mods in self.external.items()}
        for name, mods in other.external.items():
            external.setdefault(name, set()).update(mods)
        return DependencyGraph(
            files=sorted({*self.files, *other.files}),
            edges=sorted({*self.edges, *other.edges}),
            external=external,
            unresolved=sorted({*self.unresolved, *other.unresolved}),
        )

    def direct_pairs(self) -> set[tuple[str, str]]:
        """Source/target pairs written in the source files (not those found by following barrels)."""
        return {(e.source, e.target) for e in self.edges if e.via is None and e.source != e.target}

    def all_pairs(self) -> set[tuple[str, str]]:
        return {(e.source, e.target) for e in self.edges if e.source != e.target}
