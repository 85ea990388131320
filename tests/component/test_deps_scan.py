"""The analyzer on fixture projects with the real parser processes, checked against the real tsc (`--explainFiles`)."""

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mge.adapters.deps_scan import analyze_folder, load_tsconfig, project_files, tsc_edges
from mge.adapters.source_reader import _read_with_second_process, frame, frames, read_file, scan_sources
from mge.cli import app
from mge.deps.compare import agreement
from mge.deps.graph import EdgeKind

FIXTURES = Path(__file__).parent.parent / "fixtures" / "deps"
TS = FIXTURES / "ts-edges"
PY = FIXTURES / "py-edges"

pytestmark = pytest.mark.component


@pytest.fixture(scope="module")
def ts_graph():  # type: ignore[no-untyped-def]
    return analyze_folder(TS)


def _kinds(graph, source: str) -> dict[str, set[EdgeKind]]:  # type: ignore[no-untyped-def]
    found: dict[str, set[EdgeKind]] = {}
    for edge in graph.edges:
        if edge.source == source and edge.via is None:
            found.setdefault(edge.target, set()).add(edge.kind)
    return found


def test_every_edge_tsc_resolves_is_found_and_nothing_more(ts_graph) -> None:  # type: ignore[no-untyped-def]
    program, truth = tsc_edges(TS)
    result = agreement(ts_graph, truth, program)
    assert len(truth) >= 20
    assert result.false_negative == set()
    assert result.false_positive == set()


def test_each_edge_kind_of_the_entry_file(ts_graph) -> None:  # type: ignore[no-untyped-def]
    kinds = _kinds(ts_graph, "src/index.ts")
    assert kinds["src/polyfill.ts"] == {EdgeKind.SIDE_EFFECT}
    assert kinds["src/models/index.ts"] == {EdgeKind.TYPE}
    assert kinds["src/util/strings.ts"] == {EdgeKind.DYNAMIC}
    assert kinds["src/locales/en.ts"] == kinds["src/locales/fr.ts"] == {EdgeKind.DYNAMIC}
    # The alias `lodash` in tsconfig paths shadows the npm package of that name.
    assert "src/vendor/lodash/index.ts" in kinds
    assert "src/internal/secret.ts" in kinds  # package.json "imports" (#internal/*), types condition
    assert "src/feature/index.ts" in kinds  # self-reference through conditional "exports"
    assert "src/legacy/old.d.cts" in kinds  # ./legacy/old.cjs is typed by its .d.cts, as tsc does
    assert _kinds(ts_graph, "src/legacy/old.cjs")["src/legacy/helper.js"] == {EdgeKind.REQUIRE}
    assert _kinds(ts_graph, "src/lib/index.ts")["src/lib/math.ts"] == {EdgeKind.RE_EXPORT}


def test_barrels_are_followed_to_the_defining_files(ts_graph) -> None:  # type: ignore[no-untyped-def]
    followed = {(e.target, e.via) for e in ts_graph.edges if e.source == "src/index.ts" and e.via}
    assert ("src/lib/clamp.ts", "src/lib/index.ts") in followed  # export * -> export * -> clamp
    assert ("src/lib/timing.ts", "src/lib/index.ts") in followed  # export { debounce } from
    assert ("src/models/user.ts", "src/models/index.ts") in followed


def test_computed_dynamic_import_is_reported_with_its_line(ts_graph) -> None:  # type: ignore[no-untyped-def]
    assert [str(u) for u in ts_graph.unresolved] == [
        "src/index.ts:19: name (dynamic import with a computed specifier)"
    ]


def test_tsconfig_extends_chain_supplies_paths_relative_to_its_base_url() -> None:
    config = load_tsconfig(TS)
    assert config.paths["@lib/*"] == ["src/lib/*"]
    assert config.base_url == ""
    assert config.allow_js


def test_python_fixture_edges() -> None:
    graph = analyze_folder(PY)
    pairs = {(e.source, e.target, e.kind) for e in graph.edges}
    assert ("app/services/billing.py", "app/services/audit.py", EdgeKind.STATIC) in pairs
    assert ("app/services/audit.py", "app/services/billing.py", EdgeKind.STATIC) in pairs  # circular
    assert ("app/services/billing.py", "app/config.py", EdgeKind.TYPE) in pairs
    assert ("app/services/audit.py", "plugins/sink.py", EdgeKind.DYNAMIC) in pairs
    assert ("main.py", "app/services/billing.py", EdgeKind.RE_EXPORT) in pairs
    assert [u.line for u in graph.unresolved] == [6]


def test_validate_command_prints_figures_and_passes_on_the_fixture() -> None:
    result = CliRunner().invoke(app, ["deps", "validate", str(TS)])
    assert result.exit_code == 0, result.output
    assert "recall 100.0%" in result.output


def test_validate_with_cruiser_prints_where_dependency_cruiser_disagrees() -> None:
    """tsc agrees with every edge of the fixture; dependency-cruiser resolves the `.cjs` where tsc (and we)
    take its `.d.cts` declarations, and does not see the package `imports` map or the conditional `exports`."""
    result = CliRunner().invoke(app, ["deps", "validate", str(TS), "--cruiser"])
    assert result.exit_code == 0, result.output
    assert "recall 100.0%  F1 100.0%" in result.output
    assert (
        "missed  src/index.ts -> src/legacy/old.cjs  (dependency-cruiser has it, we do not)" in result.output
    )
    assert (
        "extra   src/index.ts -> src/legacy/old.d.cts  (we have it, dependency-cruiser does not)"
        in result.output
    )
    assert "dependency-cruiser: precision 87.5%  recall 95.5%  F1 91.3%  (21 agreed" in result.output


def test_validate_fails_when_an_import_is_missed(tmp_path: Path) -> None:
    """`typesVersions` redirects are a documented gap of the analyzer (docs/deps.md): tsc follows this one,
    we do not, and validate must say so and fail."""
    (tmp_path / "pkg" / "ts4").mkdir(parents=True)
    (tmp_path / "pkg" / "package.json").write_text(
        '{"types": "index.d.ts", "typesVersions": {"*": {"index.d.ts": ["ts4/index.d.ts"]}}}'
    )
    (tmp_path / "pkg" / "ts4" / "index.d.ts").write_text("export const x: number;\n")
    (tmp_path / "main.ts").write_text('import { x } from "./pkg";\nconsole.log(x);\n')
    result = CliRunner().invoke(app, ["deps", "validate", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert "missed  main.ts -> pkg/ts4/index.d.ts" in result.output


def test_analyze_json_lists_edges(tmp_path: Path) -> None:
    (tmp_path / "a.ts").write_text('import "./b";\n')
    (tmp_path / "b.ts").write_text("export {};\n")
    result = CliRunner().invoke(app, ["deps", "analyze", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    assert '"kind": "side-effect"' in result.output


def test_computed_require_and_a_missing_folder_are_reported(tmp_path: Path) -> None:
    (tmp_path / "a.js").write_text("const name = 'x';\nconst m = require(name);\n")
    graph = analyze_folder(tmp_path)
    assert [str(u) for u in graph.unresolved] == ["a.js:2: name (require() with a computed argument)"]
    result = CliRunner().invoke(app, ["deps", "analyze", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert "is not a folder" in result.output


def test_validate_compares_python_with_what_the_interpreter_imports() -> None:
    """Ground truth: every module imported in the sandbox with __import__/import_module traced."""
    result = CliRunner().invoke(app, ["deps", "validate", str(FIXTURES / "py-edges")])
    assert result.exit_code == 0, result.output
    assert "python: precision 100.0%  recall 100.0%  F1 100.0%  (6 agreed" in result.output
    # Imports in a function body are real dependencies the interpreter does not run at import time.
    assert "beyond  plugins/loader.py -> plugins/sink.py  (in a function body" in result.output


def test_validate_fails_when_the_interpreter_imports_what_we_cannot_see(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("import importlib\nNAME = 'b'\nimportlib.import_module(NAME)\n")
    (tmp_path / "b.py").write_text("VALUE = 1\n")
    (tmp_path / "broken.py").write_text("import b\nraise RuntimeError('needs a database')\n")
    result = CliRunner().invoke(app, ["deps", "validate", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert "missed  a.py -> b.py  (python has it, we do not)" in result.output
    assert "unresolved a.py:3: import_module(NAME) (dynamic import with a computed name)" in result.output
    # A module that fails to import is not judged (its edges are not ground truth).
    assert "not judged  broken: RuntimeError: needs a database" in result.output


def test_analyze_prints_each_edge_with_its_kind() -> None:
    result = CliRunner().invoke(app, ["deps", "analyze", str(PY)])
    assert result.exit_code == 0, result.output
    assert (
        "app/__init__.py:3 -> app/models/user.py  [re-export]  (via app/models/__init__.py)" in result.output
    )
    assert "app/services/audit.py:6 -> app/services/billing.py  [static]  (deferred)" in result.output


def _many_files(root: Path, count: int = 24) -> list[str]:
    body = "".join(f"export function f{i}(x: number): number {{ return x * {i}; }}\n" for i in range(900))
    for index in range(count):
        (root / f"m{index:02}.ts").write_text(
            f'import {{ f1 }} from "./m{(index + 1) % count:02}";\n'
            f'export * from "./m{(index + 2) % count:02}.js";\n'
            f"const lazy = () => import(`./m${{{index}}}.ts`);\n{body}"
        )
    return [file for file in project_files(root) if file.endswith(".ts")]


@pytest.mark.parametrize("fork", [True, False], ids=["fork", "new-interpreter"])
def test_sources_read_by_two_processes_give_the_facts_of_one(tmp_path: Path, fork: bool) -> None:
    files = _many_files(tmp_path, count=12)
    split, _ = _read_with_second_process(tmp_path, files, fork=fork)
    assert split == scan_sources(tmp_path, files, processes=1)
    assert [facts.file for facts in split] == files
    assert {"f0", "f899"} <= split[-1].exports


def test_second_process_reads_from_the_end_until_it_meets_the_files_taken_by_the_parent(
    tmp_path: Path,
) -> None:
    files = _many_files(tmp_path, count=6)
    # The parent has taken files 0-2 before the second process looks.
    taken = b"".join(index.to_bytes(4, "little") for index in range(3))
    completed = subprocess.run(
        [sys.executable, "-m", "mge.adapters.source_reader"],
        input=frame((str(tmp_path), files)) + taken,
        capture_output=True,
        check=True,
    )
    messages = list(frames(bytearray(completed.stdout)))
    assert [message[:2] for message in messages] == [
        ("take", 5), ("read", 5), ("take", 4), ("read", 4), ("take", 3), ("read", 3),
    ]  # fmt: skip
    assert messages[1][2] == read_file(tmp_path, files[5])


def test_files_a_dying_second_process_took_are_read_by_the_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A real interpreter cannot be made to crash mid-run, so a stand-in takes the last file and exits 1."""
    files = _many_files(tmp_path, count=24)  # long enough to read here for the stand-in to take one
    crash = tmp_path / "crashing-python"
    crash.write_text(
        f"#!/bin/sh\nexec {sys.executable} -c '"
        "import os, pickle, struct\n"
        "os.read(0, 1 << 20)\n"
        f'payload = pickle.dumps(("take", {len(files) - 1}))\n'
        'os.write(1, struct.pack("<I", len(payload)) + payload)\n'
        "raise SystemExit(1)'\n"
    )
    crash.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(crash))
    facts, by_second = _read_with_second_process(tmp_path, files, fork=False)
    assert [fact.file for fact in facts] == files
    assert by_second == 0
    assert "the second source reader process failed (exit 1)" in caplog.text


def test_sources_are_read_in_one_process_when_a_second_cannot_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    files = _many_files(tmp_path, count=3)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    facts, by_second = _read_with_second_process(tmp_path, files, fork=False)
    assert [fact.file for fact in facts] == files
    assert by_second == 0
    assert "could not start" in caplog.text


def test_analyze_of_a_folder_without_sources_fails_like_validate(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "notes.md").write_text("# nothing to analyze\n")
    for command in ("analyze", "validate"):
        result = CliRunner().invoke(app, ["deps", command, str(tmp_path)])
        assert result.exit_code == 2, (command, result.output)
        assert "has no TypeScript/JavaScript or Python sources" in " ".join(result.output.split())


def test_validate_says_so_and_fails_when_nothing_could_be_judged(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "a.ts").write_text("export const a = 1;\n")
    (tmp_path / "b.ts").write_text("export const b = 2;\n")

    result = CliRunner().invoke(app, ["deps", "validate", str(tmp_path)])

    assert result.exit_code == 1, result.output
    assert "nothing judged: neither tsc nor we found an import" in " ".join(result.output.split())
