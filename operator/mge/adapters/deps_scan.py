"""Reads a project folder for the dependency analyzer: files, tsconfig chain, package.json maps, sources, tsc."""

import json
import os
import posixpath
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from mge.adapters.source_reader import scan_sources
from mge.adapters.typescript import TypeScriptUnavailable, node_modules_path
from mge.deps.compare import PlanCheck, check_plan
from mge.deps.graph import DependencyGraph, EdgeKind
from mge.deps.python import analyze_python
from mge.deps.tsconfig import TsConfig, TsConfigError, extends_of, merge_chain, parse_jsonc
from mge.deps.typescript import Resolver, SourceFacts, Specifier, analyze_typescript, is_source

# Never part of the project's own sources.
SKIPPED_DIRS = frozenset({"node_modules", ".git", ".venv", "venv", "__pycache__", ".mge", ".mypy_cache"})
MAX_EXTENDS = 16


def project_files(root: Path) -> list[str]:
    """Project-relative POSIX paths of every file under `root` outside dependency and cache folders."""
    found: list[str] = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in SKIPPED_DIRS)
        relative = Path(directory).relative_to(root).as_posix()
        for name in names:
            found.append(name if relative == "." else f"{relative}/{name}")
    return sorted(found)


def _extends_path(root: Path, config_dir: Path, target: str) -> Path:
    if target.startswith((".", "/")):
        path = (config_dir / target).resolve()
    else:
        path = root / "node_modules" / target
        if path.is_dir():
            path = path / "tsconfig.json"
    if not path.exists() and path.suffix != ".json":
        path = path.with_name(path.name + ".json")
    return path


def load_tsconfig(root: Path, name: str = "tsconfig.json") -> TsConfig:
    """The project's tsconfig with its `extends` chain (relative files and packages) merged; defaults if none."""
    path = root / name
    if not path.exists():
        return TsConfig(allow_js=True, resolve_json=True)
    chain: list[tuple[str, dict[str, Any]]] = []
    pending = [path.resolve()]
    while pending:
        current = pending.pop()
        if len(chain) > MAX_EXTENDS:
            raise TsConfigError(f"{path}: `extends` chain longer than {MAX_EXTENDS} (a cycle?)")
        if not current.exists():
            raise TsConfigError(f"{path}: extends {current}, which does not exist; fix `extends`")
        config = parse_jsonc(current.read_text(), str(current))
        directory = posixpath.normpath(os.path.relpath(current.parent, root.resolve()).replace(os.sep, "/"))
        chain.insert(0, (directory, config))
        # An array extends in order, later entries overriding earlier ones: visit the last one first.
        pending.extend(_extends_path(root.resolve(), current.parent, target) for target in extends_of(config))
    return merge_chain(chain)


def _packages(root: Path, files: list[str]) -> dict[str, dict[str, Any]]:
    packages: dict[str, dict[str, Any]] = {}
    for file in files:
        if posixpath.basename(file) == "package.json":
            try:
                content = json.loads((root / file).read_text())
            except (OSError, ValueError):
                continue
            if isinstance(content, dict):
                directory = posixpath.dirname(file)
                packages[directory] = content
    return packages


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        raise TypeScriptUnavailable(
            "`node` is not on PATH; install Node.js 18+ to analyse TypeScript projects"
        )
    return node


def analyze_folder(root: Path, tsconfig: str = "tsconfig.json", sources_under: str = "") -> DependencyGraph:
    """The file graph of every Python and TypeScript/JavaScript source under `root`.

    `sources_under` limits the parsed sources to one folder (a package's `src/` next to its `dist/`);
    resolution still sees every file.
    """
    files = project_files(root)
    parsed = [file for file in files if file.startswith(sources_under)]
    python = {file: (root / file).read_text(errors="replace") for file in parsed if file.endswith(".py")}
    graph = analyze_python(python)
    sources = [file for file in parsed if is_source(file)]
    if sources:
        resolver = Resolver(files, load_tsconfig(root, tsconfig), _packages(root, files))
        facts, invalid = read_partial_again(root, scan_sources(root, sources))
        graph = graph.merge(analyze_typescript(facts, resolver))
        graph.invalid = sorted({*graph.invalid, *invalid})
    return graph


# The compiler reads a few hundred files a second once started: even effect's 187 such files take seconds.
_COMPILER_TIMEOUT_S = 300


def read_partial_again(root: Path, facts: list[SourceFacts]) -> tuple[list[SourceFacts], list[str]]:
    """Files tree-sitter could not read whole, read again with the TypeScript compiler's parser (which reads
    all valid TypeScript); with the compiler's syntax errors of the files that are really invalid."""
    partial = [f.file for f in facts if f.partial]
    if not partial:
        return facts, []
    try:
        node, modules = _node(), node_modules_path()
    except TypeScriptUnavailable as error:
        return facts, [f"{file}: tree-sitter could not read it whole and {error}" for file in partial]
    with tempfile.TemporaryDirectory(prefix="mge-ts-facts-") as work:
        requests, answers = Path(work) / "requests.json", Path(work) / "answers.json"
        requests.write_text(
            json.dumps([{"file": f, "code": (root / f).read_text(errors="replace")} for f in partial])
        )
        script = resources.files("mge.adapters") / "ts_facts.js"
        try:
            done = subprocess.run(
                [node, str(script), str(requests), str(answers)],
                env={**os.environ, "NODE_PATH": str(modules)},
                capture_output=True,
                text=True,
                timeout=_COMPILER_TIMEOUT_S,
                check=False,
            )
            failure = (done.stderr.strip().splitlines() or ["no output"])[-1] if done.returncode else ""
        except subprocess.TimeoutExpired:
            failure = f"no answer within {_COMPILER_TIMEOUT_S} s"
        if failure:
            return facts, [
                f"{file}: tree-sitter could not read it whole and the compiler failed: {failure}"
                for file in partial
            ]
        read = {answer["file"]: answer for answer in json.loads(answers.read_text())}
    invalid = [error for answer in read.values() for error in answer["errors"]]
    return [_compiler_facts(read[f.file]) if f.file in read else f for f in facts], invalid


def _compiler_facts(answer: dict[str, Any]) -> SourceFacts:
    def pairs(value: list[list[str]] | None) -> tuple[tuple[str, str], ...] | None:
        return None if value is None else tuple((a, b) for a, b in value)

    return SourceFacts(
        file=answer["file"],
        specifiers=tuple(
            Specifier(
                specifier=s["specifier"],
                line=s["line"],
                kind=EdgeKind(s["kind"]),
                names=tuple(s["names"]) if s.get("names") is not None else None,
                reexports=pairs(s.get("reexports")),
                prefix=s.get("prefix"),
                suffix=s.get("suffix", ""),
                text=s.get("text", ""),
            )
            for s in answer["specifiers"]
        ),
        exports=frozenset(answer["exports"]),
    )


_IMPORTED = re.compile(r"^\s+(?:Imported|Referenced) via .+? from file '(?P<source>[^']+)'")


def tsc_edges(root: Path, tsconfig: str = "tsconfig.json") -> tuple[set[str], set[tuple[str, str]]]:
    """Ground truth from tsc `--explainFiles`: the program's project files and who imports each one."""
    root = root.resolve()
    tsc = node_modules_path() / "typescript" / "bin" / "tsc"
    # --listFilesOnly stops after module resolution: the explanation without a type check.
    command = [_node(), str(tsc), "--noEmit", "--explainFiles", "--listFilesOnly", "--pretty", "false"]
    if (root / tsconfig).exists():
        command += ["-p", str(root / tsconfig)]
    else:
        sources = [file for file in project_files(root) if is_source(file)]
        command += [
            "--allowJs", "--resolveJsonModule", "--module", "esnext", "--moduleResolution", "bundler",
            "--target", "es2022", "--skipLibCheck", *sources,
        ]  # fmt: skip
    completed = subprocess.run(command, cwd=root, capture_output=True, text=True, check=False)
    program: set[str] = set()
    pairs: set[tuple[str, str]] = set()
    current: str | None = None
    base = root.resolve()
    for line in completed.stdout.splitlines():
        if not line.startswith(" ") and not re.match(r"^\S+\(\d+,\d+\): error", line):
            current = _project_path(base, line.strip())
            if current is not None:
                program.add(current)
            continue
        match = _IMPORTED.match(line)
        if match and current is not None:
            source = _project_path(base, match["source"])
            if source is not None:
                pairs.add((source, current))
    return program, pairs


def _project_path(base: Path, written: str) -> str | None:
    path = (base / written).resolve()
    try:
        relative = path.relative_to(base).as_posix()
    except ValueError:
        return None
    return None if relative.split("/")[0] in SKIPPED_DIRS or "/node_modules/" in relative else relative


def check_generated(atoms: Iterable[tuple[str, str, Sequence[str]]], root: Path) -> PlanCheck | str:
    """The plan's dependsOn against the generated project, or why the project could not be analysed."""
    try:
        return check_plan(atoms, analyze_folder(root))
    except (TsConfigError, TypeScriptUnavailable, OSError) as error:
        return f"dependencies not checked: {error}"


def check_outputs(
    atoms: Iterable[tuple[str, str, Sequence[str]]], outputs: Iterable[tuple[str, str]]
) -> PlanCheck | str:
    """`check_generated` on generated files kept elsewhere (the store): written to a scratch folder first."""
    with tempfile.TemporaryDirectory(prefix="mge-deps-") as scratch:
        root = Path(scratch).resolve()
        for file, text in outputs:
            relative = _project_path(root, file)
            if relative is None:  # the CRD only admits relative paths; never write outside the folder
                continue
            target = root / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        return check_generated(atoms, root)
