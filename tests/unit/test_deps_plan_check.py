"""A plan's dependsOn against the analyzed file graph: missing and extra atom edges; precision/recall."""

from mge.deps.compare import agreement, check_plan
from mge.deps.graph import DependencyGraph, Edge, EdgeKind
from mge.deps.status import apply_learned, decide_dependencies, dependencies_report
from mge.models.conditions import ConditionStatus, Reason
from mge.models.masterplan import Atom, LearnedDependency


def _graph(*pairs: tuple[str, str]) -> DependencyGraph:
    return DependencyGraph(edges=[Edge(s, t, EdgeKind.STATIC, 1, "./x") for s, t in pairs])


def test_import_not_ordered_by_the_plan_is_missing_and_names_the_line() -> None:
    check = check_plan([("api", "api.ts", []), ("model", "model.ts", [])], _graph(("api.ts", "model.ts")))
    assert [(m.atom, m.needs) for m in check.missing] == [("api", "model")]
    assert "api.ts:1 imports './x'" in str(check.missing[0])
    assert not check.verified


def test_transitively_declared_dependency_covers_the_import() -> None:
    atoms = [("a", "a.ts", ["b"]), ("b", "b.ts", ["c"]), ("c", "c.ts", [])]
    check = check_plan(atoms, _graph(("a.ts", "c.ts"), ("a.ts", "b.ts"), ("b.ts", "c.ts")))
    assert check.verified
    assert check.extra == []


def test_declared_dependency_without_any_import_path_is_extra() -> None:
    check = check_plan([("a", "a.ts", ["b"]), ("b", "b.ts", [])], _graph())
    assert [(e.atom, e.needs) for e in check.extra] == [("a", "b")]
    assert check.verified


def test_imports_of_files_no_atom_writes_are_ignored() -> None:
    assert check_plan([("a", "a.ts", [])], _graph(("a.ts", "scaffold.ts"))).verified


def test_agreement_counts_and_ignores_what_tsc_cannot_see() -> None:
    graph = DependencyGraph(
        edges=[
            Edge("a.ts", "b.ts", EdgeKind.STATIC, 1, "./b"),
            Edge("a.ts", "c.ts", EdgeKind.DYNAMIC, 2, "`./${x}`"),
            Edge("a.ts", "d.ts", EdgeKind.STATIC, 3, "./d"),
        ]
    )
    result = agreement(graph, {("a.ts", "b.ts"), ("a.ts", "e.ts")})
    assert (result.precision, result.recall, result.f1) == (0.5, 0.5, 0.5)
    assert result.false_negative == {("a.ts", "e.ts")}
    assert result.beyond_truth == {("a.ts", "c.ts")}


def test_parent_package_edges_do_not_demand_an_order() -> None:
    graph = DependencyGraph(edges=[Edge("pkg/a.py", "pkg/__init__.py", EdgeKind.PACKAGE, 1, "pkg.a")])
    assert check_plan([("a", "pkg/a.py", []), ("init", "pkg/__init__.py", [])], graph).verified


def test_missing_imports_make_the_condition_false_and_say_what_to_add() -> None:
    check = check_plan([("api", "api.ts", []), ("model", "model.ts", [])], _graph(("api.ts", "model.ts")))
    decision = decide_dependencies(check)
    assert (decision.status, decision.reason) == (ConditionStatus.FALSE, Reason.IMPORTS_MISSING_FROM_PLAN)
    assert decision.additions == {"api": ["model"]}
    assert "add to dependsOn (api: [model]) and re-run" in decision.message


def test_plan_ordering_every_import_verifies() -> None:
    decision = decide_dependencies(
        check_plan([("a", "a.ts", ["b"]), ("b", "b.ts", [])], _graph(("a.ts", "b.ts")))
    )
    assert (decision.status, decision.reason) == (ConditionStatus.TRUE, Reason.IMPORTS_MATCH_PLAN)


def _atom(atom_id: str, *depends_on: str) -> Atom:
    return Atom(
        id=atom_id, file=f"{atom_id}.ts", language="typescript", description="x", depends_on=list(depends_on)
    )


def test_an_import_against_the_declared_order_is_circular_not_learnable() -> None:
    # model already depends on api, yet api imports model: they import each other.
    check = check_plan(
        [("api", "api.ts", []), ("model", "model.ts", ["api"])], _graph(("api.ts", "model.ts"))
    )
    decision = decide_dependencies(check, {"api": set(), "model": {"api"}})
    assert decision.additions == {}
    assert [(e.atom, e.needs) for e in decision.circular] == [("api", "model")]
    assert "Circular imports cannot be ordered (api <-> model)" in decision.message


def test_report_keeps_earlier_learned_edges_and_adds_new_ones_at_this_generation() -> None:
    check = check_plan([("a", "a.ts", ["b"]), ("b", "b.ts", []), ("c", "c.ts", [])], _graph(("a.ts", "c.ts")))
    earlier = [
        LearnedDependency(atom="a", needs="b", learned_generation=1),
        LearnedDependency(atom="gone", needs="b", learned_generation=1),
    ]
    report = dependencies_report(
        check, decide_dependencies(check), generation=3, atom_ids={"a", "b", "c"}, learned_before=earlier
    )
    assert [(e.atom, e.needs, e.learned_generation) for e in report.learned] == [("a", "b", 1), ("a", "c", 3)]
    assert (report.verified, report.missing_count, report.files) == (False, 1, 0)
    assert report.missing[0].model_dump() == {
        "atom": "a", "needs": "c", "file": "a.ts", "line": 1, "specifier": "./x"
    }  # fmt: skip


def test_learned_edges_apply_only_from_the_next_generation() -> None:
    atoms = [_atom("a"), _atom("b")]
    learned = [LearnedDependency(atom="a", needs="b", learned_generation=2)]
    assert [a.depends_on for a in apply_learned(atoms, learned, generation=2)] == [[], []]
    assert [a.depends_on for a in apply_learned(atoms, learned, generation=3)] == [["b"], []]
    assert atoms[0].depends_on == []  # the spec's atoms are not modified


def test_learned_edges_to_unknown_declared_or_cyclic_atoms_are_left_out() -> None:
    atoms = [_atom("a"), _atom("b", "a"), _atom("c", "a")]
    learned = [
        LearnedDependency(atom="a", needs="b", learned_generation=1),  # b already depends on a: a cycle
        LearnedDependency(atom="c", needs="a", learned_generation=1),  # declared since
        LearnedDependency(atom="c", needs="removed", learned_generation=1),
        LearnedDependency(atom="c", needs="b", learned_generation=1),
    ]
    assert [a.depends_on for a in apply_learned(atoms, learned, generation=2)] == [[], ["a"], ["a", "b"]]
