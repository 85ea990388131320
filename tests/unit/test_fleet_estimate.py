"""The fleet's one estimate: shares of its limit, the fleet's calls in flight, executors that leave."""

from mge.concurrency.fleet_estimate import (
    LIVE_FOR_S,
    EventKind,
    FleetEstimate,
    FleetEvent,
    SharedLimiter,
    split,
)
from mge.concurrency.limiter import AdaptiveLimiter, Outcome


def test_a_limit_is_split_equally_and_adds_up():
    assert split(10, {"a": 64, "b": 64}) == {"a": 5, "b": 5}
    assert split(11, {"b": 64, "a": 64}) == {"a": 6, "b": 5}
    assert sum(split(17, {"a": 64, "b": 64, "c": 64}).values()) == 17


def test_what_an_executor_cannot_hold_goes_to_the_others():
    assert split(20, {"small": 4, "big": 64}) == {"small": 4, "big": 16}
    assert split(20, {"a": 2, "b": 3, "c": 64}) == {"a": 2, "b": 3, "c": 15}
    assert split(200, {"a": 8, "b": 8}) == {"a": 8, "b": 8}


def test_every_executor_gets_a_call_even_past_the_limit():
    assert split(2, {"a": 64, "b": 64, "c": 64}) == {"a": 1, "b": 1, "c": 1}


def _event(executor: str, kind: EventKind, at: float, **fields) -> FleetEvent:
    return FleetEvent(executor, kind, at, **fields)


def _counts_heard(estimate: FleetEstimate) -> list[tuple[int, int | None]]:
    """(in flight, started with) of every outcome the estimate's limiter hears from now on."""
    heard: list[tuple[int, int | None]] = []
    record = estimate.limiter.record

    def spy(outcome, *, in_flight, now, latency_s=0.0, tokens=0, started_with=None):
        heard.append((in_flight, started_with))
        record(
            outcome,
            in_flight=in_flight,
            now=now,
            latency_s=latency_s,
            tokens=tokens,
            started_with=started_with,
        )

    estimate.limiter.record = spy  # type: ignore[method-assign]
    return heard


def test_an_answer_is_judged_against_the_fleets_calls_in_flight_when_it_started():
    """Two executors with two calls each: the limiter hears 4 in flight at the start, not one executor's 2."""
    estimate = FleetEstimate(continued_from=4)
    for executor in ("a", "b"):
        for _ in range(2):
            estimate.apply(_event(executor, EventKind.START, 0.0), 0.0)
    assert estimate.in_flight == 4
    seen = _counts_heard(estimate)
    estimate.apply(_event("a", EventKind.OUTCOME, 1.0, latency_s=1.0, tokens=100), 1.0)
    estimate.apply(_event("a", EventKind.FINISH, 1.0), 1.0)
    assert seen == [(4, 4)]
    assert estimate.in_flight == 3


def test_slow_start_grows_on_every_executors_answers():
    estimate = FleetEstimate(continued_from=4)
    now = 0.0
    for round_trip in range(4):
        limit = estimate.limiter.limit
        for n in range(limit):
            estimate.apply(_event(f"e{n % 2}", EventKind.START, now), now)
        now += 1.0
        for n in range(limit):
            executor = f"e{n % 2}"
            estimate.apply(_event(executor, EventKind.OUTCOME, now, latency_s=1.0, tokens=100), now)
            estimate.apply(_event(executor, EventKind.FINISH, now), now)
        assert estimate.limiter.limit > limit, f"round trip {round_trip}: no growth from {limit}"


def test_a_status_recounts_an_executors_calls_and_an_executor_that_left_loses_its_share():
    estimate = FleetEstimate(continued_from=8)
    estimate.apply(_event("a", EventKind.STATUS, 0.0, in_flight=3, most=32), 0.0)
    estimate.apply(_event("b", EventKind.STATUS, 0.0, in_flight=3, most=32), 0.0)
    assert estimate.in_flight == 6
    assert estimate.shares(0.0) == {"a": 4, "b": 4}
    estimate.apply(_event("a", EventKind.STATUS, LIVE_FOR_S, in_flight=3, most=32), LIVE_FOR_S)
    assert estimate.shares(LIVE_FOR_S + 1) == {"a": 8}
    assert estimate.in_flight == 3


def test_an_executor_calls_up_to_its_share_and_alone_without_one():
    local = AdaptiveLimiter(minimum=1, maximum=16, initial=2)
    shared = SharedLimiter("a", local, wall_offset_s=0.0)
    assert shared.limit == 2
    shared.share = 9
    assert shared.limit == 9
    shared.share = 40
    assert shared.limit == 16  # never past what the executor was configured for
    shared.share = None
    assert shared.limit == 2


def test_an_executors_calls_reach_its_own_limiter_and_the_outbox_with_wall_clock_times():
    local = AdaptiveLimiter(minimum=1, maximum=16, initial=4)
    shared = SharedLimiter("a", local, wall_offset_s=1000.0)
    shared.started(5.0)
    shared.record(Outcome.OK, in_flight=1, now=6.0, latency_s=1.0, tokens=50, started_with=1)
    shared.finished(6.0)
    shared.status(6.5, in_flight=0)
    shared.record(Outcome.OVERLOADED, in_flight=1, now=7.0)
    kinds = [(e.kind, e.at) for e in shared.outbox]
    assert kinds == [
        (EventKind.START, 1005.0),
        (EventKind.OUTCOME, 1006.0),
        (EventKind.FINISH, 1006.0),
        (EventKind.STATUS, 1006.5),
        (EventKind.OUTCOME, 1007.0),
    ]
    assert shared.outbox[1].latency_s == 1.0
    assert shared.outbox[3].most == 16
    assert shared.outbox[4].outcome is Outcome.OVERLOADED
    assert local.limit < 4  # its own limiter heard the 429: the fallback stays current


def test_the_changes_reported_are_those_of_the_limit_in_force():
    local = AdaptiveLimiter(minimum=1, maximum=16, initial=4)
    shared = SharedLimiter("a", local, wall_offset_s=0.0)
    shared.set_share(9, 1.0, fleet_limit=18)
    shared.record(Outcome.OVERLOADED, in_flight=4, now=2.0)  # its own limiter cuts; the share stays in force
    shared.set_share(None, 3.0)
    reasons = [(a.old, a.new, a.reason) for a in shared.adjustments]
    assert reasons == [
        (4, 9, "share of the fleet's estimate (18 calls)"),
        (9, local.limit, "fleet's estimate out of reach: this executor's own limit"),
    ]
    shared.record(Outcome.OVERLOADED, in_flight=4, now=10.0)
    assert shared.adjustments[-1] is local.adjustments[-1]  # alone, its own limiter's changes are the ones


def test_events_that_arrive_out_of_order_are_counted_at_their_own_times():
    """Each executor sends its events every tick, so b's start at 0.02 can arrive after a's at 0.04: b's answer
    is judged against the one call in flight when it started (its own), a's against two."""
    estimate = FleetEstimate(continued_from=4)
    seen = _counts_heard(estimate)
    estimate.apply(_event("a", EventKind.START, 0.04), 0.04)
    estimate.apply(_event("b", EventKind.START, 0.02), 0.02)
    estimate.apply(_event("c", EventKind.START, 0.50), 0.50)
    estimate.apply(_event("b", EventKind.OUTCOME, 1.02, latency_s=1.0, tokens=100), 1.02)
    estimate.apply(_event("a", EventKind.OUTCOME, 1.04, latency_s=1.0, tokens=100), 1.04)
    assert [started_with for _, started_with in seen] == [1, 2]
    assert estimate.in_flight == 3


def test_the_fleets_first_calls_that_started_with_the_fewest_in_flight_give_its_uncongested_latency():
    """A new fleet of 8 executors starts at 16 calls; at a capacity of 8, the calls that started with more than
    8 in flight queue (1.5 s). Their median would be taken for the uncongested latency (and congestion for
    normal), and a low percentile of all of them takes the noise of the fast ones (0.9-1.1 s) for it."""
    estimate = FleetEstimate()
    for n in range(8):
        estimate.apply(_event(f"e{n}", EventKind.STATUS, 0.0, most=64), 0.0)
    assert estimate.limiter.limit == 16
    for burst in range(2):
        started = burst * 2.0
        for n in range(16):
            estimate.apply(_event(f"e{n % 8}", EventKind.START, started + n * 0.001), started + n * 0.001)
        for n in range(16):
            latency = (0.9, 0.95, 1.05, 1.1)[n % 4] if n < 8 else 1.5
            at = started + n * 0.001 + latency
            estimate.apply(_event(f"e{n % 8}", EventKind.OUTCOME, at, latency_s=latency, tokens=100), at)
            estimate.apply(_event(f"e{n % 8}", EventKind.FINISH, at), at)
    assert estimate.limiter.baseline_s_per_token is not None
    assert abs(estimate.limiter.baseline_s_per_token - 0.01) < 0.0002


def test_a_new_fleet_starts_at_two_calls_per_executor_as_its_executors_join_and_no_more_after_its_slow_start():
    estimate = FleetEstimate()
    limits = []
    for n, executor in enumerate(("a", "b", "c")):
        estimate.apply(_event(executor, EventKind.STATUS, n * 0.5, most=64), n * 0.5)
        limits.append(estimate.limiter.limit)
    assert limits == [2, 4, 6]
    estimate.apply(_event("a", EventKind.OUTCOME, 2.0, outcome=Outcome.OVERLOADED), 2.0)
    assert not estimate.limiter.slow_start
    cut = estimate.limiter.limit
    estimate.apply(_event("d", EventKind.STATUS, 3.0, most=64), 3.0)
    assert estimate.limiter.limit == cut  # the provider's capacity is what it was


def test_a_leader_that_takes_over_continues_from_the_last_limit():
    estimate = FleetEstimate(continued_from=13)
    for executor in ("a", "b", "c"):
        estimate.apply(_event(executor, EventKind.STATUS, 0.0, most=64), 0.0)
    assert estimate.limiter.limit == 13
