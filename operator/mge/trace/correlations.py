"""Correlations over finished work (cost vs retries, latency vs cache miss, failures vs depth), by rank."""

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

# Below this many pairs a rank correlation is mostly noise; report "unknown" instead of a number.
MIN_SAMPLES: Final = 8


class CorrelationType(StrEnum):
    COST_VS_RETRIES = "cost_vs_retries"
    LATENCY_VS_CACHE_MISS = "latency_vs_cache_miss"
    FAILURES_VS_DEPENDENCY_DEPTH = "failures_vs_dependency_depth"


@dataclass(frozen=True)
class FinishedAtom:
    """One atom that reached succeeded/failed: what it cost and how hard it was."""

    cost_usd: float
    attempts: int
    depth: int  # wave index: how many levels of dependencies lie below it
    failed_checks: int  # attempts rejected by validation plus acceptance tests that failed on its wave


@dataclass(frozen=True)
class FinishedCall:
    latency_ms: float
    cache_miss: bool


@dataclass(frozen=True)
class Correlation:
    type: CorrelationType
    strength: float | None  # Spearman's rho in [-1, 1]; None when undefined (too few pairs or no variation)
    samples: int


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing the average of the ranks they span (as Spearman's rho requires)."""
    order = sorted(range(len(values)), key=values.__getitem__)
    result = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        average = (start + end) / 2 + 1
        for position in range(start, end + 1):
            result[order[position]] = average
        start = end + 1
    return result


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rank correlation, or None below MIN_SAMPLES pairs or when either side is constant."""
    if len(xs) != len(ys):
        raise ValueError(f"paired samples differ in length: {len(xs)} and {len(ys)}")
    if len(xs) < MIN_SAMPLES:
        return None
    try:
        return statistics.correlation(ranks(xs), ranks(ys))
    except statistics.StatisticsError:  # a constant series has no rank order to correlate
        return None


def correlations(atoms: Sequence[FinishedAtom], calls: Sequence[FinishedCall]) -> list[Correlation]:
    pairs: dict[CorrelationType, tuple[list[float], list[float]]] = {
        CorrelationType.COST_VS_RETRIES: (
            [a.cost_usd for a in atoms],
            [float(max(a.attempts - 1, 0)) for a in atoms],
        ),
        CorrelationType.LATENCY_VS_CACHE_MISS: (
            [c.latency_ms for c in calls],
            [1.0 if c.cache_miss else 0.0 for c in calls],
        ),
        CorrelationType.FAILURES_VS_DEPENDENCY_DEPTH: (
            [float(a.failed_checks) for a in atoms],
            [float(a.depth) for a in atoms],
        ),
    }
    return [Correlation(kind, spearman(xs, ys), len(xs)) for kind, (xs, ys) in pairs.items()]
