"""Valid TypeScript tree-sitter cannot read (an interface call signature with a constrained generic, variance
annotations) is read again with the TypeScript compiler's parser; really invalid files are reported.

Real tree-sitter, real Node.js + typescript, real tsc as the judge.
"""

from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mge.adapters.deps_scan import analyze_folder, read_partial_again
from mge.adapters.typescript import node_modules_path
from mge.cli import app
from mge.deps.graph import EdgeKind
from mge.deps.ts_source import read_source

pytestmark = pytest.mark.component

# mobx@7.1.3 src/api/action.ts's shape: tree-sitter-typescript 0.23.2 turns the whole file into one ERROR node.
ACTION = """export interface IActionFactory extends Annotation, PropertyDecorator {
    // nameless actions
    <T extends Function | undefined | null>(fn: T): T
    // named actions
    <T extends Function | undefined | null>(name: string, fn: T): T

    // named decorator
    (customName: string): PropertyDecorator & Annotation

    bound: Annotation & PropertyDecorator
}
export * from "./other"
export const late = () => import("./late")
export function after(): void {}
interface Variance<out A, in B> { a: A; b: (b: B) => void }
export type { Variance }
"""


def _project(root: Path, **files: str) -> Path:
    for name, text in {
        "src/action.ts": ACTION,
        "src/other.ts": "export const other = 1\n",
        "src/late.ts": "export const late = 2\n",
        "src/use.ts": 'import { other, after } from "./action"\nexport const x = [other, after]\n',
        **files,
    }.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_tree_sitter_alone_loses_the_file_after_the_call_signature():
    """The baseline this fallback exists for: if this starts passing, the grammar got fixed."""
    facts = read_source("src/action.ts", ACTION.encode())
    assert facts.partial
    assert "after" not in facts.exports
    assert not any(s.kind is EdgeKind.RE_EXPORT for s in facts.specifiers)


def test_the_compiler_reads_what_tree_sitter_could_not(tmp_path):
    graph = analyze_folder(_project(tmp_path))
    edges = {(e.source, e.target, e.kind) for e in graph.edges}
    assert ("src/action.ts", "src/other.ts", EdgeKind.RE_EXPORT) in edges
    assert ("src/action.ts", "src/late.ts", EdgeKind.DYNAMIC) in edges  # dynamic, not a type import
    # `other` is found through the barrel, `after` is the barrel's own export: both resolve.
    assert ("src/use.ts", "src/other.ts", EdgeKind.STATIC) in edges
    assert graph.unresolved == []
    assert graph.invalid == []


def test_validate_agrees_with_tsc_on_such_a_file(tmp_path):
    result = CliRunner().invoke(app, ["deps", "validate", str(_project(tmp_path))])
    assert result.exit_code == 0, result.output
    assert "recall 100.0%" in result.output


def test_a_really_invalid_file_is_reported_with_the_compilers_error_and_the_rest_still_read(tmp_path):
    project = _project(tmp_path, **{"src/broken.ts": 'import { other } from "./other"\nexport const b = (\n'})
    graph = analyze_folder(project)
    assert any(p.startswith("src/broken.ts:2:") and "TS1" in p for p in graph.invalid), graph.invalid
    assert ("src/broken.ts", "src/other.ts") in graph.all_pairs()
    result = CliRunner().invoke(app, ["deps", "analyze", str(project)])
    assert "invalid src/broken.ts:" in result.output
    assert "1 invalid" in result.output or "2 invalid" in result.output


ZOD_VARIANCE_FILES = ["v4/core/schemas.ts", "v4/classic/schemas.ts", "v4/mini/schemas.ts"]


def test_zods_variance_annotated_files_are_read_whole_by_tree_sitter_as_the_compiler_reads_them():
    """zod 4.6.7 (installed by `make setup`) writes `<out O, out I>`: tree-sitter's reading of those files,
    taken whole, must match the compiler's reading field for field."""
    root = node_modules_path() / "zod" / "src"
    ours = [read_source(file, (root / file).read_bytes()) for file in ZOD_VARIANCE_FILES]
    assert not any(facts.partial for facts in ours)
    compilers, invalid = read_partial_again(root, [replace(facts, partial=True) for facts in ours])
    assert invalid == []
    for tree_sitters, compiler in zip(ours, compilers, strict=True):
        assert sorted(map(repr, tree_sitters.specifiers)) == sorted(map(repr, compiler.specifiers))
        assert tree_sitters.exports == compiler.exports
        assert len(compiler.exports) > 50
