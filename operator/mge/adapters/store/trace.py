"""Trace queries: one plan's waves/atoms/attempts, trace coverage over every table, correlation inputs."""

import contextlib
import json
from typing import Any, Final

import asyncpg

from mge.adapters.metrics import CORRELATION_STRENGTH, TRACE_COVERAGE
from mge.trace.correlations import FinishedAtom, FinishedCall, correlations
from mge.trace.coverage import TableCoverage, coverage_percentage
from mge.trace.tree import AtomRecord, AttemptRecord, SettledCost, TraceTree, build_tree

# Correlations describe recent behaviour: the newest finished atoms and calls, across plans.
CORRELATION_WINDOW: Final = 2000


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


class TraceStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def tree(self, namespace: str, name: str) -> TraceTree | None:
        plan: Any = await self.pool.fetchrow(
            "SELECT id, trace_id::text FROM masterplans WHERE namespace = $1 AND name = $2 AND retired_at IS NULL",
            namespace,
            name,
        )
        if plan is None:
            return None
        atoms = await self.pool.fetch(
            "SELECT wave_index, atom_id, state FROM atoms WHERE masterplan_id = $1", plan["id"]
        )
        attempts = await self.pool.fetch(
            """SELECT atom_id, attempt, span_id, outcome, error, prompt_tokens, completion_tokens, cost_usd,
                      cached, latency_ms, coalesce(context_chunks, '[]'::jsonb)::text AS context
               FROM atom_attempts WHERE masterplan_id = $1""",
            plan["id"],
        )
        return build_tree(
            name,
            plan["trace_id"],
            (AtomRecord(r["wave_index"], r["atom_id"], r["state"]) for r in atoms),
            (AttemptRecord(**{**dict(r), "context": json.loads(r["context"])}) for r in attempts),
            await self.settled(plan["id"]),
        )

    async def settled(self, plan_id: Any) -> dict[str, SettledCost]:
        """The plan's settle events summed by atom id (acceptance tests as "acceptance/<id>")."""
        rows = await self.pool.fetch(
            """SELECT coalesce(atom_id, '') AS atom_id, sum(amount_usd) AS cost_usd, sum(prompt_tokens + completion_tokens) AS tokens,
                      count(*) AS calls
               FROM cost_events WHERE masterplan_id = $1 AND kind = 'settle' GROUP BY 1""",
            plan_id,
        )
        return {r["atom_id"]: SettledCost(r["cost_usd"], int(r["tokens"]), int(r["calls"])) for r in rows}

    async def coverage(self) -> list[TableCoverage]:
        """Every table with a trace_id column, found in the catalog so new tables are covered unasked."""
        tables = await self.pool.fetch(
            """SELECT c.table_name,
                      bool_or(p.column_name IS NOT NULL) AS per_plan
               FROM information_schema.columns c
               LEFT JOIN information_schema.columns p
                 ON p.table_schema = c.table_schema AND p.table_name = c.table_name
                AND p.column_name = 'masterplan_id'
               WHERE c.table_schema = current_schema() AND c.column_name = 'trace_id'
               GROUP BY c.table_name ORDER BY c.table_name"""
        )
        result = []
        for table in tables:
            name = _quote(table["table_name"])
            if table["per_plan"]:
                sql = f"""SELECT count(*) AS rows, count(*) FILTER (WHERE t.trace_id = m.trace_id) AS traced
                          FROM {name} t LEFT JOIN masterplans m ON m.id = t.masterplan_id"""
            else:
                sql = f"SELECT count(*) AS rows, count(trace_id) AS traced FROM {name}"
            row: Any = await self.pool.fetchrow(sql)
            result.append(TableCoverage(table["table_name"], row["rows"], row["traced"]))
        return result

    async def finished_atoms(self) -> list[FinishedAtom]:
        rows = await self.pool.fetch(
            """SELECT a.cost_usd, a.attempts, a.wave_index,
                      (SELECT count(*) FROM atom_attempts t
                       WHERE t.masterplan_id = a.masterplan_id AND t.atom_id = a.atom_id
                         AND t.outcome = 'invalid') AS failed_checks
               FROM atoms a WHERE a.state IN ('succeeded', 'failed')
               ORDER BY a.finished_at DESC NULLS LAST LIMIT $1""",
            CORRELATION_WINDOW,
        )
        return [
            FinishedAtom(float(r["cost_usd"]), r["attempts"], r["wave_index"], r["failed_checks"])
            for r in rows
        ]

    async def finished_calls(self) -> list[FinishedCall]:
        """Calls that returned an answer: errors and released attempts have no meaningful latency."""
        rows = await self.pool.fetch(
            """SELECT latency_ms, cached FROM atom_attempts WHERE outcome IN ('succeeded', 'invalid')
               ORDER BY id DESC LIMIT $1""",
            CORRELATION_WINDOW,
        )
        return [FinishedCall(float(r["latency_ms"]), not r["cached"]) for r in rows]


async def export_trace_metrics(traces: TraceStore) -> float:
    """Refresh v2_trace_coverage_percentage and v2_correlation_strength; returns the coverage."""
    coverage = coverage_percentage(await traces.coverage())
    TRACE_COVERAGE.set(coverage)
    for correlation in correlations(await traces.finished_atoms(), await traces.finished_calls()):
        if correlation.strength is None:
            # An undefined correlation is absent, not 0: 0 would claim "measured, no relation".
            with contextlib.suppress(KeyError):
                CORRELATION_STRENGTH.remove(correlation.type.value)
        else:
            CORRELATION_STRENGTH.labels(correlation.type.value).set(correlation.strength)
    return coverage
