"""The trace tree of a plan: waves -> atoms -> attempts with sums, from plain records."""

from decimal import Decimal

import pytest

from mge.trace.tree import AtomRecord, AttemptRecord, SettledCost, build_tree, cost_by_wave


def _attempt(atom_id, attempt, cost, outcome="succeeded", cached=False):
    return AttemptRecord(
        atom_id=atom_id,
        attempt=attempt,
        span_id=f"{attempt:016x}",
        outcome=outcome,
        error=None if outcome == "succeeded" else "SyntaxError",
        prompt_tokens=100,
        completion_tokens=50,
        cost_usd=Decimal(cost),
        cached=cached,
        latency_ms=20,
    )


def test_costs_and_tokens_sum_up_the_tree_and_pending_atoms_still_show():
    atoms = [AtomRecord(1, "b", "succeeded"), AtomRecord(0, "a", "succeeded"), AtomRecord(2, "c", "pending")]
    attempts = [
        _attempt("b", 2, "0.02"),
        _attempt("b", 1, "0.01", outcome="invalid"),
        _attempt("a", 1, "0.005"),
    ]

    settled = {"b": SettledCost(Decimal("0.03"), 300, 2), "a": SettledCost(Decimal("0.005"), 150, 1)}

    tree = build_tree("plan", "trace-1", atoms, attempts, settled)

    assert [w.index for w in tree.waves] == [0, 1, 2]
    assert tree.cost_usd == Decimal("0.035")
    assert tree.tokens == 450
    wave1 = tree.waves[1]
    assert wave1.cost_usd == Decimal("0.03")
    (b,) = wave1.atoms
    assert [a.attempt for a in b.attempts] == [1, 2]
    assert b.attempts[0].outcome == "invalid"
    assert tree.waves[2].atoms[0].attempts == []
    assert tree.waves[2].cost_usd == 0


def test_an_attempt_of_an_unknown_atom_is_reported_not_dropped():
    with pytest.raises(ValueError, match="unknown atom 'ghost'"):
        build_tree("plan", "t", [AtomRecord(0, "a", "running")], [_attempt("ghost", 1, "0")], {})


def test_calls_outside_the_atoms_count_in_the_root_like_in_the_ledger():
    """Acceptance tests are paid through the ledger but have no atom: the root is the plan's whole spend."""
    atoms = [AtomRecord(0, "a", "succeeded")]
    settled = {
        "a": SettledCost(Decimal("0.0001"), 150, 1),
        "acceptance/MUST-1": SettledCost(Decimal("0.0004"), 600, 2),
        "acceptance/SHOULD-1": SettledCost(Decimal("0.0006"), 700, 1),
    }

    tree = build_tree("plan", "t", atoms, [_attempt("a", 1, "0.0001")], settled)

    assert tree.cost_usd == Decimal("0.0011")
    assert tree.tokens == 1450
    assert [(n.atom_id, n.cost_usd, n.state) for n in tree.other_calls] == [
        ("acceptance/MUST-1", Decimal("0.0004"), "2 calls"),
        ("acceptance/SHOULD-1", Decimal("0.0006"), "1 call"),
    ]
    assert tree.waves[0].cost_usd == Decimal("0.0001")
    waves, other = cost_by_wave(settled, {"a": 0})
    assert sum(waves.values(), other) == tree.cost_usd
    assert (waves, other) == ({0: Decimal("0.0001")}, Decimal("0.0010"))
