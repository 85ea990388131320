"""Python dependency analysis on real packages from our own environment (rich, click, typer).

Ground truth: what the interpreter executes when every module is imported in the sandbox (see
docs/deps.md). Side by side: ours and the standard library's `modulefinder` (bytecode scan of
IMPORT_NAME), each scored on the same judged edges, with their analysis times and the ratio.
"""

import asyncio
import importlib.util
import modulefinder
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from mge.adapters.deps_scan import analyze_folder
from mge.adapters.py_import_trace import trace_python_imports
from mge.deps.compare import agreement, seen_at_import
from mge.deps.graph import DependencyGraph, Edge, EdgeKind
from tests.bench.common import median_time, print_table

PACKAGES = ("rich", "click", "typer")
RUNS = 3


def _copy(package: str, into: Path) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        sys.exit(f"{package} is not installed: run `make setup`")
    root = into / package
    shutil.copytree(Path(spec.origin).parent, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    return root


class _EdgeFinder(modulefinder.ModuleFinder):
    """modulefinder records which modules exist; this keeps who imported which (its import_hook's caller)."""

    def __init__(self, root: Path) -> None:
        super().__init__(path=[str(root)])
        self.root = root
        self.edges: set[tuple[str, str]] = set()

    def import_hook(self, name: str, caller: Any = None, fromlist: Any = None, level: int = -1) -> Any:
        found = super().import_hook(name, caller, fromlist, level)
        if caller is not None and caller.__file__:
            targets = [found] if not fromlist else []
            base = self.modules.get(found.__name__) if found is not None else None
            for item in fromlist or ():
                sub = self.modules.get(f"{base.__name__}.{item}") if base is not None else None
                targets.append(sub if sub is not None else base)
            for target in targets:
                if target is not None and target.__file__:
                    self.edges.add((caller.__file__, target.__file__))
        return found


def modulefinder_edges(root: Path) -> set[tuple[str, str]]:
    finder = _EdgeFinder(root)
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        try:
            finder.import_hook(".".join(parts))
        except ImportError:
            continue
    relative: set[tuple[str, str]] = set()
    for source, target in finder.edges:
        try:
            pair = (Path(source).relative_to(root).as_posix(), Path(target).relative_to(root).as_posix())
        except ValueError:  # the standard library or site-packages
            continue
        if pair[0] != pair[1]:
            relative.add(pair)
    return relative


def _as_graph(pairs: set[tuple[str, str]]) -> DependencyGraph:
    return DependencyGraph(edges=[Edge(s, t, EdgeKind.STATIC, 0, "") for s, t in sorted(pairs)])


def main() -> None:
    accuracy, timing = [], []
    with tempfile.TemporaryDirectory(prefix="mge-bench-deps-py-") as scratch:
        for package in PACKAGES:
            root = _copy(package, Path(scratch))
            trace = asyncio.run(trace_python_imports(root))
            graph, ours_s = median_time(lambda root=root: analyze_folder(root), RUNS)
            ours = agreement(graph, trace.edges, trace.loaded, seen_at_import)
            found, finder_s = median_time(lambda root=root: modulefinder_edges(root), RUNS)
            # modulefinder cannot tell deferred imports apart: only edges the interpreter ran are judged.
            theirs = agreement(_as_graph(found), trace.edges, trace.loaded)
            accuracy.append(
                (package, len(graph.files), len(trace.loaded), len(trace.edges),
                 f"{ours.precision:.2%}", f"{ours.recall:.2%}", len(ours.false_negative), len(ours.false_positive),
                 f"{theirs.precision:.2%}", f"{theirs.recall:.2%}")
            )  # fmt: skip
            timing.append((package, f"{ours_s:.3f}", f"{finder_s:.3f}", f"{finder_s / ours_s:.2f}x"))
            for source, target in sorted(ours.false_positive | ours.false_negative):
                kind = "missed" if (source, target) in ours.false_negative else "extra"
                print(f"  {package}: {kind} {source} -> {target}")
    print("Python edges vs the interpreter's own imports (precision / recall):")
    print_table(
        ("package", "files", "modules imported", "runtime edges", "ours P", "ours R", "missed", "extra",
         "modulefinder P", "modulefinder R"),
        accuracy,
    )  # fmt: skip
    print(f"\nAnalysis time, median of {RUNS} (s); ratio = modulefinder time / ours:")
    print_table(("package", "ours", "modulefinder", "modulefinder/ours"), timing)


if __name__ == "__main__":
    main()
