"""The Postgres store: plan registration, the atom queue with leases, progress aggregates."""

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

import asyncpg
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from mge.adapters import metrics
from mge.adapters.store.migrate import migrate
from mge.concurrency.circuit import EndpointReport
from mge.concurrency.ramp import RampPolicy, restart_allowance
from mge.concurrency.signals import SignalHealth
from mge.concurrency.statistics import CallSummary
from mge.models.concurrency_api import (
    EndpointOutage,
    ExecutorConcurrency,
    PlanRampStatus,
    ScalingDecision,
    ScalingSignals,
)
from mge.models.masterplan import Atom, MasterplanSpec
from mge.models.progress import Progress, WaveProgress
from mge.plan.dag import Plan
from mge.plan.sync import PlanSync, atom_fingerprint, sync_atoms

T = TypeVar("T")

MASTERPLAN_NAMESPACE: Final = uuid.UUID("6f1c1d1e-4d0b-4c55-9d1a-6d6765000001")


# Unreachable host, server starting up, database not created yet, authentication not set up yet.
_CONNECT_ERRORS: Final = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
# Postgres went away under an open pool (restart, failover, network, connection slots full): an outage,
# not a query bug, so callers see StoreUnavailable.
_CONNECTION_LOST: Final = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.InterfaceError,
)


# Postgres went away for a moment (a restart, a failover, connections killed): the same statement may work on
# a fresh connection. Anything else (a constraint, a bug) is not retried.
TRANSIENT_ERRORS: Final = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    # A killed connection's first use: "cannot switch to state ...; another operation is in progress".
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
)


# Whatever a store call can raise when Postgres is down, restarting or refusing: callers that can wait for
# the next round (the scaler, status reports) catch these rather than end.
STORE_ERRORS: Final = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


async def retry_transient(write: Callable[[], Awaitable[T]], *, attempts: int = 8) -> T:
    """Run `write` (one transaction) again while Postgres is briefly unreachable, backing off up to ~30 s in
    all. Rolled back on failure, so a retry never applies it twice (unless the commit's answer itself was
    lost, which only the write's own checks can tell)."""
    async for attempt in AsyncRetrying(
        stop=stop_after_attempt(attempts),
        wait=wait_exponential_jitter(multiplier=0.1, max=8),
        retry=retry_if_exception_type(TRANSIENT_ERRORS),
        reraise=True,
    ):
        with attempt:
            return await write()
    raise AssertionError("unreachable: tenacity either returns or reraises")


# Executors LISTEN here so newly ready atoms are claimed at once, not at the next poll.
READY_CHANNEL: Final = "mge_atoms_ready"
# ... and here (payload: the run's id) so they stop a deleted Masterplan's atoms at once.
RETIRED_CHANNEL: Final = "mge_plans_retired"
# The `operation` label of mge_db_query_duration_seconds: a query's first keyword (bounded cardinality).
_OPERATIONS: Final = frozenset({"select", "insert", "update", "delete", "with"})


def _operation(query: str) -> str:
    words = query.split(None, 1)
    first = words[0].lower() if words else ""
    return first if first in _OPERATIONS else "other"


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Pool reset on release: nothing to undo. The store leaves no session state behind (its locks and
    snapshots are transaction-scoped, its one LISTEN is removed before that connection is released, and
    asyncpg rolls back an open transaction first), so the default reset query (advisory unlock, CLOSE ALL,
    UNLISTEN *, RESET ALL) would be a round trip on every release: about one in five of an atom's queries."""


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


async def _notify_ready(connection: Any) -> None:
    await connection.execute("SELECT pg_notify($1, '')", READY_CHANNEL)


class StoreUnavailable(RuntimeError):
    """Postgres cannot be reached; the message names the host, never the password."""


class PlanRetired(LookupError):
    """The run was retired (its Masterplan was deleted): it is never registered or run again."""


def masterplan_uuid(namespace: str, name: str) -> uuid.UUID:
    """Local runs' stable id (`mge run` has no object uid): the same plan maps to the same rows on resume."""
    return uuid.uuid5(MASTERPLAN_NAMESPACE, f"{namespace}/{name}")


def run_uuid(uid: str) -> uuid.UUID:
    """A Masterplan object's run id: its metadata.uid (a UUID on real API servers; anything else is hashed)."""
    try:
        return uuid.UUID(uid)
    except ValueError:
        return uuid.uuid5(MASTERPLAN_NAMESPACE, uid)


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


def dsn_host(dsn: str) -> str:
    parts = urlsplit(dsn)
    query_host = [p.split("=", 1)[1] for p in parts.query.split("&") if p.startswith("host=")]
    host = parts.hostname or (query_host[0] if query_host else "localhost")
    return f"{host}:{parts.port}" if parts.port else host


@dataclass(frozen=True, slots=True)
class ClaimedAtom:
    masterplan_id: uuid.UUID
    atom_id: str
    trace_id: uuid.UUID
    file: str
    language: str
    description: str
    depends_on: list[str]
    wave_index: int
    attempts: int
    max_attempts: int
    model: str
    estimated_tokens: int | None
    claims: int
    priority: int = 1
    plan_priority: int = 0
    # This claim's own token, named by every write made under it (None: a pseudo-atom that holds no claim,
    # such as an acceptance test's calls in the ledger, which then can write nothing to the atoms table).
    lease_token: uuid.UUID | None = None


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


# The ramp rows of plans with work, locked for the claim that follows in the same transaction: a concurrent
# claim skips those plans rather than use the same room (and the claim, a later statement, sees every atom
# claimed before it got the lock).
_LOCK_RAMPS_SQL: Final = """
SELECT r.masterplan_id, r.allowance
FROM plan_ramps r
WHERE EXISTS (SELECT 1 FROM atoms w WHERE w.masterplan_id = r.masterplan_id AND w.state IN ('ready', 'running'))
FOR UPDATE OF r SKIP LOCKED
"""

# Per plan, at most its room (a ramping plan's allowance, locked in $3/$4, minus its atoms running on any
# executor; plans ramping under another claim's lock are left out), then the best of those overall. Each
# plan's candidates are locked with SKIP LOCKED, so executors never share an atom.
_CLAIM_SQL: Final = """
WITH plans AS (
    SELECT m.id, m.priority,
           CASE WHEN r.plan_id IS NULL THEN $2
                ELSE r.allowance - (SELECT count(*) FROM atoms x WHERE x.masterplan_id = m.id
                                    AND x.state = 'running' AND x.lease_expires_at >= now())::int
           END AS room
    FROM masterplans m
    LEFT JOIN unnest($3::uuid[], $4::int[]) AS r(plan_id, allowance) ON r.plan_id = m.id
    WHERE NOT m.suspended AND NOT m.budget_exhausted
      AND (r.plan_id IS NOT NULL OR NOT EXISTS (SELECT 1 FROM plan_ramps l WHERE l.masterplan_id = m.id))
      AND EXISTS (SELECT 1 FROM atoms w WHERE w.masterplan_id = m.id AND w.state IN ('ready', 'running'))
),
claimable AS (
    SELECT c.masterplan_id, c.atom_id
    FROM plans p
    CROSS JOIN LATERAL (
        SELECT a.masterplan_id, a.atom_id, a.priority, a.updated_at
        FROM atoms a
        WHERE a.masterplan_id = p.id
          AND (a.state = 'ready' OR (a.state = 'running' AND a.lease_expires_at < now()))
        ORDER BY a.priority DESC, a.updated_at, a.atom_id
        LIMIT greatest(least(p.room, $2), 0)
        FOR UPDATE OF a SKIP LOCKED
    ) c
    ORDER BY c.priority DESC, p.priority DESC, c.updated_at, c.atom_id
    LIMIT $2
)
UPDATE atoms a
SET state = 'running', lease_owner = $1, lease_expires_at = now() + make_interval(secs => $5),
    lease_token = gen_random_uuid(), claims = a.claims + 1, started_at = coalesce(a.started_at, now()), updated_at = now()
FROM claimable c, masterplans m
WHERE a.masterplan_id = c.masterplan_id AND a.atom_id = c.atom_id AND m.id = a.masterplan_id
RETURNING a.masterplan_id, a.atom_id, a.trace_id, a.file, a.language, a.description, a.depends_on,
          a.wave_index, a.attempts, a.max_attempts, m.model, a.estimated_tokens, a.claims,
          a.priority, m.priority AS plan_priority, a.lease_token
"""


class Store:
    def __init__(
        self, pool: asyncpg.Pool, query_listeners: list[Callable[[float], None]] | None = None
    ) -> None:
        self.pool = pool
        # Told the duration in seconds of every query on the pool (with `connect`): the executors' own DB
        # p95 for a scaler without Prometheus.
        self.query_listeners = query_listeners if query_listeners is not None else []

    @classmethod
    async def connect(cls, dsn: str, *, min_size: int = 1, max_size: int = 10, attempts: int = 5) -> "Store":
        """Open a pool and migrate, retrying with backoff; StoreUnavailable names the host if it never answers.

        Every query on the pool is timed into mge_db_query_duration_seconds and the store's query listeners.
        """
        listeners: list[Callable[[float], None]] = []

        def timed(record: asyncpg.connection.LoggedQuery) -> None:
            metrics.DB_LATENCY.labels(_operation(record.query)).observe(record.elapsed)
            for listener in listeners:
                listener(record.elapsed)

        async def time_queries(connection: asyncpg.Connection) -> None:
            connection.add_query_logger(timed)

        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(attempts),
                wait=wait_exponential_jitter(multiplier=0.2, max=5),
                retry=retry_if_exception_type(_CONNECT_ERRORS),
                reraise=True,
            ):
                with attempt:
                    pool = await asyncpg.create_pool(
                        dsn, min_size=min_size, max_size=max_size, init=time_queries, reset=_keep_session
                    )
        except _CONNECT_ERRORS as error:
            raise StoreUnavailable(f"cannot reach Postgres at {dsn_host(dsn)}: {error}") from error
        async with pool.acquire() as connection:
            await migrate(connection)
        return cls(pool, listeners)

    async def close(self) -> None:
        await self.pool.close()

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
                       requirements, budget_limit_usd, soft_cap_percentage, hard_cap_percentage, uid)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
                   ON CONFLICT (id) DO UPDATE SET generation = $5, model = $6, priority = $7, suspended = $8,
                       requirements = $9, uid = coalesce($13, masterplans.uid), updated_at = now()""",
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
            await _notify_ready(connection)
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
                await _notify_ready(connection)

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

    async def clock(self) -> datetime:
        """The database's current time (the sweep compares it with rows' timestamps)."""
        now: datetime = await self.pool.fetchval("SELECT now()")
        return now

    async def claim(self, executor: str, limit: int, lease_seconds: float) -> list[ClaimedAtom]:
        """Take up to `limit` ready atoms (or atoms whose lease expired), highest priority first; a ramping
        plan only up to its fleet-wide allowance."""
        async with self.pool.acquire() as connection, connection.transaction():
            ramps = await connection.fetch(_LOCK_RAMPS_SQL)
            rows = await connection.fetch(
                _CLAIM_SQL,
                executor,
                limit,
                [r["masterplan_id"] for r in ramps],
                [r["allowance"] for r in ramps],
                float(lease_seconds),
            )
        return [ClaimedAtom(**dict(row)) for row in rows]  # RETURNING lists exactly ClaimedAtom's fields

    async def grow_ramp(self, plan_id: uuid.UUID, policy: RampPolicy) -> bool:
        """One of the plan's calls answered: grow its ramp by one. False when the plan is not (or no longer)
        ramping."""
        async with self.pool.acquire() as connection, connection.transaction():
            allowance = await connection.fetchval(
                "SELECT allowance FROM plan_ramps WHERE masterplan_id = $1 FOR UPDATE", plan_id
            )
            if allowance is None:
                return False
            grown = policy.grown(allowance)
            if grown is None:
                await connection.execute("DELETE FROM plan_ramps WHERE masterplan_id = $1", plan_id)
            else:
                await connection.execute(
                    "UPDATE plan_ramps SET allowance = $2 WHERE masterplan_id = $1",
                    plan_id,
                    grown,
                )
            await _notify_ready(connection)  # more room: executors waiting for it can claim now
            return grown is not None

    async def plan_ramps(self) -> list[PlanRampStatus]:
        """Plans with work that are still ramping, oldest ramp first."""
        rows = await self.pool.fetch(
            """SELECT m.namespace, m.name, r.allowance, r.started_at,
                      (SELECT count(*) FROM atoms a WHERE a.masterplan_id = r.masterplan_id
                       AND a.state = 'running')::int AS running
               FROM plan_ramps r JOIN masterplans m ON m.id = r.masterplan_id
               WHERE EXISTS (SELECT 1 FROM atoms w WHERE w.masterplan_id = r.masterplan_id
                             AND w.state IN ('ready', 'running'))
               ORDER BY r.started_at, m.namespace, m.name"""
        )
        return [PlanRampStatus(**dict(row)) for row in rows]

    async def heartbeat(
        self, executor: str, lease_seconds: float, tokens: Sequence[uuid.UUID]
    ) -> set[uuid.UUID]:
        """Extend the leases of the claims in hand (`tokens`); returns the tokens still held. A claim this
        executor no longer works on (its task crashed) is not renewed: its lease runs out and it is taken over."""
        rows = await self.pool.fetch(
            """UPDATE atoms SET lease_expires_at = now() + make_interval(secs => $2)
               WHERE state = 'running' AND lease_owner = $1 AND lease_token = ANY($3::uuid[])
               RETURNING lease_token""",
            executor,
            float(lease_seconds),
            list(tokens),
        )
        return {row["lease_token"] for row in rows}

    async def record_attempt(
        self,
        atom: ClaimedAtom,
        *,
        executor: str,
        span_id: str,
        outcome: str,
        error: str | None,
        prompt_tokens: int,
        completion_tokens: int,
        cached: bool,
        cost_usd: Decimal,
        latency_ms: int,
        started_at: datetime,
    ) -> bool:
        """Count one LLM generation against the atom; False if this claim was lost meanwhile."""
        async with self.pool.acquire() as connection, connection.transaction():
            attempt = await connection.fetchval(
                """UPDATE atoms SET attempts = attempts + 1, prompt_tokens = prompt_tokens + $3,
                       completion_tokens = completion_tokens + $4, cost_usd = cost_usd + $5, last_error = $6,
                       updated_at = now()
                   WHERE masterplan_id = $1 AND atom_id = $2 AND state = 'running' AND lease_owner = $7
                     AND lease_token = $8
                   RETURNING attempts""",
                atom.masterplan_id,
                atom.atom_id,
                prompt_tokens,
                completion_tokens,
                cost_usd,
                error,
                executor,
                atom.lease_token,
            )
            if attempt is None:
                return False
            await connection.execute(
                """INSERT INTO atom_attempts (masterplan_id, atom_id, trace_id, span_id, attempt, executor, outcome,
                       error, prompt_tokens, completion_tokens, cached, cost_usd, latency_ms, started_at)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)""",
                atom.masterplan_id,
                atom.atom_id,
                atom.trace_id,
                span_id,
                attempt,
                executor,
                outcome,
                error,
                prompt_tokens,
                completion_tokens,
                cached,
                cost_usd,
                latency_ms,
                started_at,
            )
            return True

    async def succeed(self, atom: ClaimedAtom, executor: str, output: str) -> bool:
        """Store the code and make dependents whose last dependency this was ready, in one transaction."""
        async with self.pool.acquire() as connection, connection.transaction():
            done = await connection.fetchval(
                """UPDATE atoms SET state = 'succeeded', output = $3, last_error = NULL, lease_owner = NULL,
                       lease_expires_at = NULL, lease_token = NULL, finished_at = now(), updated_at = now()
                   WHERE masterplan_id = $1 AND atom_id = $2 AND state = 'running' AND lease_owner = $4
                     AND lease_token = $5
                   RETURNING 1""",
                atom.masterplan_id,
                atom.atom_id,
                output,
                executor,
                atom.lease_token,
            )
            if done is None:
                return False
            freed = await connection.fetchval(
                """WITH freed AS (
                       UPDATE atoms a SET unmet_dependencies = a.unmet_dependencies - 1,
                           state = CASE WHEN a.unmet_dependencies = 1 THEN 'ready' ELSE a.state END,
                           updated_at = now()
                       FROM atom_dependencies d
                       WHERE d.masterplan_id = $1 AND d.depends_on = $2
                         AND a.masterplan_id = d.masterplan_id AND a.atom_id = d.atom_id AND a.state = 'pending'
                       RETURNING a.state
                   )
                   SELECT count(*) FILTER (WHERE state = 'ready') FROM freed""",
                atom.masterplan_id,
                atom.atom_id,
            )
            if freed:
                await _notify_ready(connection)
            return True

    async def fail(self, atom: ClaimedAtom, executor: str, error: str) -> bool:
        """Give up on the atom; its dependents stay pending (blocked) and are reported as such."""
        result = await self.pool.execute(
            """UPDATE atoms SET state = 'failed', last_error = $3, lease_owner = NULL, lease_expires_at = NULL,
                   lease_token = NULL, finished_at = now(), updated_at = now()
               WHERE masterplan_id = $1 AND atom_id = $2 AND state = 'running' AND lease_owner = $4
                 AND lease_token = $5""",
            atom.masterplan_id,
            atom.atom_id,
            error,
            executor,
            atom.lease_token,
        )
        return str(result).endswith(" 1")

    async def listen_for_ready(
        self, callback: Callable[[], None], on_retired: Callable[[uuid.UUID], None] | None = None
    ) -> Callable[[], Awaitable[None]]:
        """Call `callback` whenever atoms become ready anywhere, and `on_retired` with the id of each run
        retired; returns a function that stops listening.
        If Postgres drops the connection (a restart), it listens again on a new one and calls `callback`
        once then (atoms may have become ready while nobody listened). If it cannot listen now, it keeps
        trying in the background (the caller's poll covers the meantime)."""
        listener = _ReadyListener(self.pool, callback, on_retired)
        try:
            await listener.listen()
        except STORE_ERRORS:
            listener.listen_later()
        return listener.stop

    async def release(self, atom: ClaimedAtom, executor: str, *, count_claim: bool = False) -> bool:
        """Hand an unfinished atom back (graceful shutdown, suspension, no LLM slot): ready again. The claim is
        not counted unless `count_claim` (the attempt crashed: a poison atom must not be retried forever)."""
        async with self.pool.acquire() as connection, connection.transaction():
            result = await connection.execute(
                """UPDATE atoms SET state = 'ready', lease_owner = NULL, lease_expires_at = NULL, lease_token = NULL,
                       claims = CASE WHEN $5 THEN claims ELSE greatest(claims - 1, 0) END, updated_at = now()
                   WHERE masterplan_id = $1 AND atom_id = $2 AND state = 'running' AND lease_owner = $3
                     AND lease_token = $4""",
                atom.masterplan_id,
                atom.atom_id,
                executor,
                atom.lease_token,
                count_claim,
            )
            released = str(result).endswith(" 1")
            if released:
                await _notify_ready(connection)
        return released

    async def dependency_outputs(self, plan_id: uuid.UUID, atom_ids: Sequence[str]) -> list[AtomOutput]:
        rows = await self.pool.fetch(
            """SELECT atom_id, file, output FROM atoms
               WHERE masterplan_id = $1 AND atom_id = ANY($2::text[]) AND state = 'succeeded'
               ORDER BY wave_index, atom_id""",
            plan_id,
            list(atom_ids),
        )
        return [AtomOutput(r["atom_id"], r["file"], r["output"]) for r in rows]

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

    async def runnable(self) -> tuple[int, int]:
        """(ready, running) atoms of plans that are not suspended, across the whole store: executor demand."""
        row: Any = await self.pool.fetchrow(
            """SELECT count(*) FILTER (WHERE a.state = 'ready') AS ready,
                      count(*) FILTER (WHERE a.state = 'running') AS running
               FROM atoms a JOIN masterplans m ON m.id = a.masterplan_id
               WHERE NOT m.suspended AND NOT m.budget_exhausted AND a.state IN ('ready', 'running')"""
        )
        return int(row["ready"]), int(row["running"])

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
    ) -> None:
        stats = statistics or CallSummary(None, None, 0, 0)
        health = endpoint or EndpointReport(None, "closed", None, None)
        await self.pool.execute(
            """INSERT INTO executor_status (executor, llm_limit, in_flight, queue_size, adjustments, atoms_held,
                   llm_p95_s, db_p95_s, llm_requests, llm_errors, llm_endpoint, llm_circuit, llm_last_error,
                   llm_down_since, llm_rate_limits, updated_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
                       now() - make_interval(secs => $14), $15, now())
               ON CONFLICT (executor) DO UPDATE SET llm_limit = $2, in_flight = $3, queue_size = $4,
                   adjustments = $5, atoms_held = $6, llm_p95_s = $7, db_p95_s = $8, llm_requests = $9,
                   llm_errors = $10, llm_endpoint = $11, llm_circuit = $12, llm_last_error = $13,
                   llm_down_since = now() - make_interval(secs => $14), llm_rate_limits = $15,
                   updated_at = now()""",
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
        )

    async def endpoint_outages(self, fresh_s: float = 120.0) -> list[EndpointOutage]:
        """LLM endpoints that executors seen in the last `fresh_s` seconds have stopped sending work to."""
        rows = await self.pool.fetch(
            """SELECT llm_endpoint AS endpoint, (array_agg(llm_last_error ORDER BY updated_at DESC))[1]
                          AS last_error,
                      min(llm_down_since) AS down_since, count(*) AS executors
               FROM executor_status
               WHERE llm_circuit <> 'closed' AND llm_endpoint IS NOT NULL AND llm_down_since IS NOT NULL
                 AND updated_at > now() - make_interval(secs => $1)
               GROUP BY llm_endpoint ORDER BY llm_endpoint""",
            fresh_s,
        )
        return [EndpointOutage(**{**dict(r), "last_error": r["last_error"] or "unknown error"}) for r in rows]

    async def executor_statistics(self, fresh_s: float = 60.0) -> list[CallSummary]:
        """The call statistics of executors that reported in the last `fresh_s` seconds."""
        rows = await self.pool.fetch(
            """SELECT llm_p95_s, db_p95_s, llm_requests, llm_errors FROM executor_status
               WHERE updated_at > now() - make_interval(secs => $1)""",
            fresh_s,
        )
        return [CallSummary(**dict(r)) for r in rows]

    async def executor_load(self, fresh_s: float = 60.0) -> dict[str, int]:
        """Atoms held per executor that reported in the last `fresh_s` seconds (a few heartbeats)."""
        rows = await self.pool.fetch(
            """SELECT executor, greatest(atoms_held, in_flight) AS held FROM executor_status
               WHERE updated_at > now() - make_interval(secs => $1)""",
            fresh_s,
        )
        return {r["executor"]: int(r["held"]) for r in rows}

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
                      llm_requests, llm_errors, adjustments, llm_endpoint, llm_circuit, llm_last_error,
                      llm_down_since, llm_rate_limits, updated_at
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

    async def release_abandoned(self, plan_id: uuid.UUID) -> int:
        """Local resume: atoms left running by a process that is gone are ready again at once."""
        result = await self.pool.execute(
            """UPDATE atoms SET state = 'ready', lease_owner = NULL, lease_expires_at = NULL, lease_token = NULL,
                   updated_at = now()
               WHERE masterplan_id = $1 AND state = 'running'""",
            plan_id,
        )
        return int(str(result).split()[-1])

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


class _ReadyListener:
    """LISTEN on one pooled connection, and again on a new one whenever Postgres ends it."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        callback: Callable[[], None],
        on_retired: Callable[[uuid.UUID], None] | None = None,
    ) -> None:
        self._pool, self._callback, self._on_retired = pool, callback, on_retired
        self._connection: Any = None
        self._again: asyncio.Task[None] | None = None
        self._stopped = False

    def _notified(self, *_: object) -> None:
        self._callback()

    def _retired(self, _connection: object, _pid: object, _channel: object, payload: object) -> None:
        if self._on_retired is not None:
            self._on_retired(uuid.UUID(str(payload)))

    def listen_later(self, *_: object) -> None:
        """The connection ended (or none could be had): listen again, in the background."""
        if not self._stopped and (self._again is None or self._again.done()):
            self._again = asyncio.get_running_loop().create_task(self._listen_again())

    async def listen(self) -> None:
        connection = await self._pool.acquire()
        try:
            await connection.add_listener(READY_CHANNEL, self._notified)
            await connection.add_listener(RETIRED_CHANNEL, self._retired)
            connection.add_termination_listener(self.listen_later)
        except BaseException:
            await self._pool.release(connection)
            raise
        self._connection = connection

    async def _listen_again(self) -> None:
        ended, self._connection = self._connection, None
        if ended is not None:
            with contextlib.suppress(*STORE_ERRORS):
                await self._pool.release(ended)
        delay = 0.1
        while not self._stopped:
            try:
                await self.listen()
            except STORE_ERRORS:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._callback()
            return

    async def stop(self) -> None:
        self._stopped = True
        if self._again is not None:
            self._again.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._again
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            connection.remove_termination_listener(self.listen_later)
            await connection.remove_listener(READY_CHANNEL, self._notified)
            await connection.remove_listener(RETIRED_CHANNEL, self._retired)
        finally:
            await self._pool.release(connection)


class LazyStore:
    """Connects on first use and again after a failure, so the operator starts (and recovers) without Postgres."""

    def __init__(self, dsn: str, *, max_size: int = 10) -> None:
        self._dsn, self._max_size = dsn, max_size
        self._store: Store | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> Store:
        async with self._lock:
            if self._store is None:
                self._store = await Store.connect(self._dsn, max_size=self._max_size, attempts=1)
            return self._store

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[Store]:
        """The store, with Postgres going away inside the block raised as StoreUnavailable (the one place
        asyncpg's connection errors are told apart from query errors)."""
        store = await self.get()
        try:
            yield store
        except _CONNECTION_LOST as error:
            raise StoreUnavailable(f"lost the connection to Postgres: {error}") from error

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()
            self._store = None
