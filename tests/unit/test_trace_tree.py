"""The trace tree of a plan: waves -> atoms -> attempts with sums, from plain records."""

from decimal import Decimal

import pytest

from mge.trace.tree import AtomRecord, AttemptRecord, build_tree


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

    tree = build_tree("plan", "trace-1", atoms, attempts)

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
        build_tree("plan", "t", [AtomRecord(0, "a", "running")], [_attempt("ghost", 1, "0")])
