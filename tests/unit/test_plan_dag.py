"""Planner: waves are topological levels, the critical path is the longest chain, bad graphs name atoms."""

import random

import pytest

from mge.models.conditions import Reason
from mge.plan.dag import plan_dag
from mge.plan.errors import (
    DependencyCycle,
    DuplicateAtomIds,
    EmptyPlan,
    SelfDependencies,
    UnknownDependencies,
)


def test_atoms_land_one_wave_after_their_deepest_dependency():
    plan = plan_dag([("a", []), ("b", ["a"]), ("c", ["a"]), ("d", ["b", "c"]), ("e", [])])

    assert plan.waves == (("a", "e"), ("b", "c"), ("d",))
    assert plan.wave_of["d"] == 2


def test_critical_path_is_the_longest_dependency_chain():
    plan = plan_dag([("a", []), ("b", ["a"]), ("c", ["b"]), ("x", []), ("y", ["x"])])

    assert plan.critical_path == ("a", "b", "c")


def test_priority_counts_the_atoms_an_atom_gates():
    plan = plan_dag([("a", []), ("b", ["a"]), ("c", ["b"]), ("lone", [])])

    assert plan.priority == {"a": 3, "b": 2, "c": 1, "lone": 1}


def test_repeated_dependency_counts_as_one_edge():
    plan = plan_dag([("a", []), ("b", ["a", "a"])])

    assert plan.edge_count == 1


@pytest.mark.parametrize(
    ("atoms", "cycle_members"),
    [
        ([("a", ["b"]), ("b", ["a"])], {"a", "b"}),
        ([("a", ["c"]), ("b", ["a"]), ("c", ["b"]), ("d", ["a"]), ("ok", [])], {"a", "b", "c"}),
        ([("root", []), ("x", ["root", "z"]), ("y", ["x"]), ("z", ["y"])], {"x", "y", "z"}),
    ],
)
def test_cycle_is_reported_with_exactly_its_atoms(atoms, cycle_members):
    with pytest.raises(DependencyCycle) as caught:
        plan_dag(atoms)

    assert set(caught.value.cycle) == cycle_members
    assert caught.value.reason == Reason.DEPENDENCY_CYCLE
    assert " -> ".join(caught.value.cycle) in str(caught.value)


def test_cycle_in_the_reported_order_really_is_a_cycle():
    deps = {"a": ["c"], "b": ["a"], "c": ["b"]}
    with pytest.raises(DependencyCycle) as caught:
        plan_dag(deps.items())

    cycle = caught.value.cycle
    for atom, following in zip(cycle, cycle[1:] + cycle[:1], strict=True):
        assert following in deps[atom]


def test_unknown_dependency_names_the_atom_and_the_missing_id():
    with pytest.raises(UnknownDependencies, match=r"b -> ghost") as caught:
        plan_dag([("a", []), ("b", ["a", "ghost"])])

    assert caught.value.missing == [("b", "ghost")]


def test_duplicate_ids_are_named():
    with pytest.raises(DuplicateAtomIds, match="dup") as caught:
        plan_dag([("dup", []), ("x", []), ("dup", [])])

    assert caught.value.ids == ["dup"]


def test_self_dependency_is_named():
    with pytest.raises(SelfDependencies, match="loop"):
        plan_dag([("loop", ["loop"])])


def test_empty_plan_is_an_error():
    with pytest.raises(EmptyPlan, match="no atoms"):
        plan_dag([])


def test_long_error_lists_are_truncated_with_a_count():
    atoms = [(f"a{i}", [f"missing{i}"]) for i in range(25)]

    with pytest.raises(UnknownDependencies, match=r"and 15 more"):
        plan_dag(atoms)


def test_ten_thousand_atom_plan_keeps_every_atom_after_its_dependencies():
    rnd = random.Random(7)
    atoms = [(f"a{i}", [f"a{rnd.randrange(i)}" for _ in range(min(i, 3))]) for i in range(10_000)]

    plan = plan_dag(atoms)

    level = plan.wave_of
    assert len(level) == 10_000
    for atom_id, deps in atoms:
        assert all(level[dep] < level[atom_id] for dep in deps)
    assert len(plan.critical_path) == len(plan.waves)
