"""Trace coverage: the share of stored rows that lead back to their Masterplan's trace."""

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class TableCoverage:
    table: str
    rows: int
    traced: int  # rows whose trace_id is set and, for a plan's rows, equals the plan's trace_id

    @property
    def untraced(self) -> int:
        return self.rows - self.traced


def coverage_percentage(tables: Sequence[TableCoverage]) -> float:
    """100 when nothing is stored yet: no row is missing its trace."""
    rows = sum(t.rows for t in tables)
    return 100.0 if rows == 0 else 100.0 * sum(t.traced for t in tables) / rows
