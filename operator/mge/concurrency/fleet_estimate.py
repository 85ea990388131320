"""One estimate of an endpoint's limit for the whole fleet: one limiter fed every executor's calls, and shares.

Independent limiters in a fleet each see a share of the answers (a call or two in flight), so each decision
takes the fleet several round trips, and recovery after the provider gets its capacity back costs the most
(docs/concurrency.md, "One estimate for the fleet"). Here one executor, the leader, hears every executor's
calls start, answer and end, runs one limiter on them counted against the fleet's calls in flight, and splits
its limit among the executors.

Pure: the caller passes the events and the time; adapters/fleet_link.py carries them between executors.
"""

import bisect
import math
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from mge.concurrency.limiter import AdaptiveLimiter, Adjustment, Outcome, adjustment_log

# An executor reports its calls in flight (and how many it can hold) this often; one not heard of for
# LIVE_FOR_S has left the fleet (stopped, or its pod is gone) and its share goes to the others.
STATUS_EVERY_S: Final = 0.5
LIVE_FOR_S: Final = 5.0
# The fleet's calls in flight over this long: an answer is judged against the count when its call started.
HISTORY_S: Final = 300.0
# Shares older than this are not the fleet's estimate any more (the leader or the store is gone): each
# executor goes back to its own limiter.
SHARES_FRESH_FOR_S: Final = 2.0
# The calls an executor starts with alone (the executor's own limiter's initial limit).
STARTING_CALLS: Final = 2


class EventKind(StrEnum):
    START = "start"  # a call took a slot
    FINISH = "finish"  # a call gave its slot back
    OUTCOME = "outcome"  # an answer, a failure, or a retried failure inside a call
    STATUS = "status"  # the executor's calls in flight, and how many it can hold


@dataclass(frozen=True)
class FleetEvent:
    executor: str
    kind: EventKind
    at: float  # wall-clock seconds: events of different executors meet on the leader's clock
    outcome: Outcome = Outcome.OK
    latency_s: float = 0.0
    tokens: int = 0
    in_flight: int = 0
    most: int = 0  # status: the calls the executor can hold at most (its concurrency)


def split(limit: int, most: dict[str, int]) -> dict[str, int]:
    """Equal shares of `limit`, but none past what its executor can hold (`most`, its concurrency): what one
    cannot take goes to the others. The executors of an endpoint draw from one queue of atoms, so none has more
    to do than another while the queue lasts. Each gets at least one call."""
    shares: dict[str, int] = {}
    left = limit
    pending = sorted(most, key=lambda executor: (most[executor], executor))
    while pending and most[pending[0]] * len(pending) <= left:
        executor = pending.pop(0)
        shares[executor] = most[executor]
        left -= most[executor]
    if pending:
        base, extra = divmod(max(0, left), len(pending))
        for index, executor in enumerate(sorted(pending)):
            shares[executor] = base + (1 if index < extra else 0)
    return {executor: max(1, share) for executor, share in shares.items()}


@dataclass
class FleetEstimate:
    """The leader's limiter for one endpoint, fed by every executor's events.

    `continued_from` is the limit of a leader before this one. Without it the fleet is new: it starts at two
    calls for each executor, as each would start alone, and an executor that joins while that first slow start
    runs brings its two (executors of a rollout start over seconds, not at once).
    """

    continued_from: int | None = None
    maximum: int = 10_000
    limiter: AdaptiveLimiter = field(init=False)
    _in_flight: dict[str, int] = field(init=False, default_factory=dict)
    _most: dict[str, int] = field(init=False, default_factory=dict)
    _seen: dict[str, float] = field(init=False, default_factory=dict)
    # (time, fleet calls in flight from then on), increasing in time.
    _history: list[tuple[float, int]] = field(init=False, default_factory=list)
    _before_history: int = field(init=False, default=0)
    _now: float = field(init=False, default=-math.inf)
    _starters: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.limiter = AdaptiveLimiter(
            minimum=1,
            maximum=self.maximum,
            initial=max(1, self.continued_from or STARTING_CALLS),
            counts_whole_fleet=True,
        )
        if self.continued_from is not None:
            self._starters = -1  # not a new fleet: nobody brings calls

    def _joined(self, now: float) -> None:
        """A new executor: in a new fleet's first slow start, the limit takes its two calls."""
        if self._starters < 0:
            return
        self._starters += 1
        if self._starters > 1:
            self.limiter.grow_for_newcomer(STARTING_CALLS, now)

    @property
    def in_flight(self) -> int:
        return sum(self._in_flight.values())

    def _count(self, executor: str, calls: int, at: float) -> None:
        """`executor` holds `calls` from `at` on. Events of different executors arrive up to a tick out of order:
        a change is filed at its own time, and the counts after it move with it."""
        delta = max(0, calls) - self._in_flight.get(executor, 0)
        self._in_flight[executor] = max(0, calls)
        if not delta:
            return
        history = self._history
        index = bisect.bisect_right(history, at, key=lambda entry: entry[0])
        before = history[index - 1][1] if index else self._before_history
        history.insert(index, (at, before + delta))
        for later in range(index + 1, len(history)):
            history[later] = (history[later][0], history[later][1] + delta)
        if len(history) > 1024 and history[0][0] < at - HISTORY_S:
            cut = bisect.bisect_left(history, at - HISTORY_S, key=lambda entry: entry[0])
            self._before_history = history[cut - 1][1]
            del history[:cut]

    def _in_flight_at(self, at: float) -> int:
        """The fleet's calls in flight at `at` (its own call included when `at` is its start)."""
        index = bisect.bisect_right(self._history, at, key=lambda entry: entry[0])
        return self._history[index - 1][1] if index else self._before_history

    def apply(self, event: FleetEvent, at: float) -> None:
        """One event, at `at` on the caller's monotonic clock (the event's own time, mapped onto it)."""
        # The limiter's clock never goes back; the counts are filed at the events' own times.
        now = self._now = max(self._now, at)
        executor = event.executor
        if executor not in self._seen:
            self._joined(now)
        self._seen[executor] = now
        calls = self._in_flight.get(executor, 0)
        match event.kind:
            case EventKind.START:
                self._count(executor, calls + 1, at)
            case EventKind.FINISH:
                self._count(executor, calls - 1, at)
            case EventKind.STATUS:
                # The executor's own count wins: starts missed before this leader took over, or lost.
                self._most[executor] = max(1, event.most)
                self._count(executor, event.in_flight, at)
            case EventKind.OUTCOME:
                started_with = None
                if event.latency_s > 0:
                    started_with = max(1, self._in_flight_at(at - event.latency_s))
                self.limiter.record(
                    event.outcome,
                    in_flight=max(1, self.in_flight),
                    now=now,
                    latency_s=event.latency_s,
                    tokens=event.tokens,
                    started_with=started_with,
                )

    def shares(self, now: float) -> dict[str, int]:
        """Each live executor's share of the limit; executors not heard of for LIVE_FOR_S are forgotten."""
        for executor in [e for e, seen in self._seen.items() if now - seen > LIVE_FOR_S]:
            del self._seen[executor]
            self._most.pop(executor, None)
            self._count(executor, 0, now)
            del self._in_flight[executor]
        # An executor heard of only through calls (its status is on its way) can hold what the limit allows.
        return split(self.limiter.limit, {e: self._most.get(e, self.limiter.limit) for e in self._seen})


@dataclass
class SharedLimiter:
    """An executor's limiter while its fleet shares one estimate: its share, as the link last read it; its own
    limiter (which keeps hearing its calls) when there is none (no leader yet, or the store is gone: the link
    drops a share older than SHARES_FRESH_FOR_S). Events for the leader wait in `outbox`. Times are monotonic;
    events carry wall-clock times, which executors share."""

    executor: str
    local: AdaptiveLimiter
    # Wall clock minus the monotonic clock the gate passes: events carry wall-clock times.
    wall_offset_s: float
    outbox: deque[FleetEvent] = field(default_factory=lambda: deque(maxlen=10_000))
    share: int | None = None
    # The changes of the limit in force: the shares, and the own limiter's while it decides.
    adjustments: deque[Adjustment] = field(default_factory=adjustment_log)

    @property
    def limit(self) -> int:
        return self.local.limit if self.share is None else max(1, min(self.share, self.local.maximum))

    def set_share(self, share: int | None, now: float, fleet_limit: int | None = None) -> None:
        """The share the leader wrote for this executor (of `fleet_limit`); None: none is in force any more."""
        before = self.limit
        self.share = share
        if self.limit != before:
            reason = (
                f"share of the fleet's estimate ({fleet_limit} calls)"
                if share is not None
                else "fleet's estimate out of reach: this executor's own limit"
            )
            self.adjustments.append(Adjustment(now, before, self.limit, reason))

    def _wall(self, now: float) -> float:
        return now + self.wall_offset_s

    def started(self, now: float) -> None:
        self.outbox.append(FleetEvent(self.executor, EventKind.START, self._wall(now)))

    def finished(self, now: float) -> None:
        self.outbox.append(FleetEvent(self.executor, EventKind.FINISH, self._wall(now)))

    def status(self, now: float, *, in_flight: int) -> None:
        self.outbox.append(
            FleetEvent(
                self.executor, EventKind.STATUS, self._wall(now), in_flight=in_flight, most=self.local.maximum
            )
        )

    def record(
        self,
        outcome: Outcome,
        *,
        in_flight: int,
        now: float,
        latency_s: float = 0.0,
        tokens: int = 0,
        started_with: int | None = None,
    ) -> None:
        before = self.local.limit
        self.local.record(
            outcome,
            in_flight=in_flight,
            now=now,
            latency_s=latency_s,
            tokens=tokens,
            started_with=started_with,
        )
        if self.share is None and self.local.limit != before:
            self.adjustments.append(self.local.adjustments[-1])
        self.outbox.append(
            FleetEvent(
                self.executor,
                EventKind.OUTCOME,
                self._wall(now),
                outcome=outcome,
                latency_s=latency_s,
                tokens=tokens,
            )
        )
