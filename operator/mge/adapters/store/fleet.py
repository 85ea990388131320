"""The executor fleet in Postgres: each executor's report, endpoint outages, scaling decisions and signals."""

import json
from typing import Any

import asyncpg

from mge.concurrency.circuit import EndpointReport
from mge.concurrency.signals import SignalHealth
from mge.concurrency.statistics import CallSummary
from mge.models.concurrency_api import (
    EndpointOutage,
    ExecutorConcurrency,
    ScalingDecision,
    ScalingSignals,
)


class FleetStatus:
    """What executors report and what the operator decided about their number."""

    pool: asyncpg.Pool

    async def report_executor(
        self,
        executor: str,
        *,
        limit: int,
        in_flight: int,
        queue_size: int,
        adjustments: list[dict[str, Any]],
        atoms_held: int = 0,
        statistics: CallSummary | None = None,
        endpoint: EndpointReport | None = None,
        rate_limits: dict[str, Any] | None = None,
        llm_pool: str | None = None,
    ) -> None:
        stats = statistics or CallSummary(None, None, 0, 0)
        health = endpoint or EndpointReport(None, "closed", None, None)
        await self.pool.execute(
            """INSERT INTO executor_status (executor, llm_limit, in_flight, queue_size, adjustments, atoms_held,
                   llm_p95_s, db_p95_s, llm_requests, llm_errors, llm_endpoint, llm_circuit, llm_last_error,
                   llm_down_since, llm_rate_limits, llm_pool, updated_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
                       now() - make_interval(secs => $14), $15, $16, now())
               ON CONFLICT (executor) DO UPDATE SET llm_limit = $2, in_flight = $3, queue_size = $4,
                   adjustments = $5, atoms_held = $6, llm_p95_s = $7, db_p95_s = $8, llm_requests = $9,
                   llm_errors = $10, llm_endpoint = $11, llm_circuit = $12, llm_last_error = $13,
                   llm_down_since = now() - make_interval(secs => $14), llm_rate_limits = $15,
                   llm_pool = $16, updated_at = now()""",
            executor,
            limit,
            in_flight,
            queue_size,
            json.dumps(adjustments),
            atoms_held,
            stats.llm_p95_s,
            stats.db_p95_s,
            stats.llm_requests,
            stats.llm_errors,
            health.endpoint,
            health.circuit,
            health.last_error,
            health.down_for_s,
            json.dumps(rate_limits) if rate_limits else None,
            llm_pool,
        )

    async def endpoint_outages(
        self, fresh_s: float = 120.0, llm_pool: str | None = None
    ) -> list[EndpointOutage]:
        """LLM endpoints that executors of `llm_pool` (None: the default endpoint's) seen in the last `fresh_s`
        seconds have stopped sending work to."""
        rows = await self.pool.fetch(
            """SELECT llm_endpoint AS endpoint, (array_agg(llm_last_error ORDER BY updated_at DESC))[1]
                          AS last_error,
                      min(llm_down_since) AS down_since, count(*) AS executors
               FROM executor_status
               WHERE llm_circuit <> 'closed' AND llm_endpoint IS NOT NULL AND llm_down_since IS NOT NULL
                 AND updated_at > now() - make_interval(secs => $1) AND llm_pool IS NOT DISTINCT FROM $2
               GROUP BY llm_endpoint ORDER BY llm_endpoint""",
            fresh_s,
            llm_pool,
        )
        return [EndpointOutage(**{**dict(r), "last_error": r["last_error"] or "unknown error"}) for r in rows]

    async def executor_statistics(
        self, fresh_s: float = 60.0, llm_pool: str | None = None
    ) -> list[CallSummary]:
        """The call statistics of executors of `llm_pool` that reported in the last `fresh_s` seconds."""
        rows = await self.pool.fetch(
            """SELECT llm_p95_s, db_p95_s, llm_requests, llm_errors FROM executor_status
               WHERE updated_at > now() - make_interval(secs => $1) AND llm_pool IS NOT DISTINCT FROM $2""",
            fresh_s,
            llm_pool,
        )
        return [CallSummary(**dict(r)) for r in rows]

    async def executor_load(self, fresh_s: float = 60.0, llm_pool: str | None = None) -> dict[str, int]:
        """Atoms held per executor of `llm_pool` that reported in the last `fresh_s` seconds (a few
        heartbeats)."""
        rows = await self.pool.fetch(
            """SELECT executor, greatest(atoms_held, in_flight) AS held FROM executor_status
               WHERE updated_at > now() - make_interval(secs => $1) AND llm_pool IS NOT DISTINCT FROM $2""",
            fresh_s,
            llm_pool,
        )
        return {r["executor"]: int(r["held"]) for r in rows}

    async def fleet_size(self, endpoint: str, fresh_s: float = 60.0) -> int:
        """Executors that reported calling `endpoint` in the last `fresh_s` seconds."""
        count = await self.pool.fetchval(
            """SELECT count(*) FROM executor_status
               WHERE llm_endpoint = $1 AND updated_at > now() - make_interval(secs => $2)""",
            endpoint,
            fresh_s,
        )
        return int(count or 0)

    async def record_scaling(self, desired: int, actual: int, reason: str) -> None:
        """Keep the scaler's decisions (the last 100) for the concurrency status API."""
        async with self.pool.acquire() as connection, connection.transaction():
            await connection.execute(
                "INSERT INTO scaling_decisions (desired, actual, reason) VALUES ($1, $2, $3)",
                desired,
                actual,
                reason,
            )
            await connection.execute(
                "DELETE FROM scaling_decisions WHERE id <= (SELECT max(id) - 100 FROM scaling_decisions)"
            )

    async def record_signals(self, health: SignalHealth) -> None:
        """The scaler's signal health after each pass; `since` moves only when source, health or reason change."""
        await self.pool.execute(
            """INSERT INTO scaling_signals (source, healthy, reason, message) VALUES ($1, $2, $3, $4)
               ON CONFLICT (singleton) DO UPDATE SET source = $1, healthy = $2, reason = $3, message = $4,
                   since = CASE WHEN (scaling_signals.source, scaling_signals.healthy, scaling_signals.reason)
                                     IS DISTINCT FROM ($1, $2, $3)
                                THEN now() ELSE scaling_signals.since END,
                   updated_at = now()""",
            health.source.value,
            health.healthy,
            health.reason.value,
            health.message,
        )

    async def scaling_signals(self) -> ScalingSignals | None:
        """The scaler's latest signal health; None if the operator never scaled executors."""
        row = await self.pool.fetchrow(
            "SELECT source, healthy, reason, message, since, updated_at FROM scaling_signals"
        )
        return ScalingSignals(**dict(row)) if row else None

    async def concurrency_snapshot(
        self, fresh_s: float = 120.0
    ) -> tuple[list[ExecutorConcurrency], list[ScalingDecision]]:
        """Executors seen in the last `fresh_s` seconds, and the recent scaling decisions (newest first)."""
        executors = await self.pool.fetch(
            """SELECT executor, llm_limit AS limit, in_flight, queue_size, atoms_held, llm_p95_s, db_p95_s,
                      llm_requests, llm_errors, adjustments, llm_endpoint, llm_pool, llm_circuit,
                      llm_last_error, llm_down_since, llm_rate_limits, updated_at
               FROM executor_status WHERE updated_at > now() - make_interval(secs => $1) ORDER BY executor""",
            fresh_s,
        )
        decisions = await self.pool.fetch(
            "SELECT desired, actual, reason, decided_at FROM scaling_decisions ORDER BY id DESC LIMIT 20"
        )
        return (
            [
                ExecutorConcurrency(
                    **{
                        **dict(r),
                        "adjustments": json.loads(r["adjustments"]),
                        "llm_rate_limits": json.loads(r["llm_rate_limits"]) if r["llm_rate_limits"] else None,
                    }
                )
                for r in executors
            ],
            [ScalingDecision(**dict(r)) for r in decisions],
        )
