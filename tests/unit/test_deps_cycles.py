"""Import cycles: files that import each other when they load, found in the graph and shown by `mge deps analyze`."""

import itertools
import json

from typer.testing import CliRunner

from mge.cli import app
from mge.deps.graph import Edge, EdgeKind, import_cycles


def _edge(source, target, kind=EdgeKind.STATIC, **extra):
    return Edge(source, target, kind, 1, f"./{target}", **extra)


def test_each_cycle_is_one_path_from_its_smallest_file():
    edges = [
        _edge("c.ts", "a.ts"),
        _edge("a.ts", "b.ts"),
        _edge("b.ts", "c.ts"),
        _edge("b.ts", "d.ts"),  # d is outside the cycle
        _edge("x.py", "y.py"),
        _edge("y.py", "x.py"),
    ]
    assert import_cycles(edges) == [["a.ts", "b.ts", "c.ts", "a.ts"], ["x.py", "y.py", "x.py"]]


def test_the_shortest_cycle_through_a_tangled_group_is_shown():
    edges = [_edge("a", "b"), _edge("b", "c"), _edge("c", "d"), _edge("d", "a"), _edge("b", "a")]
    assert import_cycles(edges) == [["a", "b", "a"]]


def test_imports_that_do_not_run_at_load_time_make_no_cycle():
    for back in (
        _edge("b.ts", "a.ts", EdgeKind.TYPE),
        _edge("b.ts", "a.ts", EdgeKind.DYNAMIC),
        _edge("b.py", "a.py", deferred=True),
        _edge("b.ts", "a.ts", via="index.ts"),  # followed through a barrel: the barrel's own edges count
        _edge("b.py", "a.py", EdgeKind.PACKAGE),
    ):
        assert import_cycles([_edge(back.target, back.source), back]) == []


def test_a_long_chain_does_not_hit_the_recursion_limit():
    files = [f"m{n:05d}.py" for n in range(5000)]
    edges = [_edge(a, b) for a, b in itertools.pairwise(files)] + [_edge(files[-1], files[0])]
    (cycle,) = import_cycles(edges)
    assert len(cycle) == 5001


def test_analyze_lists_the_cycles_and_counts_them(tmp_path):
    (tmp_path / "a.py").write_text("import b\n")
    (tmp_path / "b.py").write_text("import a\n\n\ndef later():\n    import c\n")
    (tmp_path / "c.py").write_text("import b\n")

    result = CliRunner().invoke(app, ["deps", "analyze", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "cycle a.py -> b.py -> a.py" in result.output
    assert "1 import cycles" in result.output  # b -> c is deferred: c -> b is no cycle
    as_json = CliRunner().invoke(app, ["deps", "analyze", str(tmp_path), "--json"])
    assert json.loads(as_json.output)["cycles"] == [["a.py", "b.py", "a.py"]]
