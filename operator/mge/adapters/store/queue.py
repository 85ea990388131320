"""The atom queue: claims with leases and ramps, heartbeats, attempts, success, failure, hand-back, readiness."""

import asyncio
import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

import asyncpg

from mge.adapters.store.errors import STORE_ERRORS
from mge.adapters.store.progress import AtomOutput
from mge.adapters.store.settlement import Reservation, Settlement, settlement_args
from mge.concurrency.ramp import RampPolicy
from mge.models.concurrency_api import PlanRampStatus

# Executors LISTEN here so newly ready atoms are claimed at once, not at the next poll.
READY_CHANNEL: Final = "mge_atoms_ready"


# ... and here (payload: the run's id) so they stop a deleted Masterplan's atoms at once.
RETIRED_CHANNEL: Final = "mge_plans_retired"


async def notify_ready(connection: Any) -> None:
    await connection.execute("SELECT pg_notify($1, '')", READY_CHANNEL)


async def _give_back_claim_reservations(connection: Any, atom: "ClaimedAtom", why: str) -> None:
    """Inside the caller's transaction, before it writes the atom (the plan row is locked first)."""
    if atom.reservation is not None:
        await connection.execute(
            "SELECT mge_give_back_claim_reservations($1, $2, $3, $4)",
            atom.masterplan_id,
            atom.atom_id,
            atom.lease_token,
            why,
        )


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
    # The code of its dependencies, read with the claim (its prompt carries it).
    dependency_outputs: tuple[AtomOutput, ...] = ()
    # Its call's reservation, made with the claim by the write of the atom before (None: reserved when called).
    reservation: Reservation | None = None


# Ramps, candidates and the claim in one round trip (migration 0016 says how).
_CLAIM_SQL: Final = "SELECT * FROM mge_claim_atoms($1, $2, $3, $4)"
_CLAIM_RESERVING_SQL: Final = "SELECT * FROM mge_claim_atoms_reserving($1, $2, $3, $4, $5, $6, $7)"


def _claimed(row: asyncpg.Record, reserved_usd: Decimal | None = None) -> ClaimedAtom:
    fields = dict(row)
    # A claim made by an attempt's write (mge_finish_attempt) says these too.
    fields.pop("still_ours", None)
    reservation_id = fields.pop("reservation_id", None)
    outputs = json.loads(fields.pop("dependency_outputs"))
    reservation = None
    if reservation_id is not None and reserved_usd is not None:
        reservation = Reservation(reservation_id, fields["masterplan_id"], reserved_usd)
    return ClaimedAtom(
        **fields, dependency_outputs=tuple(AtomOutput(*output) for output in outputs), reservation=reservation
    )


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One LLM generation for an atom, as its attempt row records it."""

    span_id: str
    outcome: str
    error: str | None
    prompt_tokens: int
    completion_tokens: int
    cached: bool
    cost_usd: Decimal
    latency_ms: int
    started_at: datetime
    # The retrieved chunks its prompt carried (id, origin, title); None: the plan has no retrieval.
    context_chunks: Sequence[Mapping[str, str]] | None = None


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """What a claim asks for: up to `limit` atoms under a lease of `lease_seconds`, of plans on `llm_pool`;
    with `reserve_usd`, an attempt's write also reserves that much (for `reservation_ttl_s`) for the call of
    each atom it claims of its own plan (see `mge_finish_attempt`)."""

    limit: int
    lease_seconds: float
    llm_pool: str | None = None
    reserve_usd: Decimal | None = None
    reservation_ttl_s: float = 0.0


@dataclass(frozen=True, slots=True)
class FinishedAttempt:
    still_ours: bool  # False: the claim was lost, and only the settlement was written
    claimed: list[ClaimedAtom]  # the next atoms claimed in the same transaction (`claim_next`)


@dataclass(frozen=True, slots=True)
class Succeed:
    """The attempt's code is the atom's output."""

    output: str


@dataclass(frozen=True, slots=True)
class GiveUp:
    """The atom fails with this error (its last attempt failed)."""

    error: str


AtomEnding = Succeed | GiveUp


# The attempt's one write, the claim of the next atoms and the wake-up of other executors in one round trip
# (migrations 0017 and 0018 say how): settlement_args ($1-$10), the attempt under the claim ($11 executor,
# $12 lease token), the atom's end ($13 'succeeded' | 'failed' | NULL, $14 output, $15 last error), the
# attempt row ($16-$26), the claim ($27 limit, 0 for none; $28 lease seconds; $29 LLM pool) and the
# reservation made with it ($30 amount, NULL for none; $31 its TTL in seconds).
_FINISH_ATTEMPT_SQL: Final = f"SELECT * FROM mge_finish_attempt({', '.join(f'${n}' for n in range(1, 32))})"


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
            await _discard(self._pool, connection)
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
        connection.remove_termination_listener(self.listen_later)
        try:
            await connection.remove_listener(READY_CHANNEL, self._notified)
            await connection.remove_listener(RETIRED_CHANNEL, self._retired)
        except BaseException:
            await _discard(self._pool, connection)
            raise
        await self._pool.release(connection)


@dataclass
class _Subscriber:
    wake: Callable[[], bool]
    on_retired: Callable[[uuid.UUID], None] | None


@dataclass
class _Turns:
    """The executors of one LLM pool, and whose turn is next."""

    subscribers: list[_Subscriber] = field(default_factory=list)
    next: int = 0

    def wake(self, wakes: int) -> None:
        count = len(self.subscribers)
        start = self.next
        for step in range(count):
            index = (start + step) % count
            if self.subscribers[index].wake():
                self.next = (index + 1) % count
                wakes -= 1
                if not wakes:
                    return


class _ReadyFanOut:
    """One LISTEN for every executor of a process (`mge run --executors N` runs them on one store), and one of
    them woken per notification.

    Postgres hands each NOTIFY to every listening backend, and each backend's read is a transaction of its own:
    an executor per listener made as many of them per notification as executors in the process. And every
    executor woken claimed, though an atom or two had become ready: most of those claims came back empty. Here
    a notification wakes the next executor in turn that has room, in each LLM pool (a notification does not
    say whose atoms are ready); one whose claim got all it asked for passes the turn on to the next two in its
    pool, since more atoms may be ready: a wave of ready atoms reaches every executor with room in a few
    claims' time, not one claim after another."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._listener: _ReadyListener | None = None
        self._turns: dict[str | None, _Turns] = {}

    async def subscribe(
        self, wake: Callable[[], bool], on_retired: Callable[[uuid.UUID], None] | None, llm_pool: str | None
    ) -> Callable[[], Awaitable[None]]:
        subscriber = _Subscriber(wake, on_retired)
        turns = self._turns.setdefault(llm_pool, _Turns())
        turns.subscribers.append(subscriber)
        if self._listener is None:
            self._listener = _ReadyListener(self._pool, self._notified, self._retired)
            try:
                await self._listener.listen()
            except STORE_ERRORS:
                self._listener.listen_later()

        async def unsubscribe() -> None:
            turns.subscribers.remove(subscriber)
            if not turns.subscribers:
                self._turns.pop(llm_pool, None)
            if not self._turns and self._listener is not None:
                listener, self._listener = self._listener, None
                await listener.stop()

        return unsubscribe

    def _notified(self) -> None:
        """Atoms may be ready: wake the next executor in turn with room in each pool (none: the next executor to
        finish an atom claims them in its write)."""
        for turns in list(self._turns.values()):
            turns.wake(1)

    def pass_turn(self, llm_pool: str | None, wakes: int) -> None:
        turns = self._turns.get(llm_pool)
        if turns is not None:
            turns.wake(wakes)

    def _retired(self, plan: uuid.UUID) -> None:
        for turns in list(self._turns.values()):
            for subscriber in list(turns.subscribers):
                if subscriber.on_retired is not None:
                    subscriber.on_retired(plan)


async def _discard(pool: asyncpg.Pool, connection: Any) -> None:
    """Close a connection a listener could not finish setting up or tearing down, then hand it back: it may
    still LISTEN, and the pool would give it to the next caller with that listener (asyncpg warns)."""
    connection.terminate()
    await pool.release(connection)


class AtomQueue:
    """Atoms as a queue: executors claim them under a lease and settle each attempt."""

    pool: asyncpg.Pool
    _ready_fan_out: _ReadyFanOut | None = None

    async def clock(self) -> datetime:
        """The database's current time (the sweep compares it with rows' timestamps)."""
        now: datetime = await self.pool.fetchval("SELECT now()")
        return now

    async def claim(
        self,
        executor: str,
        limit: int,
        lease_seconds: float,
        llm_pool: str | None = None,
        reserve_usd: Mapping[uuid.UUID, Decimal] | None = None,
        reservation_ttl_s: float = 0.0,
    ) -> list[ClaimedAtom]:
        """Take up to `limit` ready atoms (or atoms whose lease expired) of plans on `llm_pool` (None:
        the default endpoint), highest priority first; a ramping plan only up to its fleet-wide allowance.
        With `reserve_usd`, each atom claimed for the first time of a plan it names comes with that much
        reserved for its call (for `reservation_ttl_s`), where the budget has room, in the same transaction."""
        if not reserve_usd:
            rows = await self.pool.fetch(_CLAIM_SQL, executor, limit, float(lease_seconds), llm_pool)
            return [_claimed(row) for row in rows]
        plans = list(reserve_usd)
        rows = await self.pool.fetch(
            _CLAIM_RESERVING_SQL,
            executor,
            limit,
            float(lease_seconds),
            llm_pool,
            plans,
            [reserve_usd[plan] for plan in plans],
            float(reservation_ttl_s),
        )
        return [_claimed(row, reserve_usd.get(row["masterplan_id"])) for row in rows]

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

    async def finish_attempt(
        self,
        atom: ClaimedAtom,
        executor: str,
        attempt: AttemptRecord,
        *,
        settlement: Settlement | None = None,
        ending: AtomEnding | None = None,
        claim_next: ClaimRequest | None = None,
    ) -> FinishedAttempt:
        """An attempt's one write: settle its reservation, count the attempt against the atom and record it,
        and, with an `ending`, store the code (and make dependents whose last dependency this was ready) or
        fail the atom. One call of `mge_finish_attempt`, so one round trip and one transaction: the plan row's
        lock is held only while the server works. With `claim_next` (the atom's task ends here, and its slot
        is free) the same transaction claims the next atoms: one commit instead of two.
        Not `still_ours` if this claim was lost meanwhile: then nothing but the settlement is written (money
        spent is spent, whoever holds the atom now)."""
        output = ending.output if isinstance(ending, Succeed) else None
        last_error = ending.error if isinstance(ending, GiveUp) else attempt.error
        end_state = None if ending is None else "succeeded" if isinstance(ending, Succeed) else "failed"
        args = (
            *settlement_args(settlement, atom.masterplan_id, atom.atom_id, atom.wave_index, atom.model),
            executor,
            atom.lease_token,
            end_state,
            output,
            last_error,
            atom.trace_id,
            attempt.span_id,
            attempt.outcome,
            attempt.error,
            attempt.prompt_tokens,
            attempt.completion_tokens,
            attempt.cached,
            attempt.cost_usd,
            attempt.latency_ms,
            attempt.started_at,
            None if attempt.context_chunks is None else json.dumps([dict(c) for c in attempt.context_chunks]),
        )
        claim = claim_next or ClaimRequest(limit=0, lease_seconds=0.0)
        rows = await self.pool.fetch(
            _FINISH_ATTEMPT_SQL,
            *args,
            claim.limit,
            float(claim.lease_seconds),
            claim.llm_pool,
            claim.reserve_usd,
            float(claim.reservation_ttl_s),
        )
        claimed = [_claimed(r, claim.reserve_usd) for r in rows if r["atom_id"] is not None]
        return FinishedAttempt(rows[0]["still_ours"], claimed)

    async def fail(self, atom: ClaimedAtom, executor: str, error: str) -> bool:
        """Give up on the atom; its dependents stay pending (blocked) and are reported as such. A reservation
        made with the claim goes back to the plan (no call was made under it)."""
        async with self.pool.acquire() as connection, connection.transaction():
            await _give_back_claim_reservations(connection, atom, "failed without a call")
            result = await connection.execute(
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
        self,
        wake: Callable[[], bool],
        on_retired: Callable[[uuid.UUID], None] | None = None,
        llm_pool: str | None = None,
    ) -> Callable[[], Awaitable[None]]:
        """When atoms become ready anywhere, call `wake` of one listener of this store on `llm_pool` after another
        until one returns True (it has room and claims them; then `pass_ready_turn`), and `on_retired` of all
        with the id of each run retired; returns a function that stops listening.
        If Postgres drops the connection (a restart), it listens again on a new one and wakes one then (atoms
        may have become ready while nobody listened). If it cannot listen now, it keeps trying in the
        background (the caller's poll covers the meantime)."""
        if self._ready_fan_out is None:
            self._ready_fan_out = _ReadyFanOut(self.pool)
        return await self._ready_fan_out.subscribe(wake, on_retired, llm_pool)

    def pass_ready_turn(self, llm_pool: str | None, *, claimed_all: bool) -> None:
        """A listener woken for ready atoms claimed: if it got all it asked for, more may be ready, and the next
        two with room claim; if it had no room left to claim with, the next one with room does."""
        if self._ready_fan_out is not None:
            self._ready_fan_out.pass_turn(llm_pool, wakes=2 if claimed_all else 1)

    async def release(self, atom: ClaimedAtom, executor: str, *, count_claim: bool = False) -> bool:
        """Hand an unfinished atom back (graceful shutdown, suspension, no LLM slot): ready again. The claim is
        not counted unless `count_claim` (the attempt crashed: a poison atom must not be retried forever).
        A reservation made with the claim for a call never made goes back to the plan."""
        async with self.pool.acquire() as connection, connection.transaction():
            await _give_back_claim_reservations(connection, atom, "handed back")
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
