"""What a plan has produced and how far it is: outputs, waves, usage, failures, progress."""

import uuid
from collections.abc import Sequence
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


# Each plan of $1 (uuid[]) with its counts, in one statement for any number of plans (a progress tick reads
# every live plan at once). An atom is blocked when some dependency, direct or transitive, failed: it can never
# become ready.
_PROGRESS_SQL: Final = """
WITH RECURSIVE blocked(masterplan_id, atom_id) AS (
    SELECT d.masterplan_id, d.atom_id FROM atom_dependencies d
    JOIN atoms f ON f.masterplan_id = d.masterplan_id AND f.atom_id = d.depends_on AND f.state = 'failed'
    WHERE d.masterplan_id = ANY($1::uuid[])
    UNION
    SELECT d.masterplan_id, d.atom_id FROM atom_dependencies d
    JOIN blocked b ON d.masterplan_id = b.masterplan_id AND d.depends_on = b.atom_id
),
counts AS (
    SELECT masterplan_id, count(*) AS total,
           count(*) FILTER (WHERE state = 'pending') AS pending,
           count(*) FILTER (WHERE state = 'ready') AS ready,
           count(*) FILTER (WHERE state = 'running') AS running,
           count(*) FILTER (WHERE state = 'succeeded') AS succeeded,
           count(*) FILTER (WHERE state = 'failed') AS failed,
           sum(cost_usd) AS cost_usd,
           array_agg(atom_id ORDER BY atom_id) FILTER (WHERE state = 'failed') AS failed_atoms
    FROM atoms WHERE masterplan_id = ANY($1::uuid[]) GROUP BY masterplan_id
),
wave_counts AS (
    SELECT w.masterplan_id, count(*) AS waves_total,
           count(*) FILTER (WHERE NOT EXISTS (
               SELECT 1 FROM atoms a WHERE a.masterplan_id = w.masterplan_id AND a.wave_index = w.wave_index
                 AND a.state NOT IN ('succeeded', 'failed'))) AS waves_complete
    FROM waves w WHERE w.masterplan_id = ANY($1::uuid[]) GROUP BY w.masterplan_id
),
blocked_ids AS (
    SELECT a.masterplan_id, array_agg(a.atom_id ORDER BY a.atom_id) AS ids
    FROM atoms a JOIN blocked b ON b.masterplan_id = a.masterplan_id AND b.atom_id = a.atom_id
    WHERE a.state = 'pending' GROUP BY a.masterplan_id
)
SELECT p.masterplan_id, coalesce(c.total, 0) AS total, coalesce(c.pending, 0) AS pending,
       coalesce(c.ready, 0) AS ready, coalesce(c.running, 0) AS running,
       coalesce(c.succeeded, 0) AS succeeded, coalesce(c.failed, 0) AS failed,
       coalesce(c.cost_usd, 0) AS cost_usd, c.failed_atoms,
       coalesce(w.waves_total, 0) AS waves_total, coalesce(w.waves_complete, 0) AS waves_complete,
       coalesce(array_length(b.ids, 1), 0) AS blocked, b.ids AS blocked_atoms
FROM unnest($1::uuid[]) AS p(masterplan_id)
LEFT JOIN counts c USING (masterplan_id)
LEFT JOIN wave_counts w USING (masterplan_id)
LEFT JOIN blocked_ids b USING (masterplan_id)
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
        return (await self.wave_progress_of([plan_id]))[plan_id]

    async def wave_progress_of(self, plan_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[WaveProgress]]:
        """Each plan's waves in order, in one query (no waves: an empty list)."""
        rows = await self.pool.fetch(
            """SELECT masterplan_id, wave_index, count(*) AS total,
                      count(*) FILTER (WHERE state = 'succeeded') AS succeeded,
                      count(*) FILTER (WHERE state = 'failed') AS failed,
                      count(*) FILTER (WHERE state = 'running') AS running,
                      coalesce(sum(cost_usd), 0) AS cost_usd
               FROM atoms WHERE masterplan_id = ANY($1::uuid[])
               GROUP BY masterplan_id, wave_index ORDER BY masterplan_id, wave_index""",
            list(plan_ids),
        )
        waves: dict[uuid.UUID, list[WaveProgress]] = {plan_id: [] for plan_id in plan_ids}
        for r in rows:
            waves[r["masterplan_id"]].append(
                WaveProgress(
                    r["wave_index"], r["total"], r["succeeded"], r["failed"], r["running"], r["cost_usd"]
                )
            )
        return waves

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
        return (await self.progress_of([plan_id]))[plan_id]

    async def progress_of(self, plan_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Progress]:
        """Each plan's progress, in one query whatever their number."""
        rows = await self.pool.fetch(_PROGRESS_SQL, list(plan_ids))
        return {
            row["masterplan_id"]: Progress(
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
            for row in rows
        }
