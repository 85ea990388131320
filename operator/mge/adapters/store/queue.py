"""The atom queue: claims with leases and ramps, heartbeats, attempts, success, failure, hand-back, readiness."""

import asyncio
import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

import asyncpg

from mge.adapters.store.errors import STORE_ERRORS
from mge.concurrency.ramp import RampPolicy
from mge.models.concurrency_api import PlanRampStatus

# Executors LISTEN here so newly ready atoms are claimed at once, not at the next poll.
READY_CHANNEL: Final = "mge_atoms_ready"


# ... and here (payload: the run's id) so they stop a deleted Masterplan's atoms at once.
RETIRED_CHANNEL: Final = "mge_plans_retired"


async def notify_ready(connection: Any) -> None:
    await connection.execute("SELECT pg_notify($1, '')", READY_CHANNEL)


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
    # The plan has spec.context: retrieval runs for this atom (no query at all for plans without it).
    has_context: bool = False


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
    WHERE NOT m.suspended AND NOT m.budget_exhausted AND m.llm_pool IS NOT DISTINCT FROM $6
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
          a.priority, m.priority AS plan_priority, a.lease_token, m.context IS NOT NULL AS has_context
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


class AtomQueue:
    """Atoms as a queue: executors claim them under a lease and settle each attempt."""

    pool: asyncpg.Pool

    async def clock(self) -> datetime:
        """The database's current time (the sweep compares it with rows' timestamps)."""
        now: datetime = await self.pool.fetchval("SELECT now()")
        return now

    async def claim(
        self, executor: str, limit: int, lease_seconds: float, llm_pool: str | None = None
    ) -> list[ClaimedAtom]:
        """Take up to `limit` ready atoms (or atoms whose lease expired) of plans on `llm_pool` (None:
        the default endpoint), highest priority first; a ramping plan only up to its fleet-wide allowance."""
        async with self.pool.acquire() as connection, connection.transaction():
            ramps = await connection.fetch(_LOCK_RAMPS_SQL)
            rows = await connection.fetch(
                _CLAIM_SQL,
                executor,
                limit,
                [r["masterplan_id"] for r in ramps],
                [r["allowance"] for r in ramps],
                float(lease_seconds),
                llm_pool,
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
            await notify_ready(connection)  # more room: executors waiting for it can claim now
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
        context_chunks: Sequence[Mapping[str, str]] | None = None,
    ) -> bool:
        """Count one LLM generation against the atom; False if this claim was lost meanwhile.
        `context_chunks`: the retrieved chunks its prompt carried (id, origin, title)."""
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
                       error, prompt_tokens, completion_tokens, cached, cost_usd, latency_ms, started_at,
                       context_chunks)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)""",
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
                None if context_chunks is None else json.dumps([dict(c) for c in context_chunks]),
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
                await notify_ready(connection)
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
                await notify_ready(connection)
        return released

    async def release_abandoned(self, plan_id: uuid.UUID) -> int:
        """Local resume: atoms left running by a process that is gone are ready again at once."""
        result = await self.pool.execute(
            """UPDATE atoms SET state = 'ready', lease_owner = NULL, lease_expires_at = NULL, lease_token = NULL,
                   updated_at = now()
               WHERE masterplan_id = $1 AND state = 'running'""",
            plan_id,
        )
        return int(str(result).split()[-1])
