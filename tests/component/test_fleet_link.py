"""Executors sharing one estimate of an endpoint's limit through a real Redis: one leads, each calls up to its
share, a leader that stops or dies is replaced from its last limit, and without Redis each limits alone."""

import asyncio
import contextlib
import time
from collections.abc import Iterator

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from mge.adapters.cache import connect_redis
from mge.adapters.embedded import EmbeddedRedis
from mge.adapters.fleet_link import LEADER_LEASE_MS, FleetLink, _encode
from mge.concurrency.fleet_estimate import SHARES_FRESH_FOR_S, EventKind, FleetEvent, SharedLimiter
from mge.concurrency.limiter import AdaptiveLimiter, Outcome
from tests.support.redis import kill, redis_server

pytestmark = pytest.mark.component

ENDPOINT = "https://llm.example/v1"


@pytest.fixture
def server() -> Iterator[EmbeddedRedis]:
    with redis_server() as running:
        yield running


class Member:
    """One executor's side: its limiter, its link, the calls it holds and wants."""

    def __init__(self, url: str, name: str, *, in_flight: int = 0, most: int = 64) -> None:
        self.limiter = SharedLimiter(
            name,
            AdaptiveLimiter(minimum=1, maximum=most, initial=2),
            wall_offset_s=time.time() - time.monotonic(),
        )
        self.in_flight = in_flight
        self.changes: list[int] = []
        self.redis = connect_redis(url)
        self.link = FleetLink(
            self.redis,
            ENDPOINT,
            self.limiter,
            in_flight=lambda: self.in_flight,
            on_limit_change=self.changes.append,
        )

    def answer(self, now: float, latency_s: float = 1.0) -> None:
        self.limiter.started(now - latency_s)
        self.limiter.record(Outcome.OK, in_flight=1, now=now, latency_s=latency_s, tokens=100, started_with=1)
        self.limiter.finished(now)


async def _ticks(members: list[Member], count: int = 2) -> None:
    for _ in range(count):
        for member in members:
            await member.link.tick(time.monotonic())


async def _answer_rounds(members: list[Member], rounds: int = 3) -> None:
    """Each member's call answers, then a tick, `rounds` times."""
    for _ in range(rounds):
        now = time.monotonic()
        for member in members:
            member.answer(now)
        await _ticks(members, 1)


async def test_one_executor_leads_and_every_executor_calls_up_to_its_share_of_one_limit(server):
    a, b = Member(server.url, "a", in_flight=2), Member(server.url, "b", in_flight=2, most=3)
    await _ticks([a, b])
    assert [m.link.leading for m in (a, b)] == [True, False]
    estimate = a.link.estimate
    assert estimate is not None
    assert estimate.limiter.limit == 4
    await _ticks([a, b])
    assert (a.limiter.share, b.limiter.share) == (2, 2)
    assert a.limiter.limit == 2
    assert b.limiter.limit == 2
    estimate.limiter.limit = 11
    await _ticks([a, b])
    assert (a.limiter.share, b.limiter.share) == (8, 3)  # b holds 3 at most: the rest is a's
    assert a.changes
    assert b.changes


async def test_the_leader_hears_both_executors_answers_and_slow_start_grows_the_fleets_limit(server):
    a, b = Member(server.url, "a", in_flight=2), Member(server.url, "b", in_flight=2)
    await _ticks([a, b])
    estimate = a.link.estimate
    assert estimate is not None
    before = estimate.limiter.limit
    await _answer_rounds([a, b])
    assert estimate.limiter.limit > before
    await _ticks([a, b])
    assert a.limiter.share + b.limiter.share == estimate.limiter.limit  # type: ignore[operator]


async def test_a_leader_that_stops_hands_over_at_once_and_the_next_starts_from_its_limit(server):
    a, b = Member(server.url, "a", in_flight=4), Member(server.url, "b", in_flight=4)
    await _ticks([a, b])
    assert a.link.estimate is not None
    a.link.estimate.limiter.limit = 13
    await _ticks([a, b])
    stop = asyncio.Event()
    stop.set()
    await a.link.run(stop)  # gives the leader's key up as it stops
    await _ticks([b])
    assert b.link.leading
    assert b.link.estimate is not None
    assert b.link.estimate.limiter.limit == 13


async def test_a_leader_that_dies_is_replaced_within_its_lease(server):
    a, b = Member(server.url, "a", in_flight=4), Member(server.url, "b", in_flight=4)
    await _ticks([a, b])
    assert a.link.leading
    started = time.monotonic()
    while not b.link.leading:  # a says nothing more: killed with its pod
        assert time.monotonic() - started < LEADER_LEASE_MS / 1000 + 1, "nobody took over"
        await _ticks([b], 1)
        await asyncio.sleep(0.05)
    await _ticks([b])
    assert b.limiter.share is not None


async def test_without_redis_each_executor_limits_alone_within_seconds_and_never_raises(server):
    a, b = Member(server.url, "a", in_flight=2), Member(server.url, "b", in_flight=2)
    await _ticks([a, b], 3)
    assert a.limiter.share is not None
    stop = asyncio.Event()
    runs = [asyncio.create_task(m.link.run(stop)) for m in (a, b)]
    await asyncio.sleep(0.2)
    kill(server)
    started = time.monotonic()
    while a.limiter.share is not None or b.limiter.share is not None:
        assert time.monotonic() - started < SHARES_FRESH_FOR_S + 2, "still on a share nobody renews"
        await asyncio.sleep(0.05)
    assert a.limiter.limit == a.limiter.local.limit
    assert b.limiter.limit == b.limiter.local.limit
    assert not any(run.done() for run in runs)  # the links keep trying; the executors keep calling
    stop.set()
    await asyncio.gather(*runs)
    for member in (a, b):
        with contextlib.suppress(Exception):
            await member.redis.aclose()


async def test_events_held_back_while_redis_was_out_of_reach_are_not_sent_once_stale(server):
    """An outage keeps events in the outbox; when Redis answers again, only those of the last seconds go out:
    a minute-old 429 says nothing about the provider now, and must not cut the fleet's limit."""
    a = Member(server.url, "a", in_flight=1)
    a.limiter.outbox.append(FleetEvent("a", EventKind.OUTCOME, time.time() - 60, outcome=Outcome.OVERLOADED))
    await _ticks([a], 3)
    assert a.link.estimate is not None
    assert a.link.estimate.limiter.limit == 2
    assert not a.link.estimate.limiter.adjustments


async def test_the_shares_of_a_hung_leader_are_dropped_within_2_s_of_its_last_write(server):
    """The leader's key is still held (a hung process keeps it for its lease), but its shares stop changing:
    within 2 s the follower goes back to its own limiter. Freshness is a change the follower sees on its own
    clock, so pods whose clocks disagree by seconds do not keep (or drop) a share for it."""
    a, b = Member(server.url, "a", in_flight=2), Member(server.url, "b", in_flight=2)
    await _ticks([a, b], 3)
    assert b.limiter.share is not None
    started = time.monotonic()
    while b.limiter.share is not None:  # only b ticks: a is hung
        assert time.monotonic() - started < SHARES_FRESH_FOR_S + 1, "a share nobody renews is still in force"
        await _ticks([b], 1)
        await asyncio.sleep(0.05)
    assert not b.link.leading  # a's lease has not run out yet


async def test_a_blip_shorter_than_the_lease_keeps_the_leaders_estimate(server):
    """A Redis timeout in one tick is not a new leader: nobody else could take the key meanwhile, so what the
    estimate learned (its limit, its baseline) is kept, not started again from the last limit alone."""
    a = Member(server.url, "a", in_flight=2)
    await _ticks([a], 2)
    estimate = a.link.estimate
    assert estimate is not None
    estimate.limiter.limit = 13
    real = a.redis.pipeline
    blips = []

    def once_failing(*args, **kwargs):
        pipe = real(*args, **kwargs)
        if not blips:
            blips.append(time.monotonic())

            async def execute(*_args, **_kwargs):
                raise RedisConnectionError("timeout reading from socket")

            pipe.execute = execute
        return pipe

    a.redis.pipeline = once_failing  # type: ignore[method-assign]
    stop = asyncio.Event()
    running = asyncio.create_task(a.link.run(stop))
    await asyncio.sleep(0.5)  # the blip, then several ticks
    stop.set()
    await running
    assert blips
    assert a.link.estimate is estimate
    assert estimate.limiter.limit == 13


async def test_an_event_another_version_wrote_is_skipped_and_the_ones_after_it_are_read(server):
    """During a rollout executors of two versions share the stream: an event this one cannot read (an outcome
    it does not know) was read again at every tick, and the leader heard nothing after it."""
    a, b = Member(server.url, "a", in_flight=2), Member(server.url, "b", in_flight=2)
    await _ticks([a, b])
    estimate = a.link.estimate
    assert estimate is not None
    before = estimate.limiter.limit
    unknown = {"x": "b", "k": "outcome", "t": time.time(), "o": "some-later-outcome", "l": 1.0, "n": 1}
    await b.redis.xadd(b.link._events, {**unknown, "f": 0, "m": 0})
    await _answer_rounds([a, b])
    assert estimate.limiter.limit > before


def test_a_refusal_for_the_providers_budget_goes_out_as_an_error_that_earlier_versions_read():
    limiter = SharedLimiter("a", AdaptiveLimiter(minimum=1, maximum=8, initial=2), wall_offset_s=0.0)
    limiter.record(Outcome.RATE_LIMITED, in_flight=1, now=1.0)
    assert _encode(limiter.outbox[-1])["o"] == "error"
