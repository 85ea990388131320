"""Masterplan runs in Postgres: registration (and re-planning), suspension, retirement, identity."""

import json
import uuid
from collections.abc import Collection, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

import asyncpg

from mge.adapters.store.queue import RETIRED_CHANNEL, notify_ready
from mge.concurrency.ramp import restart_allowance
from mge.models.masterplan import Atom, MasterplanSpec
from mge.plan.dag import Plan
from mge.plan.llm_endpoint import PoolConfig
from mge.plan.sync import PlanSync, atom_fingerprint, sync_atoms

MASTERPLAN_NAMESPACE: Final = uuid.UUID("6f1c1d1e-4d0b-4c55-9d1a-6d6765000001")


def masterplan_uuid(namespace: str, name: str) -> uuid.UUID:
    """Local runs' stable id (`mge run` has no object uid): the same plan maps to the same rows on resume."""
    return uuid.uuid5(MASTERPLAN_NAMESPACE, f"{namespace}/{name}")


def run_uuid(uid: str) -> uuid.UUID:
    """A Masterplan object's run id: its metadata.uid (a UUID on real API servers; anything else is hashed)."""
    try:
        return uuid.UUID(uid)
    except ValueError:
        return uuid.uuid5(MASTERPLAN_NAMESPACE, uid)


class PlanRetired(LookupError):
    """The run was retired (its Masterplan was deleted): it is never registered or run again."""


async def _restart_ramp(connection: Any, plan_id: uuid.UUID) -> None:
    """The plan has new work (or was resumed): its atoms start again at a few at once, fleet-wide."""
    running = await connection.fetchval(
        "SELECT count(*) FROM atoms WHERE masterplan_id = $1 AND state = 'running'", plan_id
    )
    await connection.execute(
        """INSERT INTO plan_ramps (masterplan_id, trace_id, allowance)
           SELECT id, trace_id, $2 FROM masterplans WHERE id = $1
           ON CONFLICT (masterplan_id) DO UPDATE
               SET allowance = excluded.allowance, started_at = now()""",
        plan_id,
        restart_allowance(running),
    )


async def _retire(connection: Any, plan_id: uuid.UUID) -> bool:
    """Inside the caller's transaction: end the run for good. Its reservations are released (recorded as
    cost events), its queue rows deleted; the plan row and its cost events stay as the audit trail."""
    retired = await connection.fetchval(
        """UPDATE masterplans SET retired_at = now(), suspended = true, updated_at = now()
           WHERE id = $1 AND retired_at IS NULL RETURNING true""",
        plan_id,
    )
    if not retired:
        return False
    await connection.execute(
        """WITH released AS (
               DELETE FROM cost_reservations WHERE masterplan_id = $1 RETURNING atom_id, amount_usd
           )
           INSERT INTO cost_events (masterplan_id, trace_id, atom_id, kind, amount_usd, cumulative_cost_usd,
                                    budget_limit_usd, detail)
           SELECT m.id, m.trace_id, r.atom_id, 'release', r.amount_usd, m.current_cost_usd, m.budget_limit_usd,
                  '{"why": "deleted"}'::jsonb
           FROM released r, masterplans m WHERE m.id = $1""",
        plan_id,
    )
    await connection.execute("UPDATE masterplans SET reserved_cost_usd = 0 WHERE id = $1", plan_id)
    for table in ("atoms", "waves", "plan_ramps", "acceptance_generation_claims", "acceptance_wave_runs"):
        await connection.execute(f"DELETE FROM {table} WHERE masterplan_id = $1", plan_id)
    await connection.execute("SELECT pg_notify($1, $2)", RETIRED_CHANNEL, str(plan_id))
    return True


# Recount unmet dependencies of every unfinished atom after a (re)plan and mark the free ones ready.
_REFRESH_READINESS_SQL: Final = """
UPDATE atoms a SET
    unmet_dependencies = coalesce(u.unmet, 0),
    state = CASE WHEN coalesce(u.unmet, 0) = 0 THEN 'ready' ELSE 'pending' END,
    updated_at = now()
FROM atoms a2
LEFT JOIN (
    SELECT d.masterplan_id, d.atom_id, count(*) AS unmet
    FROM atom_dependencies d
    JOIN atoms dep ON dep.masterplan_id = d.masterplan_id AND dep.atom_id = d.depends_on
    WHERE dep.state <> 'succeeded'
    GROUP BY d.masterplan_id, d.atom_id
) u ON u.masterplan_id = a2.masterplan_id AND u.atom_id = a2.atom_id
WHERE a.masterplan_id = $1 AND a2.masterplan_id = a.masterplan_id AND a2.atom_id = a.atom_id
  AND a.state IN ('pending', 'ready')
"""


class PlanRegistry:
    """Registers each Masterplan run with its atoms, and retires it."""

    pool: asyncpg.Pool

    async def register_plan(
        self,
        *,
        namespace: str,
        name: str,
        trace_id: str,
        generation: int,
        spec: MasterplanSpec,
        atoms: Sequence[Atom],
        plan: Plan,
        max_attempts: int = 3,
        plan_id: uuid.UUID | None = None,
        uid: str | None = None,
        llm: PoolConfig | None = None,
    ) -> tuple[uuid.UUID, PlanSync]:
        """Upsert the run `plan_id` (default: the local run of namespace/name) of the object `uid`; unchanged
        atoms keep their results, changed ones and their dependents start over. Another live run of the same
        name belongs to an object that no longer exists (names are unique): it is retired. Raises
        PlanRetired for a retired run."""
        plan_id = plan_id or masterplan_uuid(namespace, name)
        wave_of = plan.wave_of
        budget = spec.budget
        async with self.pool.acquire() as connection, connection.transaction():
            row = await connection.fetchrow(
                "SELECT suspended, retired_at FROM masterplans WHERE id = $1 FOR UPDATE", plan_id
            )
            if row is not None and row["retired_at"] is not None:
                raise PlanRetired(
                    f"run {plan_id} of {namespace}/{name} was retired when its Masterplan was deleted"
                )
            was_suspended = row is not None and row["suspended"]
            for other in await connection.fetch(
                """SELECT id FROM masterplans WHERE namespace = $1 AND name = $2 AND retired_at IS NULL
                   AND id <> $3 FOR UPDATE""",
                namespace,
                name,
                plan_id,
            ):
                await _retire(connection, other["id"])
            await connection.execute(
                """INSERT INTO masterplans (id, namespace, name, trace_id, generation, model, priority, suspended,
                       requirements, budget_limit_usd, soft_cap_percentage, hard_cap_percentage, uid,
                       llm_pool, llm_config)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
                   ON CONFLICT (id) DO UPDATE SET generation = $5, model = $6, priority = $7, suspended = $8,
                       requirements = $9, uid = coalesce($13, masterplans.uid), llm_pool = $14,
                       llm_config = $15, updated_at = now()""",
                plan_id,
                namespace,
                name,
                uuid.UUID(trace_id),
                generation,
                spec.model,
                spec.priority,
                spec.suspend,
                spec.requirements,
                Decimal(str(budget.effective_limit_usd)),
                Decimal(str(budget.soft_cap_percent)),
                Decimal(str(budget.hard_cap_percent)),
                uid,
                None if llm is None else llm.pool,
                None if llm is None else json.dumps(llm.as_json()),
            )
            trace = await connection.fetchval("SELECT trace_id FROM masterplans WHERE id = $1", plan_id)
            rows = await connection.fetch(
                "SELECT atom_id, fingerprint FROM atoms WHERE masterplan_id = $1 FOR UPDATE", plan_id
            )
            sync = sync_atoms({r["atom_id"]: r["fingerprint"] for r in rows}, atoms)
            if not sync.changed and len(rows) == len(atoms):
                if was_suspended and not spec.suspend:
                    await _restart_ramp(connection, plan_id)
                return plan_id, sync
            await connection.execute(
                "DELETE FROM atoms WHERE masterplan_id = $1 AND atom_id = ANY($2::text[])",
                plan_id,
                list(sync.delete),
            )
            await connection.execute(
                """INSERT INTO waves (masterplan_id, wave_index, trace_id, atom_count)
                   SELECT $1, i, $2, n FROM unnest($3::int[], $4::int[]) AS t(i, n)
                   ON CONFLICT (masterplan_id, wave_index) DO UPDATE SET atom_count = excluded.atom_count""",
                plan_id,
                trace,
                list(range(len(plan.waves))),
                [len(w) for w in plan.waves],
            )
            by_id = {atom.id: atom for atom in atoms}
            changed = [by_id[aid] for aid in (*sync.insert, *sync.reset)]
            await connection.executemany(
                """INSERT INTO atoms (masterplan_id, atom_id, trace_id, wave_index, file, language, description,
                       depends_on, estimated_tokens, fingerprint, priority, max_attempts)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                   ON CONFLICT (masterplan_id, atom_id) DO UPDATE SET
                       wave_index = excluded.wave_index, file = excluded.file, language = excluded.language,
                       description = excluded.description, depends_on = excluded.depends_on,
                       estimated_tokens = excluded.estimated_tokens, fingerprint = excluded.fingerprint,
                       priority = excluded.priority, max_attempts = excluded.max_attempts,
                       state = 'pending', attempts = 0, claims = 0, last_error = NULL, output = NULL,
                       lease_owner = NULL, lease_expires_at = NULL, lease_token = NULL, started_at = NULL,
                       finished_at = NULL, updated_at = now()""",
                [
                    (
                        plan_id,
                        atom.id,
                        trace,
                        wave_of[atom.id],
                        atom.file,
                        atom.language.value,
                        atom.description,
                        list(dict.fromkeys(atom.depends_on)),
                        atom.estimated_tokens,
                        atom_fingerprint(atom),
                        plan.priority[atom.id],
                        max_attempts,
                    )
                    for atom in changed
                ],
            )
            # Kept atoms may have moved to another level when the plan around them changed.
            await connection.executemany(
                "UPDATE atoms SET wave_index = $3, priority = $4 WHERE masterplan_id = $1 AND atom_id = $2",
                [(plan_id, aid, wave_of[aid], plan.priority[aid]) for aid in sync.keep],
            )
            await connection.execute(
                "DELETE FROM waves WHERE masterplan_id = $1 AND wave_index >= $2", plan_id, len(plan.waves)
            )
            await connection.execute("DELETE FROM atom_dependencies WHERE masterplan_id = $1", plan_id)
            await connection.copy_records_to_table(
                "atom_dependencies",
                records=[
                    (plan_id, atom.id, dep, trace) for atom in atoms for dep in dict.fromkeys(atom.depends_on)
                ],
                columns=["masterplan_id", "atom_id", "depends_on", "trace_id"],
            )
            await connection.execute(_REFRESH_READINESS_SQL, plan_id)
            await _restart_ramp(connection, plan_id)
            await notify_ready(connection)
        return plan_id, sync

    async def set_suspended(self, plan_id: uuid.UUID, suspended: bool) -> None:
        async with self.pool.acquire() as connection, connection.transaction():
            was_suspended = await connection.fetchval(
                "SELECT suspended FROM masterplans WHERE id = $1 FOR UPDATE", plan_id
            )
            await connection.execute(
                "UPDATE masterplans SET suspended = $2, updated_at = now() WHERE id = $1", plan_id, suspended
            )
            if was_suspended and not suspended:
                await _restart_ramp(connection, plan_id)
            if not suspended:
                await notify_ready(connection)

    async def retire(self, plan_id: uuid.UUID) -> bool:
        """The run's Masterplan was deleted: release its reservations, drop its queue rows, tell the executors
        (RETIRED_CHANNEL). False if it was already retired or never registered."""
        async with self.pool.acquire() as connection, connection.transaction():
            return await _retire(connection, plan_id)

    async def retire_missing(
        self, namespaces: Collection[str], live: Collection[tuple[str, str, str]], listed_at: datetime
    ) -> list[uuid.UUID]:
        """Retire the live runs in `namespaces` registered before `listed_at` (the database's clock) whose
        object is not among `live` (namespace, name, uid), i.e. deleted while no delete was seen. A run
        from before uids were recorded is matched by name. Local runs are never in a watched namespace."""
        uids = {uid for _, _, uid in live}
        names = {(namespace, name) for namespace, name, _ in live}
        rows = await self.pool.fetch(
            """SELECT id, namespace, name, uid FROM masterplans
               WHERE retired_at IS NULL AND namespace = ANY($1::text[]) AND created_at < $2""",
            list(namespaces),
            listed_at,
        )
        gone = [
            r["id"]
            for r in rows
            if (r["uid"] not in uids if r["uid"] is not None else (r["namespace"], r["name"]) not in names)
        ]
        return [plan_id for plan_id in gone if await self.retire(plan_id)]

    async def llm_pools(self) -> list[PoolConfig]:
        """The LLM pools of plans that are not retired, one per pool (plans of a pool share their config)."""
        rows = await self.pool.fetch(
            """SELECT DISTINCT ON (llm_pool) llm_pool, llm_config FROM masterplans
               WHERE llm_pool IS NOT NULL AND retired_at IS NULL ORDER BY llm_pool, updated_at DESC"""
        )
        return [PoolConfig.from_json(r["llm_pool"], json.loads(r["llm_config"])) for r in rows]

    async def live_run(self, namespace: str, name: str) -> uuid.UUID | None:
        """The run of namespace/name that is not retired (a deleted Masterplan's runs are), None if none."""
        run: uuid.UUID | None = await self.pool.fetchval(
            "SELECT id FROM masterplans WHERE namespace = $1 AND name = $2 AND retired_at IS NULL",
            namespace,
            name,
        )
        return run

    async def identity(self, plan_id: uuid.UUID) -> tuple[str, str] | None:
        """(namespace, name) of a stored Masterplan, None if unknown."""
        row = await self.pool.fetchrow("SELECT namespace, name FROM masterplans WHERE id = $1", plan_id)
        return (row["namespace"], row["name"]) if row else None
