"""Carries a fleet's LLM-call events to the executor leading its estimate, and the shares back, through Redis.

Per endpoint: a stream of events, a leader key with a lease, a hash of shares (docs/concurrency.md).
"""

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Callable
from typing import Any, Final

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from mge.concurrency.fleet_estimate import (
    LIVE_FOR_S,
    SHARES_FRESH_FOR_S,
    STATUS_EVERY_S,
    EventKind,
    FleetEstimate,
    FleetEvent,
    SharedLimiter,
)
from mge.concurrency.limiter import Outcome

log = logging.getLogger(__name__)

TICK_S: Final = 0.05
# The leader holds its key this long without renewing it (it renews every tick): a leader that dies is
# replaced within this, and its estimate's last limit is where the next one starts.
LEADER_LEASE_MS: Final = 3000
STREAM_MAX: Final = 100_000
STREAM_KEEP_MS: Final = 600_000
_READ_MAX: Final = 10_000
_LIMIT: Final = "_limit"
# Bumped by the leader at every write: a follower knows the shares are fresh by seeing it change, which no
# difference between the pods' clocks can fool (a timestamp compared across pods could).
_WRITE: Final = "_write"


def _encode(event: FleetEvent) -> dict[str, str | float | int]:
    # The leader's limiter treats a refusal for the provider's budget as any other error (neither is
    # congestion), and executors of earlier versions, which may lead during a rollout, know only "error".
    outcome = Outcome.ERROR if event.outcome is Outcome.RATE_LIMITED else event.outcome
    return {
        "x": event.executor,
        "k": event.kind.value,
        "t": event.at,
        "o": outcome.value,
        "l": event.latency_s,
        "n": event.tokens,
        "f": event.in_flight,
        "m": event.most,
    }


def _decode(fields: dict[bytes, bytes]) -> FleetEvent:
    def text(key: str) -> str:
        return fields[key.encode()].decode()

    return FleetEvent(
        text("x"),
        EventKind(text("k")),
        float(text("t")),
        outcome=Outcome(text("o")),
        latency_s=float(text("l")),
        tokens=int(text("n")),
        in_flight=int(text("f")),
        most=int(text("m")),
    )


class FleetLink:
    """One executor's side of its fleet's shared estimate for one endpoint.

    Every tick it sends the events its limiter collected, reads its share, and takes or renews the leader's key;
    as the leader it reads every executor's events, runs the estimate and writes each executor's share. When
    Redis cannot be reached, or nobody leads for SHARES_FRESH_FOR_S, the executor's own limiter decides alone.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        endpoint: str,
        limiter: SharedLimiter,
        *,
        in_flight: Callable[[], int],
        on_limit_change: Callable[[int], None],
    ) -> None:
        # One hash slot for an endpoint's keys (the braces), so its MULTI works on a Redis Cluster too.
        key = "mge:fleet:{" + hashlib.sha256(endpoint.encode()).hexdigest()[:16] + "}"
        self._events, self._leader, self._shares = f"{key}:events", f"{key}:leader", f"{key}:shares"
        self.redis, self.limiter = redis, limiter
        self._in_flight, self._on_limit_change = in_flight, on_limit_change
        self.estimate: FleetEstimate | None = None  # while this executor leads
        self._read_from = "0-0"
        self._shared_at = -math.inf
        self._last_write: bytes | None = None
        self._write_seen_at = -math.inf
        self._status_at = -math.inf
        self._led_at = -math.inf
        self._failing = False

    @property
    def leading(self) -> bool:
        return self.estimate is not None

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            now = time.monotonic()
            try:
                await self.tick(now)
                if self._failing:
                    log.info("fleet estimate: Redis answers again")
                self._failing = False
            except Exception as error:  # the link never ends the executor: its own limiter decides meanwhile
                if not self._failing:
                    log.warning(
                        "fleet estimate: %s; this executor's own limiter decides meanwhile",
                        error,
                        exc_info=not isinstance(error, (RedisError, OSError)),
                    )
                self._failing = True
                self._drop_stale_share(now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), TICK_S)
        with contextlib.suppress(RedisError, OSError):
            await self.redis.eval(_RESIGN, 1, self._leader, self.limiter.executor)

    async def tick(self, now: float) -> None:
        limiter = self.limiter
        if now - self._status_at >= STATUS_EVERY_S:
            limiter.status(now, in_flight=self._in_flight())
            self._status_at = now
        # Events held back while Redis was out of reach are news no more: the statuses recount the calls.
        oldest = time.time() - LIVE_FOR_S
        events = [event for event in limiter.outbox if event.at >= oldest]
        limiter.outbox.clear()
        pipe = self.redis.pipeline(transaction=False)
        for event in events:
            pipe.xadd(self._events, _encode(event), maxlen=STREAM_MAX, approximate=True)  # type: ignore[arg-type]
        pipe.eval(_TAKE_OR_RENEW, 1, self._leader, limiter.executor, LEADER_LEASE_MS)
        pipe.hgetall(self._shares)
        try:
            *_, leader, shares = await pipe.execute()
        except BaseException:
            limiter.outbox.extendleft(reversed(events))  # sent with the next tick that reaches Redis
            raise
        self._read(shares, now)
        self._drop_stale_share(now)
        if leader.decode() == limiter.executor:
            await self._lead(shares, now)
        else:
            self.estimate = None

    def _drop_stale_share(self, now: float) -> None:
        """No fresh shares for SHARES_FRESH_FOR_S: the executor's own limiter decides."""
        if now - self._shared_at > SHARES_FRESH_FOR_S:
            self._set_share(None, now)

    def _read(self, shares: dict[bytes, bytes], now: float) -> None:
        write = shares.get(_WRITE.encode())
        if write is not None and write != self._last_write:
            self._last_write, self._write_seen_at = write, now
        mine = shares.get(self.limiter.executor.encode())
        if mine is None or write is None or now - self._write_seen_at > SHARES_FRESH_FOR_S:
            return
        self._shared_at = self._write_seen_at  # fresh for as long as the leader's writes keep changing it
        fleet_limit = shares.get(_LIMIT.encode())
        self._set_share(int(mine), now, int(fleet_limit) if fleet_limit else None)

    async def _new_events(self) -> list[FleetEvent]:
        read: Any = await self.redis.xread({self._events: self._read_from}, count=_READ_MAX)
        events = []
        for _stream, entries in read:
            for entry_id, fields in entries:
                self._read_from = entry_id.decode()
                try:
                    events.append(_decode(fields))
                except (
                    KeyError,
                    ValueError,
                ) as unreadable:  # written by another version: skipped, not read again
                    log.warning("fleet event %s of %s skipped: %r", self._read_from, self._events, unreadable)
        return events

    def _set_share(self, share: int | None, now: float, fleet_limit: int | None = None) -> None:
        before = self.limiter.limit
        self.limiter.set_share(share, now, fleet_limit)
        if self.limiter.limit != before:
            self._on_limit_change(before)

    async def _lead(self, shares: dict[bytes, bytes], now: float) -> None:
        # A blip shorter than the lease keeps the estimate (nobody else could take the key meanwhile); after a
        # longer one, another executor may have led, and this one takes over afresh.
        if self.estimate is None or now - self._led_at > LEADER_LEASE_MS / 1000:
            # Taking over: from the events of the last LIVE_FOR_S (by the server's clock, as its stream ids are),
            # so every live executor's latest status is read and each has its share at once; from the last
            # leader's limit, or as a new fleet (two calls for each executor, not one cold start for all).
            seconds, microseconds = await self.redis.time()  # stream ids are the server's clock
            self._read_from = f"{(seconds - int(LIVE_FOR_S)) * 1000 + microseconds // 1000}-0"
            events = await self._new_events()
            last = shares.get(_LIMIT.encode())
            self.estimate = FleetEstimate(continued_from=int(last) if last else None)
            log.info(
                "fleet estimate: this executor leads it, %s", f"from {int(last)} calls" if last else "new"
            )
        else:
            events = await self._new_events()
        wall_offset = time.time() - time.monotonic()
        for event in events:
            self.estimate.apply(event, event.at - wall_offset)
        split = self.estimate.shares(now)
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self._shares)
        previous = shares.get(_WRITE.encode())
        write = int(previous) + 1 if previous else 1
        written: dict[str, int] = {**split, _LIMIT: self.estimate.limiter.limit, _WRITE: write}
        pipe.hset(self._shares, mapping=written)  # type: ignore[arg-type]
        # Nothing outlives a fleet that stopped: the shares after a few leases, the events after STREAM_KEEP_MS.
        pipe.pexpire(self._shares, LEADER_LEASE_MS * 10)
        pipe.pexpire(self._events, STREAM_KEEP_MS)
        await pipe.execute()
        self._led_at = now


# Take the key if nobody holds it, renew it if we do; returns the holder.
_TAKE_OR_RENEW: Final = """
local holder = redis.call('GET', KEYS[1])
if not holder then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return ARGV[1]
end
if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return holder
"""

# A leader stopping gives the key up at once, so the next leader does not wait out the lease.
_RESIGN: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""
