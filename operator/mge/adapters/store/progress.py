"""What a plan has produced and how far it is: outputs, waves, usage, failures, progress."""

import uuid
from dataclasses import dataclass
from typing import Any, Final

import asyncpg

from mge.models.progress import Progress, WaveProgress


@dataclass(frozen=True, slots=True)
class AtomOutput:
    atom_id: str
    file: str
    output: str


@dataclass(frozen=True, slots=True)
class GeneratedCode:
    generation: int  # the Masterplan generation the atoms were registered for
    active: bool  # atoms are ready or running: the run has not ended
    # (atom id, file, dependsOn as registered, learned edges included)
    atoms: list[tuple[str, str, list[str]]]
    outputs: list[tuple[str, str]]  # (file, content) of the succeeded atoms


@dataclass(frozen=True, slots=True)
class Usage:
    calls: int
    prompt_tokens: int
    completion_tokens: int
    rejected: int
    # Attempts answered by the prompt cache: not LLM calls, not counted in `calls`.
    cache_hits: int = 0


# An atom is blocked when some dependency, direct or transitive, failed: it can never become ready.
_PROGRESS_SQL: Final = """
WITH RECURSIVE blocked(atom_id) AS (
    SELECT d.atom_id FROM atom_dependencies d
    JOIN atoms f ON f.masterplan_id = d.masterplan_id AND f.atom_id = d.depends_on AND f.state = 'failed'
    WHERE d.masterplan_id = $1
    UNION
    SELECT d.atom_id FROM atom_dependencies d JOIN blocked b ON d.depends_on = b.atom_id
    WHERE d.masterplan_id = $1
),
counts AS (
    SELECT count(*) AS total,
           count(*) FILTER (WHERE state = 'pending') AS pending,
           count(*) FILTER (WHERE state = 'ready') AS ready,
           count(*) FILTER (WHERE state = 'running') AS running,
           count(*) FILTER (WHERE state = 'succeeded') AS succeeded,
           count(*) FILTER (WHERE state = 'failed') AS failed,
           coalesce(sum(cost_usd), 0) AS cost_usd,
           array_agg(atom_id ORDER BY atom_id) FILTER (WHERE state = 'failed') AS failed_atoms
    FROM atoms WHERE masterplan_id = $1
),
wave_counts AS (
    SELECT count(*) AS waves_total,
           count(*) FILTER (WHERE NOT EXISTS (
               SELECT 1 FROM atoms a WHERE a.masterplan_id = w.masterplan_id AND a.wave_index = w.wave_index
                 AND a.state NOT IN ('succeeded', 'failed'))) AS waves_complete
    FROM waves w WHERE w.masterplan_id = $1
)
SELECT counts.*, wave_counts.*, coalesce(array_length(blocked_ids.ids, 1), 0) AS blocked,
       blocked_ids.ids AS blocked_atoms
FROM counts, wave_counts, (
    SELECT array_agg(a.atom_id ORDER BY a.atom_id) AS ids FROM atoms a JOIN blocked b ON b.atom_id = a.atom_id
    WHERE a.masterplan_id = $1 AND a.state = 'pending'
) AS blocked_ids
"""


class PlanProgress:
    """Read-only views of a plan's atoms for status, reports and acceptance tests."""

    pool: asyncpg.Pool

    async def outputs(self, plan_id: uuid.UUID) -> list[AtomOutput]:
        rows = await self.pool.fetch(
            "SELECT atom_id, file, output FROM atoms WHERE masterplan_id = $1 AND state = 'succeeded' ORDER BY file",
            plan_id,
        )
        return [AtomOutput(r["atom_id"], r["file"], r["output"]) for r in rows]

    async def generated_code(self, plan_id: uuid.UUID) -> GeneratedCode:
        """One consistent snapshot of a plan's registration and outputs (a re-plan may be committing meanwhile)."""
        async with self.pool.acquire() as connection, connection.transaction(isolation="repeatable_read"):
            generation = await connection.fetchval(
                "SELECT generation FROM masterplans WHERE id = $1", plan_id
            )
            rows = await connection.fetch(
                """SELECT atom_id, file, depends_on, state, output FROM atoms
                   WHERE masterplan_id = $1 ORDER BY atom_id""",
                plan_id,
            )
        return GeneratedCode(
            generation=int(generation or 0),
            active=any(r["state"] in ("ready", "running") for r in rows),
            atoms=[(r["atom_id"], r["file"], list(r["depends_on"])) for r in rows],
            outputs=[(r["file"], r["output"]) for r in rows if r["state"] == "succeeded"],
        )

    async def runnable(self, llm_pool: str | None = None) -> tuple[int, int]:
        """(ready, running) atoms of plans on `llm_pool` (None: the default endpoint) that are not suspended:
        that pool's executor demand."""
        row: Any = await self.pool.fetchrow(
            """SELECT count(*) FILTER (WHERE a.state = 'ready') AS ready,
                      count(*) FILTER (WHERE a.state = 'running') AS running
               FROM atoms a JOIN masterplans m ON m.id = a.masterplan_id
               WHERE NOT m.suspended AND NOT m.budget_exhausted AND a.state IN ('ready', 'running')
                 AND m.llm_pool IS NOT DISTINCT FROM $1""",
            llm_pool,
        )
        return int(row["ready"]), int(row["running"])

    async def wave_progress(self, plan_id: uuid.UUID) -> list[WaveProgress]:
        rows = await self.pool.fetch(
            """SELECT wave_index, count(*) AS total,
                      count(*) FILTER (WHERE state = 'succeeded') AS succeeded,
                      count(*) FILTER (WHERE state = 'failed') AS failed,
                      count(*) FILTER (WHERE state = 'running') AS running,
                      coalesce(sum(cost_usd), 0) AS cost_usd
               FROM atoms WHERE masterplan_id = $1 GROUP BY wave_index ORDER BY wave_index""",
            plan_id,
        )
        return [
            WaveProgress(
                r["wave_index"], r["total"], r["succeeded"], r["failed"], r["running"], r["cost_usd"]
            )
            for r in rows
        ]

    async def usage(self, plan_id: uuid.UUID) -> Usage:
        row: Any = await self.pool.fetchrow(
            """SELECT count(*) FILTER (WHERE NOT cached) AS calls, coalesce(sum(prompt_tokens), 0) AS prompt_tokens,
                      coalesce(sum(completion_tokens), 0) AS completion_tokens,
                      count(*) FILTER (WHERE outcome <> 'succeeded') AS rejected,
                      count(*) FILTER (WHERE cached) AS cache_hits
               FROM atom_attempts WHERE masterplan_id = $1""",
            plan_id,
        )
        return Usage(
            row["calls"], row["prompt_tokens"], row["completion_tokens"], row["rejected"], row["cache_hits"]
        )

    async def failures(self, plan_id: uuid.UUID) -> list[tuple[str, str]]:
        rows = await self.pool.fetch(
            "SELECT atom_id, last_error FROM atoms WHERE masterplan_id = $1 AND state = 'failed' ORDER BY atom_id",
            plan_id,
        )
        return [(r["atom_id"], r["last_error"] or "") for r in rows]

    async def progress(self, plan_id: uuid.UUID) -> Progress:
        row: Any = await self.pool.fetchrow(_PROGRESS_SQL, plan_id)
        return Progress(
            total=row["total"],
            pending=row["pending"],
            ready=row["ready"],
            running=row["running"],
            succeeded=row["succeeded"],
            failed=row["failed"],
            blocked=row["blocked"],
            cost_usd=row["cost_usd"],
            waves_total=row["waves_total"],
            waves_complete=row["waves_complete"],
            failed_atoms=tuple(row["failed_atoms"] or ()),
            blocked_atoms=tuple(row["blocked_atoms"] or ()),
        )
