"""The cost ledger: reserve the worst case before an LLM call, settle to actual usage after, in Postgres.

Every step is one transaction holding the Masterplan row lock, so any number of executors racing on
one budget can never reserve past the hard cap.
"""

import asyncio
import json
import time
import uuid
from collections.abc import Sequence
from decimal import Decimal
from enum import Enum
from typing import Any, Final, Literal

import asyncpg

from mge.adapters.store.queue import READY_CHANNEL, ClaimedAtom
from mge.adapters.store.settlement import Reservation, Settlement, settlement_args
from mge.cost.caps import BudgetLimits, check_override, reservation_decision
from mge.models.cost_api import CostEventView
from mge.models.masterplan import Budget
from mge.models.progress import Spend

# Only a fallback: executors pass a TTL above the longest call their settings allow, and extend what they
# hold on every heartbeat, so a reservation never expires under a running call.
DEFAULT_RESERVATION_TTL_S: Final = 600.0
# Waiting for calls in flight to settle: first and longest pause between tries.
_WAIT_FIRST_S: Final = 0.05
_WAIT_MAX_S: Final = 2.0


class BudgetBusy(Exception):
    """Refused only because calls in flight hold the rest of the budget, for longer than the caller would wait.

    Not the hard cap: the plan is not marked exhausted, and the call may fit once those calls settle.
    """


_LOCK_PLAN: Final = """
SELECT trace_id, current_cost_usd, reserved_cost_usd, budget_limit_usd, soft_cap_percentage, hard_cap_percentage,
       budget_exhausted, budget_override_approved_by, budget_override_approved_at, budget_override_limit_usd,
       budget_override_reason
FROM masterplans WHERE id = $1 FOR NO KEY UPDATE
"""

_EVENT: Final = """
INSERT INTO cost_events (masterplan_id, trace_id, atom_id, wave_index, model, kind, amount_usd, prompt_tokens,
                         completion_tokens, cached_tokens, cumulative_cost_usd, budget_limit_usd, detail)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
"""


# A granted reservation in one statement (the plan row is already locked): the reservation, the plan's
# reserved total and the "reserve" event. One round trip under the lock instead of three.
_RESERVE: Final = """
WITH reservation AS (
    INSERT INTO cost_reservations (masterplan_id, atom_id, trace_id, executor, amount_usd, expires_at,
                                   lease_token)
    VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6), $7)
    RETURNING id
), plan AS (
    UPDATE masterplans SET reserved_cost_usd = $10 WHERE id = $1
), event AS (
    INSERT INTO cost_events (masterplan_id, trace_id, atom_id, wave_index, model, kind, amount_usd,
                             cumulative_cost_usd, budget_limit_usd, detail)
    VALUES ($1, $11, $2, $8, $9, 'reserve', $5, $12, $13, '{}')
)
SELECT id FROM reservation
"""

# A reservation granted in one statement when the budget has room (migration 0018 says how); NULL when not.
_RESERVE_IF_ROOM: Final = "SELECT mge_reserve_if_room($1, $2, $3, $4, $5, $6, $7, $8, $9)"

_RELEASE_DEAD_SQL: Final = """
    DELETE FROM cost_reservations r
    WHERE r.masterplan_id = $1
      AND (r.expires_at < now()
           OR EXISTS (SELECT 1 FROM atoms a
                      WHERE a.masterplan_id = r.masterplan_id AND a.atom_id = r.atom_id
                        AND a.lease_token <> r.lease_token))
    RETURNING r.atom_id, r.amount_usd
"""


def _reservation_args(
    atom: ClaimedAtom, executor: str, amount: Decimal, ttl_s: float
) -> tuple[uuid.UUID, str, uuid.UUID, str, Decimal, float, uuid.UUID | None, int, str]:
    """Parameters $1-$9 of both reservation statements."""
    return (
        atom.masterplan_id,
        atom.atom_id,
        atom.trace_id,
        executor,
        amount,
        ttl_s,
        atom.lease_token,
        atom.wave_index,
        atom.model,
    )


def _limits(row: Any) -> BudgetLimits:
    return BudgetLimits(row["budget_limit_usd"], row["soft_cap_percentage"], row["hard_cap_percentage"])


class _Busy(Enum):
    """A try refused only for calls in flight (see BudgetBusy)."""

    BUSY = "busy"


_Try = Reservation | Literal[_Busy.BUSY] | None


class CostLedger:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        # Give-backs of reservations granted to a caller that was cancelled meanwhile (kept referenced).
        self._giving_back: set[asyncio.Task[None]] = set()

    async def _event(self, connection: Any, plan_id: uuid.UUID, row: Any, kind: str, **fields: Any) -> None:
        await connection.execute(
            _EVENT,
            plan_id,
            row["trace_id"],
            fields.get("atom_id"),
            fields.get("wave_index"),
            fields.get("model"),
            kind,
            fields.get("amount", Decimal(0)),
            fields.get("prompt_tokens", 0),
            fields.get("completion_tokens", 0),
            fields.get("cached_tokens", 0),
            fields.get("cumulative", row["current_cost_usd"]),
            row["budget_limit_usd"],
            json.dumps(fields.get("detail", {})),
        )

    async def _give_back(
        self, connection: Any, plan_id: uuid.UUID, row: Any, delete: str, *args: Any, why: str
    ) -> Decimal:
        """Delete reservations (`delete` returns atom_id, amount_usd) and return their money, inside the caller's
        transaction holding the plan lock; one "release" event each."""
        released = await connection.fetch(delete, *args)
        total = sum((r["amount_usd"] for r in released), Decimal(0))
        for r in released:
            await self._event(
                connection,
                plan_id,
                row,
                "release",
                atom_id=r["atom_id"],
                amount=r["amount_usd"],
                detail={"why": why},
            )
        if total:
            await connection.execute(
                "UPDATE masterplans SET reserved_cost_usd = reserved_cost_usd - $2 WHERE id = $1",
                plan_id,
                total,
            )
        return total

    async def _release_expired(self, connection: Any, plan_id: uuid.UUID, row: Any) -> Decimal:
        """Reservations of executors that died: give the money back (inside the caller's transaction).

        Dead means the TTL ran out, or the atom is now held under a newer claim: the lease (renewed by the
        same heartbeat, but far shorter than the TTL) ran out and the atom was claimed again, so the new
        claim reserves for it and the old reservation would only hold the budget until its TTL."""
        return await self._give_back(connection, plan_id, row, _RELEASE_DEAD_SQL, plan_id, why="expired")

    async def reserve(
        self,
        atom: ClaimedAtom,
        executor: str,
        amount: Decimal,
        ttl_s: float = DEFAULT_RESERVATION_TTL_S,
        *,
        wait_s: float | None = 0.0,
    ) -> Reservation | None:
        """Reserve the call's worst case; None (and the plan marked exhausted) if it would cross the hard cap
        even with nothing outstanding.

        Refused only because other calls' reservations fill the budget, it tries again as they settle, for up
        to `wait_s` seconds (None: until granted or the hard cap), then raises BudgetBusy.
        """
        deadline = None if wait_s is None else time.monotonic() + wait_s
        pause = _WAIT_FIRST_S
        while True:
            granted = await self._reserve_once(atom, executor, amount, ttl_s)
            if granted is not _Busy.BUSY:
                return granted
            left = float("inf") if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise BudgetBusy(
                    f"calls in flight hold the rest of the budget; ${amount} did not fit within {wait_s:.0f}s"
                )
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, _WAIT_MAX_S)

    async def _reserve_once(self, atom: ClaimedAtom, executor: str, amount: Decimal, ttl_s: float) -> _Try:
        """One try. A cancellation that lands after the grant committed gives the grant back before it passes
        on, so no reservation is left to its TTL with nobody to settle it."""
        attempt = asyncio.ensure_future(self._decide(atom, executor, amount, ttl_s))
        try:
            return await asyncio.shield(attempt)
        except asyncio.CancelledError:
            give_back = asyncio.ensure_future(self._give_back_if_granted(attempt, atom))
            self._giving_back.add(give_back)
            give_back.add_done_callback(self._giving_back.discard)
            await asyncio.shield(give_back)
            raise

    async def _give_back_if_granted(self, attempt: "asyncio.Future[_Try]", atom: ClaimedAtom) -> None:
        try:
            granted = await attempt
        except Exception:  # the try itself failed: nothing was granted
            return
        if isinstance(granted, Reservation):
            await self.release(granted, atom, why="cancelled")

    async def _decide(self, atom: ClaimedAtom, executor: str, amount: Decimal, ttl_s: float) -> _Try:
        plan_id = atom.masterplan_id
        # An atom claimed before may have left a dead reservation: the locked path gives those back, so that
        # a plan's reserved total does not keep a dead executor's money until its TTL.
        if atom.claims > 1:
            return await self._decide_locked(atom, executor, amount, ttl_s)
        reservation_id = await self.pool.fetchval(
            _RESERVE_IF_ROOM, *_reservation_args(atom, executor, amount, ttl_s)
        )
        if reservation_id is not None:
            return Reservation(reservation_id, plan_id, amount)
        return await self._decide_locked(atom, executor, amount, ttl_s)

    async def _decide_locked(self, atom: ClaimedAtom, executor: str, amount: Decimal, ttl_s: float) -> _Try:
        """Under the plan lock: give dead reservations back, then grant, wait or mark the hard cap."""
        plan_id = atom.masterplan_id
        async with self.pool.acquire() as connection, connection.transaction():
            row: Any = await connection.fetchrow(_LOCK_PLAN, plan_id)
            reserved = row["reserved_cost_usd"] - await self._release_expired(connection, plan_id, row)
            decision = reservation_decision(row["current_cost_usd"], reserved, amount, _limits(row))
            if decision.wait:
                return _Busy.BUSY
            if not decision.granted:
                if not row["budget_exhausted"]:
                    await connection.execute(
                        "UPDATE masterplans SET budget_exhausted = true WHERE id = $1", plan_id
                    )
                    await self._event(
                        connection,
                        plan_id,
                        row,
                        "hard_cap",
                        atom_id=atom.atom_id,
                        wave_index=atom.wave_index,
                        model=atom.model,
                        detail={"requested": str(amount), "headroom": str(decision.headroom_usd)},
                    )
                return None
            reservation_id = await connection.fetchval(
                _RESERVE,
                *_reservation_args(atom, executor, amount, ttl_s),
                reserved + amount,
                row["trace_id"],
                row["current_cost_usd"],
                row["budget_limit_usd"],
            )
        return Reservation(reservation_id, plan_id, amount)

    async def release(self, reservation: Reservation, atom: ClaimedAtom, *, why: str) -> None:
        """Give a reservation back unspent (its call was never made), with a "release" event."""
        async with self.pool.acquire() as connection, connection.transaction():
            row: Any = await connection.fetchrow(_LOCK_PLAN, reservation.masterplan_id)
            await self._give_back(
                connection,
                reservation.masterplan_id,
                row,
                "DELETE FROM cost_reservations WHERE id = $1 RETURNING atom_id, amount_usd",
                reservation.id,
                why=why,
            )

    async def release_abandoned(self, plan_id: uuid.UUID) -> Decimal:
        """Local resume: every reservation of the plan belongs to the process that died; give it all back."""
        async with self.pool.acquire() as connection, connection.transaction():
            row: Any = await connection.fetchrow(_LOCK_PLAN, plan_id)
            return await self._give_back(
                connection,
                plan_id,
                row,
                "DELETE FROM cost_reservations WHERE masterplan_id = $1 RETURNING atom_id, amount_usd",
                plan_id,
                why="abandoned",
            )

    async def extend_reservations(self, executor: str, ttl_s: float) -> int:
        """Heartbeat: the reservations this executor holds live another `ttl_s` (its calls are still running)."""
        result = await self.pool.execute(
            """UPDATE cost_reservations SET expires_at = greatest(expires_at, now() + make_interval(secs => $2))
               WHERE executor = $1""",
            executor,
            float(ttl_s),
        )
        return int(str(result).split()[-1])

    async def settle(
        self,
        reservation: Reservation,
        atom: ClaimedAtom,
        *,
        amount: Decimal,
        prompt_tokens: int,
        completion_tokens: int,
        cached_tokens: int = 0,
    ) -> None:
        """Replace the reservation by the actual cost (0 for a cache hit or a call that never happened)."""
        settlement = Settlement(reservation, amount, prompt_tokens, completion_tokens, cached_tokens)
        await self.pool.execute(
            "SELECT mge_settle($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            *settlement_args(
                settlement, reservation.masterplan_id, atom.atom_id, atom.wave_index, atom.model
            ),
        )

    async def spend(self, plan_id: uuid.UUID) -> Spend:
        found = await self.spend_of([plan_id])
        if plan_id not in found:
            raise LookupError(f"no Masterplan with id {plan_id}")
        return found[plan_id]

    async def spend_of(self, plan_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Spend]:
        """Each registered plan's money, in one query (a plan not registered is left out)."""
        rows = await self.pool.fetch(
            """SELECT m.id, current_cost_usd, reserved_cost_usd, budget_limit_usd, soft_cap_percentage,
                      hard_cap_percentage, budget_exhausted, budget_override_approved_by,
                      coalesce(s.saved_usd, 0) AS cache_saved_usd
               FROM masterplans m
               LEFT JOIN (SELECT masterplan_id, sum(saved_usd) AS saved_usd FROM cache_savings
                          WHERE masterplan_id = ANY($1::uuid[]) GROUP BY masterplan_id) s
                      ON s.masterplan_id = m.id
               WHERE m.id = ANY($1::uuid[])""",
            list(plan_ids),
        )
        return {
            row["id"]: Spend(
                spent_usd=row["current_cost_usd"],
                reserved_usd=row["reserved_cost_usd"],
                limit_usd=row["budget_limit_usd"],
                soft_cap_percent=row["soft_cap_percentage"],
                hard_cap_percent=row["hard_cap_percentage"],
                exhausted=row["budget_exhausted"],
                override_by=row["budget_override_approved_by"],
                cache_saved_usd=row["cache_saved_usd"],
            )
            for row in rows
        }

    async def apply_budget(self, plan_id: uuid.UUID, budget: Budget) -> list[str]:
        """Make the stored budget match the spec; records an override and resumes an exhausted plan.

        Returns what happened ("override", "resume"); raises OverrideRejected for an override below spend.
        """
        limit = Decimal(str(budget.effective_limit_usd))
        soft, hard = Decimal(str(budget.soft_cap_percent)), Decimal(str(budget.hard_cap_percent))
        happened: list[str] = []
        async with self.pool.acquire() as connection, connection.transaction():
            row: Any = await connection.fetchrow(_LOCK_PLAN, plan_id)
            override = budget.override
            new_override = override is not None and (
                row["budget_override_limit_usd"] != Decimal(str(override.limit_usd))
                or row["budget_override_approved_by"] != override.approved_by
                or row["budget_override_reason"] != override.reason
            )
            if new_override:
                assert override is not None
                check_override(limit, row["current_cost_usd"], row["reserved_cost_usd"])
            unchanged = (row["budget_limit_usd"], row["soft_cap_percentage"], row["hard_cap_percentage"]) == (
                limit,
                soft,
                hard,
            )
            if unchanged and not new_override:
                return happened
            await connection.execute(
                """UPDATE masterplans SET budget_limit_usd = $2, soft_cap_percentage = $3, hard_cap_percentage = $4,
                       updated_at = now() WHERE id = $1""",
                plan_id,
                limit,
                soft,
                hard,
            )
            if new_override:
                assert override is not None
                await connection.execute(
                    """UPDATE masterplans SET budget_override_approved_by = $2, budget_override_approved_at = now(),
                           budget_override_limit_usd = $3, budget_override_reason = $4 WHERE id = $1""",
                    plan_id,
                    override.approved_by,
                    Decimal(str(override.limit_usd)),
                    override.reason,
                )
                await self._event(
                    connection,
                    plan_id,
                    row,
                    "override",
                    detail={
                        "approvedBy": override.approved_by,
                        "reason": override.reason,
                        "previousLimitUSD": f"{row['budget_limit_usd']:.2f}",
                        "newLimitUSD": f"{limit:.2f}",
                    },
                )
                happened.append("override")
            headroom = limit * hard / 100 - row["current_cost_usd"] - row["reserved_cost_usd"]
            if row["budget_exhausted"] and headroom > 0:
                await connection.execute(
                    "UPDATE masterplans SET budget_exhausted = false WHERE id = $1", plan_id
                )
                await self._event(connection, plan_id, row, "resume", detail={"headroomUSD": str(headroom)})
                await connection.execute("SELECT pg_notify($1, '')", READY_CHANNEL)
                happened.append("resume")
        return happened

    async def events(self, plan_id: uuid.UUID, *, after_id: int = 0, limit: int = 100) -> list[CostEventView]:
        rows = await self.pool.fetch(
            """SELECT id, kind, atom_id, amount_usd, cumulative_cost_usd, budget_limit_usd, prompt_tokens,
                      completion_tokens, detail, created_at
               FROM cost_events WHERE masterplan_id = $1 AND id > $2 ORDER BY id LIMIT $3""",
            plan_id,
            after_id,
            limit,
        )
        return [CostEventView(**{**dict(r), "detail": json.loads(r["detail"])}) for r in rows]
