"""Rank correlations and trace coverage: pure arithmetic on plain values."""

import pytest

from mge.trace.correlations import (
    MIN_SAMPLES,
    CorrelationType,
    FinishedAtom,
    FinishedCall,
    correlations,
    ranks,
    spearman,
)
from mge.trace.coverage import TableCoverage, coverage_percentage


def test_ties_share_the_average_rank():
    assert ranks([10, 20, 20, 30]) == [1.0, 2.5, 2.5, 4.0]
    assert ranks([3, 1, 2]) == [3.0, 1.0, 2.0]


def test_monotonic_but_non_linear_relation_is_a_perfect_rank_correlation():
    xs = [float(x) for x in range(1, 11)]
    assert spearman(xs, [x**3 for x in xs]) == pytest.approx(1.0)
    assert spearman(xs, [-(x**3) for x in xs]) == pytest.approx(-1.0)


def test_known_value_with_ties():
    # Ranks of y: 1, 2.5, 2.5, 4, 5, 6, 7, 8 against 1..8 -> Pearson on the ranks.
    xs = [1.0, 2, 3, 4, 5, 6, 7, 8]
    ys = [5.0, 7, 7, 9, 11, 12, 20, 21]
    assert spearman(xs, ys) == pytest.approx(0.99398, abs=1e-4)


def test_too_few_pairs_or_a_constant_side_is_undefined_not_zero():
    few = [float(x) for x in range(MIN_SAMPLES - 1)]
    assert spearman(few, few) is None
    enough = [float(x) for x in range(MIN_SAMPLES)]
    assert spearman(enough, [1.0] * MIN_SAMPLES) is None


def test_unpaired_samples_are_a_programming_error():
    with pytest.raises(ValueError, match="differ in length"):
        spearman([1.0, 2.0], [1.0])


def test_correlations_pair_the_right_quantities():
    atoms = [
        FinishedAtom(cost_usd=0.01 * n, attempts=n, depth=n % 3, failed_checks=n - 1) for n in range(1, 11)
    ]
    calls = [FinishedCall(latency_ms=100.0 if n % 2 else 5.0, cache_miss=bool(n % 2)) for n in range(12)]

    result = {c.type: c for c in correlations(atoms, calls)}

    assert result[CorrelationType.COST_VS_RETRIES].strength == pytest.approx(1.0)
    assert result[CorrelationType.LATENCY_VS_CACHE_MISS].strength == pytest.approx(1.0)
    assert result[CorrelationType.LATENCY_VS_CACHE_MISS].samples == 12
    depth = result[CorrelationType.FAILURES_VS_DEPENDENCY_DEPTH]
    assert depth.samples == 10
    assert depth.strength is not None
    assert -1.0 <= depth.strength <= 1.0


def test_no_finished_work_gives_undefined_correlations():
    assert all(c.strength is None and c.samples == 0 for c in correlations([], []))


def test_coverage_is_the_share_of_traced_rows_over_all_tables():
    tables = [TableCoverage("atoms", 10, 10), TableCoverage("cost_events", 30, 27)]
    assert coverage_percentage(tables) == pytest.approx(92.5)
    assert tables[1].untraced == 3
    assert coverage_percentage([]) == 100.0
