"""`mge deps analyze|validate`: the file dependency graph of a project folder, and its check against tsc."""

import asyncio
import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from mge.adapters.depcruise import cruiser_edges
from mge.adapters.deps_scan import analyze_folder, tsc_edges
from mge.adapters.py_import_trace import TraceFailed, trace_python_imports
from mge.adapters.typescript import TypeScriptUnavailable
from mge.deps.compare import Agreement, agreement, seen_at_import
from mge.deps.graph import DependencyGraph, grouped_unresolved, import_cycles
from mge.deps.tsconfig import TsConfigError
from mge.deps.typescript import is_source

deps_app = typer.Typer(
    no_args_is_help=True,
    help="File-level dependency graph of a generated project.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)
USAGE_ERROR = 2

Folder = Annotated[
    Path, typer.Argument(help="Project folder (generated output or any Python/TypeScript project).")
]


def _analyze(folder: Path) -> DependencyGraph:
    if not folder.is_dir():
        errors.print(f"[bold red]error:[/] {folder} is not a folder; pass the project's root folder")
        raise typer.Exit(USAGE_ERROR)
    try:
        graph = analyze_folder(folder)
    except (TsConfigError, TypeScriptUnavailable) as error:
        errors.print(f"[bold red]error:[/] {error}", highlight=False)
        raise typer.Exit(USAGE_ERROR) from None
    if not any(is_source(file) or file.endswith(".py") for file in graph.files):
        errors.print(
            f"[bold red]error:[/] {folder} has no TypeScript/JavaScript or Python sources; pass the project's "
            "root folder"
        )
        raise typer.Exit(USAGE_ERROR)
    return graph


def graph_json(graph: DependencyGraph) -> dict[str, object]:
    return {
        "files": graph.files,
        "edges": [
            {
                "source": e.source,
                "target": e.target,
                "kind": str(e.kind),
                "line": e.line,
                "specifier": e.specifier,
            }
            | ({"via": e.via} if e.via else {})
            | ({"deferred": True} if e.deferred else {})
            for e in graph.edges
        ],
        "external": {file: sorted(mods) for file, mods in sorted(graph.external.items())},
        "unresolved": [
            {"file": u.file, "line": u.line, "specifier": u.specifier, "reason": u.reason}
            for u in graph.unresolved
        ],
        "cycles": import_cycles(graph.edges),
        "invalid": graph.invalid,
    }


@deps_app.command()
def analyze(
    folder: Folder,
    as_json: Annotated[bool, typer.Option("--json", help="Print the graph as JSON.")] = False,
) -> None:
    """Print every file edge with its kind, and every import that could not be resolved (file:line)."""
    graph = _analyze(folder)
    if as_json:
        typer.echo(json.dumps(graph_json(graph), indent=2))
        return
    for edge in graph.edges:
        via = f"  (via {edge.via})" if edge.via else ""
        deferred = "  (deferred)" if edge.deferred else ""
        console.print(
            f"{edge.source}:{edge.line} -> {edge.target}  [{edge.kind}]{via}{deferred}",
            highlight=False,
            markup=False,  # "[static]" is the kind, not a style
        )
    for unresolved in grouped_unresolved(graph.unresolved):
        console.print(f"[yellow]unresolved[/] {unresolved}", highlight=False)
    for problem in graph.invalid:
        console.print(f"[red]invalid[/] {problem}", highlight=False)
    cycles = import_cycles(graph.edges)
    for cycle in cycles:
        console.print(f"[yellow]cycle[/] {' -> '.join(cycle)}", highlight=False)
    console.print(
        f"{len(graph.files)} files, {len(graph.edges)} edges, {len(graph.unresolved)} unresolved, "
        f"{len(cycles)} import cycles" + (f", {len(graph.invalid)} invalid" if graph.invalid else ""),
        highlight=False,
    )


@deps_app.command()
def validate(
    folder: Folder,
    cruiser: Annotated[
        bool,
        typer.Option(
            "--cruiser",
            help="Also compare with dependency-cruiser (--ts-pre-compilation-deps), installed by `make setup`.",
        ),
    ] = False,
) -> None:
    """Compare our edges with ground truth: what tsc resolves (TypeScript/JavaScript) and what the Python
    interpreter imports (every module imported in the sandbox). Exit 1 on any edge we miss."""
    started = time.perf_counter()
    graph = _analyze(folder)
    ours_s = time.perf_counter() - started
    has_typescript = any(is_source(file) for file in graph.files)
    has_python = any(file.endswith(".py") for file in graph.files)
    missed = False
    if has_typescript:
        started = time.perf_counter()
        try:
            program, truth = tsc_edges(folder)
        except TypeScriptUnavailable as error:
            errors.print(f"[bold red]error:[/] {error}", highlight=False)
            raise typer.Exit(USAGE_ERROR) from None
        tsc_s = time.perf_counter() - started
        result = agreement(graph, truth, program)
        _print_agreement(
            "tsc",
            result,
            "computed dynamic import or require(): tsc cannot see it",
            f"ours {ours_s:.2f}s, tsc {tsc_s:.2f}s",
        )
        missed = bool(result.false_negative) or not _judged(result, "tsc")
        if cruiser:
            _compare_with_cruiser(folder, graph)
    if has_python:
        started = time.perf_counter()
        try:
            trace = asyncio.run(trace_python_imports(folder))
        except TraceFailed as error:
            errors.print(f"[bold red]error:[/] {error}", highlight=False)
            raise typer.Exit(USAGE_ERROR) from None
        trace_s = time.perf_counter() - started
        for module, why in sorted(trace.failed.items()):
            console.print(f"not judged  {module}: {why}", highlight=False)
        result = agreement(graph, trace.edges, trace.loaded, seen_at_import)
        _print_agreement(
            "python",
            result,
            "in a function body, under TYPE_CHECKING or `__main__`: importing does not run it",
            f"ours {ours_s:.2f}s, import trace {trace_s:.2f}s; {len(trace.loaded)} modules imported",
        )
        missed = missed or bool(result.false_negative) or not _judged(result, "the import trace")
    for unresolved in grouped_unresolved(graph.unresolved):
        console.print(f"[yellow]unresolved[/] {unresolved}", highlight=False)
    if missed:
        raise typer.Exit(1)


def _judged(result: Agreement, truth: str) -> bool:
    """False (and says so) when neither side has a single edge: 100% of nothing is no evidence."""
    if result.true_positive or result.false_positive or result.false_negative:
        return True
    console.print(
        f"[bold red]nothing judged[/]: neither {truth} nor we found an import between these files, so the "
        "figures above say nothing; validate a project whose files import each other",
        highlight=False,
    )
    return False


def _print_agreement(truth: str, result: Agreement, beyond: str | None, timing: str) -> None:
    for source, target in sorted(result.false_negative):
        console.print(f"[red]missed[/]  {source} -> {target}  ({truth} has it, we do not)", highlight=False)
    for source, target in sorted(result.false_positive):
        console.print(
            f"[yellow]extra[/]   {source} -> {target}  (we have it, {truth} does not)", highlight=False
        )
    for source, target in sorted(result.beyond_truth) if beyond else ():
        console.print(f"beyond  {source} -> {target}  ({beyond})", highlight=False)
    console.print(
        f"{truth}: precision {result.precision:.1%}  recall {result.recall:.1%}  F1 {result.f1:.1%}  "
        f"({len(result.true_positive)} agreed, {len(result.false_positive)} extra, {len(result.false_negative)} missed; "
        f"{timing})",
        highlight=False,
    )


def _compare_with_cruiser(folder: Path, graph: DependencyGraph) -> None:
    """Informational: dependency-cruiser is a second opinion, tsc stays the ground truth (and the exit code)."""
    started = time.perf_counter()
    try:
        theirs = cruiser_edges(folder)
    except TypeScriptUnavailable as error:
        errors.print(f"[bold red]error:[/] {error}", highlight=False)
        raise typer.Exit(USAGE_ERROR) from None
    cruiser_s = time.perf_counter() - started
    result = agreement(graph, theirs, {file for file in graph.files if is_source(file)})
    _print_agreement(
        "dependency-cruiser", result, None, f"dependency-cruiser {cruiser_s:.2f}s; tsc decides the exit code"
    )
