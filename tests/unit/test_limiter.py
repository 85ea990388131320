"""The adaptive limiter on a fake clock: against a modelled provider (closed loop) and call by call."""

import heapq
import itertools
import random
from collections import deque
from dataclasses import dataclass, field

import pytest

from mge.concurrency.limiter import PROBE_AFTER_S, PROBE_FACTOR, AdaptiveLimiter, Outcome


@dataclass
class Provider:
    """`capacity` concurrent calls at 1-1.05 s; past it latency grows with the calls in flight; 429 past
    `reject_factor` x capacity.

    The limiter keeps its limit in flight and hears of every call when it finishes (with the calls in
    flight when it started), on a fake clock.
    """

    capacity: int
    reject_factor: float = 1.5
    now: float = 0.0
    rejected: int = 0
    slowest_s: float = 0.0
    answered: list[float] = field(default_factory=list)  # latencies of the calls answered, in order
    _random: random.Random = field(default_factory=lambda: random.Random(1))

    def run(self, limiter: AdaptiveLimiter, seconds: float) -> None:
        in_flight: list[tuple[float, int, bool, float, int]] = []  # (finish, seq, rejected, latency, started)
        seq, until = 0, self.now + seconds
        while self.now < until:
            while len(in_flight) < limiter.limit:
                if len(in_flight) >= self.reject_factor * self.capacity:
                    latency, rejected = 0.05, True
                else:
                    load = max(1.0, (len(in_flight) + 1) / self.capacity)
                    latency, rejected = (1.0 + 0.05 * self._random.random()) * load, False
                seq += 1
                heapq.heappush(in_flight, (self.now + latency, seq, rejected, latency, len(in_flight) + 1))
            self.now, _, rejected, latency, started_with = heapq.heappop(in_flight)
            self.rejected += rejected
            if not rejected:
                self.slowest_s = max(self.slowest_s, latency)
                self.answered.append(latency)
            outcome = Outcome.OVERLOADED if rejected else Outcome.OK
            limiter.record(
                outcome,
                in_flight=len(in_flight) + 1,
                now=self.now,
                latency_s=latency,
                tokens=100,
                started_with=started_with,
            )


def _reasons(limiter: AdaptiveLimiter) -> list[str]:
    return [adjustment.reason for adjustment in limiter.adjustments]


def test_slow_start_doubles_each_round_trip_while_small_then_grows_by_half():
    limiter = AdaptiveLimiter(minimum=1, maximum=64, initial=2)

    Provider(capacity=1000).run(limiter, 14.0)

    steps = list(limiter.adjustments)[:6]
    assert [a.new for a in steps] == [4, 8, 12, 18, 27, 41]
    # One step per round trip (1-1.05 s): the calls that answer are those that started one round trip ago.
    assert all(later.at - earlier.at < 1.1 for earlier, later in itertools.pairwise(steps))
    assert set(_reasons(limiter)) == {"slow start"}
    assert limiter.limit == 64
    assert not limiter.slow_start  # at the maximum: nothing left to start into


def test_slow_start_ends_just_past_capacity_without_a_429():
    limiter = AdaptiveLimiter(minimum=1, maximum=64, initial=2)
    provider = Provider(capacity=16)

    provider.run(limiter, 30.0)

    # 16 in flight answer uncongested, so the limit goes to 1.5 x 16 = 24, the most the provider accepts; the
    # first calls that started with 17, 18 and 19 in flight queue and bring it to their capacity, 18, which
    # the next measured limit holds at 1.05 x 18 / 1.125 = 17.
    assert [a.new for a in limiter.adjustments][-3:] == [24, 18, 17]
    assert limiter.limit == 17
    assert not limiter.slow_start
    assert provider.rejected == 0
    above = [(a.at, b.at) for a, b in itertools.pairwise(limiter.adjustments) if a.new > 20]
    assert sum(until - since for since, until in above) < 0.5  # less than half a round trip past 1.25 C
    assert provider.slowest_s < 1.5 * 1.05


def test_a_limit_is_judged_only_on_calls_that_started_under_it():
    limiter = AdaptiveLimiter(minimum=1, maximum=64, initial=10)
    limiter.slow_start = False
    Provider(capacity=1000).run(limiter, 20.0)  # forms the baseline, grows a few steps
    raised_at, limit = limiter.adjustments[-1].at, limiter.limit

    for i in range(3 * limit):  # slow, but started before the last change: no verdict on the new limit
        now = raised_at + 0.01 * (i + 1)
        limiter.record(Outcome.OK, in_flight=limit, now=now, latency_s=now - raised_at + 0.5, tokens=100)

    assert limiter.limit == limit


def test_after_capacity_halves_the_limit_follows_within_a_few_round_trips_and_climbs_back_fast():
    limiter = AdaptiveLimiter(minimum=1, maximum=200, initial=2)
    provider = Provider(capacity=40)
    provider.run(limiter, 60.0)
    before = limiter.limit
    assert 40 <= before <= 44

    provider.capacity = 20
    provider.run(limiter, 8.0)  # about 5 round trips at the congested latency

    assert 20 <= limiter.limit <= 22
    assert any(reason.startswith("latency per token rose") for reason in _reasons(limiter))

    provider.capacity = 40
    provider.run(limiter, 6.0)

    assert 40 <= limiter.limit <= 44
    assert "latency flat again: back toward the limit before the cuts" in _reasons(limiter)


def test_when_capacity_halves_the_latency_is_judged_while_429s_still_come():
    """Capacity 16 -> 8. Each cut for 429s (x0.9, once a round trip) was a new limit whose own calls answer a
    round trip later, so no latency was judged while they came: 17 -> 15 -> 13 -> 11 -> 9 over 5 s, and 12% of
    the next 30 s of answers were past 1.2x."""
    limiter = AdaptiveLimiter(minimum=1, maximum=200, initial=2)
    limiter.adjustments = deque(maxlen=1000)
    provider = Provider(capacity=16)
    provider.run(limiter, 60.0)
    halved_at, answered_before = provider.now, len(provider.answered)

    provider.capacity = 8
    provider.run(limiter, 30.0)

    settled_at = next(a.at for a in limiter.adjustments if a.at > halved_at and a.new <= 10)
    assert settled_at - halved_at < 2.0  # about a round trip and a half at the congested latency
    assert any(reason.endswith("while overloaded") for reason in _reasons(limiter))
    answered = provider.answered[answered_before:]
    assert sum(latency > 1.2 * 1.05 for latency in answered) / len(answered) < 0.03
    assert 8 <= limiter.limit <= 9


def test_a_limit_held_since_slow_start_is_remembered_when_capacity_halves():
    """Slow start ended on queueing and the limit was held there, never grown: the cuts when capacity halved
    were taken for slow start's own overshoot, so nothing was remembered and capacity coming back was found
    one call per measured limit (11 of 16 after 10 s)."""
    limiter = AdaptiveLimiter(minimum=1, maximum=200, initial=2)
    provider = Provider(capacity=16)
    provider.run(limiter, 60.0)
    provider.capacity = 8
    provider.run(limiter, 60.0)
    provider.capacity = 16
    provider.run(limiter, 10.0)

    assert limiter.limit >= 16
    assert "latency flat again: back toward the limit before the cuts" in _reasons(limiter)


def _halved_with_blips(limiter: AdaptiveLimiter, blips: int) -> tuple[Provider, float]:
    """Capacity 16, then 8 with `blips` moments of room (1 s at 16, every 4 s): the room a provider held at
    its capacity shows now and then, which looks like capacity coming back until tried."""
    provider = Provider(capacity=16)
    provider.run(limiter, 60.0)
    provider.capacity = 8
    provider.run(limiter, 20.0)
    blips_from = provider.now
    for _ in range(blips):
        provider.capacity = 16
        provider.run(limiter, 1.0)
        provider.capacity = 8
        provider.run(limiter, 3.0)
    return provider, blips_from


def test_a_climb_back_cut_by_a_provider_still_slow_keeps_the_limit_to_climb_back_to():
    """The failed climb used to end as slow start's overshoot does, forgetting the limit before the cuts: when
    capacity really came back, growth was one call per measured limit (13 of 16 after 6 s)."""
    limiter = AdaptiveLimiter(minimum=1, maximum=200, initial=2)
    provider, _ = _halved_with_blips(limiter, 1)
    provider.run(limiter, 20.0)
    climbs = _reasons(limiter).count("latency flat again: back toward the limit before the cuts")
    assert climbs >= 1  # the blip was tried, and failed
    assert limiter.limit <= 10

    provider.capacity = 16
    provider.run(limiter, 6.0)
    assert limiter.limit >= 16


def test_climbs_back_into_a_provider_that_stays_slow_wait_longer_after_each_failure():
    """Each failed climb costs a round trip of calls past capacity; tried at every moment of room, a provider
    that stays slower was climbed into 19 times in 120 s."""
    limiter = AdaptiveLimiter(minimum=1, maximum=200, initial=2)
    limiter.adjustments = deque(maxlen=1000)
    _, blips_from = _halved_with_blips(limiter, 30)
    steps = [
        a.at for a in limiter.adjustments if a.at > blips_from and a.reason.startswith("latency flat again")
    ]
    # A climb is one or more steps within a round trip.
    starts = [at for previous, at in itertools.pairwise([float("-inf"), *steps]) if at - previous > 1.5]
    assert 3 <= len(starts) <= 9, starts
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 4.0, gaps  # CLIMB_BACKOFF_ROUND_TRIPS round trips of about 1.1 s
    assert max(gaps) >= 15.0, gaps  # longer after failures in a row


def test_past_the_limit_before_the_last_cuts_growth_is_one_per_measured_limit():
    limiter = AdaptiveLimiter(minimum=1, maximum=64, initial=10)
    limiter.slow_start = False

    Provider(capacity=1000).run(limiter, 10.0)

    assert len(limiter.adjustments) >= 3
    assert all(a.new == a.old + 1 and a.reason == "additive increase" for a in limiter.adjustments)


def _answers(
    limiter: AdaptiveLimiter,
    now: float,
    count: int,
    *,
    in_flight: int,
    latency_s: float,
    started_with: int | None = None,
) -> float:
    """`count` answers of 5 tokens, 0.1 s apart, from `now`; the time of the last."""
    for _ in range(count):
        now += 0.1
        limiter.record(
            Outcome.OK, in_flight=in_flight, now=now, latency_s=latency_s, tokens=5, started_with=started_with
        )
    return now


def test_queueing_while_the_limit_is_not_used_brings_it_to_the_measured_capacity():
    limiter = AdaptiveLimiter(minimum=1, maximum=64, initial=20)
    limiter.slow_start = False
    # Uncongested at 9 in flight: the baseline forms, the limit is not used enough to grow.
    now = _answers(limiter, 0.0, 40, in_flight=9, latency_s=0.05)
    assert limiter.limit == 20

    # 9 in flight now queue at 1.1x: the provider serves 9 / 1.1 without queueing.
    _answers(limiter, now, 10, in_flight=9, latency_s=0.055)

    assert limiter.limit == 9  # ceil(1.05 x 9 / 1.1)
    assert limiter.adjustments[-1].reason == "queueing began (1.10x): held at capacity"


def test_the_capacity_is_measured_with_the_calls_in_flight_when_each_call_started():
    """A call's latency answers to the calls in flight when it started. Counted when it ends, they are fewer
    whenever the calls are draining (after a cut, or as work runs out): 12 calls that queued at 1.1x, each
    ending with 6 in flight, measured a capacity of 6 and cut the limit to it."""
    limiter = AdaptiveLimiter(minimum=1, maximum=64, initial=20)
    limiter.slow_start = False
    now = _answers(limiter, 0.0, 40, in_flight=9, latency_s=0.05)  # the baseline; too few to grow the limit

    _answers(limiter, now, 10, in_flight=6, latency_s=0.055, started_with=12)

    assert limiter.limit == 12  # ceil(1.05 x 12 / 1.1)


def test_a_limit_its_draining_calls_measured_slow_is_held_when_they_measured_it_right():
    """Calls that started with 10 in flight, above a limit of 9 (it was cut while they ran), answered at 1.22x:
    they measure a capacity of 9 (10 / 1.22 x 1.05, rounded up). The limit was cut to 8 anyway, a call under
    capacity, where the provider showed room and the limit climbed back into it."""
    limiter = AdaptiveLimiter(minimum=1, maximum=64, initial=9)
    limiter.slow_start = False
    now = _answers(limiter, 0.0, 40, in_flight=7, latency_s=0.05)  # the baseline; too few to grow the limit
    changes = len(limiter.adjustments)

    _answers(limiter, now, 5, in_flight=8, latency_s=0.061, started_with=10)

    assert limiter.limit == 9
    assert len(limiter.adjustments) == changes


def test_first_overload_ends_slow_start_at_the_last_good_size_and_later_ones_cut_ten_percent():
    limiter = AdaptiveLimiter(minimum=1, maximum=64, initial=20)

    limiter.record(Outcome.OVERLOADED, in_flight=20, now=10.0)
    for i in range(7):  # half the new limit of calls that started under it, no latency signal: +1
        limiter.record(Outcome.OK, in_flight=13, now=11.0 + i * 0.1)
    limiter.record(Outcome.OVERLOADED, in_flight=14, now=20.0)

    assert limiter.limit == 12  # 20 -> 13 (20 / 1.5: slow start ends), +1 additively (not x1.5) -> 14, x0.9
    assert _reasons(limiter) == [
        "overloaded (429/5xx/timeout); slow start ends",
        "additive increase",
        "overloaded (429/5xx/timeout)",
    ]


def test_a_burst_of_429s_counts_as_one_decrease():
    limiter = AdaptiveLimiter(minimum=1, maximum=64, initial=30)
    limiter.slow_start = False

    for i in range(10):
        limiter.record(Outcome.OVERLOADED, in_flight=30, now=5.0 + i * 0.1)

    assert limiter.limit == 27


def test_the_limit_only_grows_while_it_is_used():
    limiter = AdaptiveLimiter(minimum=1, maximum=64, initial=8)

    for i in range(100):
        limiter.record(Outcome.OK, in_flight=2, now=i * 0.1, latency_s=0.05, tokens=100)

    assert limiter.limit == 8


def test_a_lucky_fast_first_answer_neither_ends_slow_start_nor_cuts():
    limiter = AdaptiveLimiter(minimum=1, maximum=64, initial=2)
    limiter.record(Outcome.OK, in_flight=2, now=0.5, latency_s=0.5, tokens=100)
    now = 0.5
    for _ in range(60):  # the rest take twice as long per token: 1.33x the first provisional reference
        now += 0.5
        limiter.record(Outcome.OK, in_flight=limiter.limit, now=now, latency_s=0.5, tokens=50)

    assert limiter.baseline_s_per_token is not None
    assert all(a.new > a.old for a in limiter.adjustments)
    assert limiter.limit == 64


def test_a_provider_congested_from_the_start_does_not_let_slow_start_run_away():
    limiter = AdaptiveLimiter(minimum=1, maximum=64, initial=2)
    # Congested from the second step on, long before the baseline has its calls, and never a 429.
    provider = Provider(capacity=3, reject_factor=100)

    provider.run(limiter, 60.0)

    assert max(a.new for a in limiter.adjustments) <= 8
    assert limiter.limit <= 5
    assert not limiter.slow_start


def test_latency_is_compared_per_output_token():
    limiter = AdaptiveLimiter(minimum=1, maximum=64, initial=10)
    limiter.slow_start = False
    now = 0.0
    for _ in range(40):
        now += 0.1
        limiter.record(Outcome.OK, in_flight=limiter.limit, now=now, latency_s=0.05, tokens=100)
    before = limiter.limit

    for _ in range(50):  # twice as long answers, twice the latency: the same speed
        now += 0.1
        limiter.record(Outcome.OK, in_flight=limiter.limit, now=now, latency_s=0.1, tokens=200)

    assert limiter.limit > before
    assert all(a.new > a.old for a in limiter.adjustments)


def test_a_long_hold_drains_briefly_to_re_measure_the_baseline_then_restores():
    limiter = AdaptiveLimiter(minimum=1, maximum=64, initial=2)
    provider = Provider(capacity=16)
    provider.run(limiter, 20.0)
    held = limiter.limit
    assert held == 17  # just past capacity: every call is slightly queued

    provider.run(limiter, 2 * PROBE_AFTER_S)

    drains = [a for a in limiter.adjustments if a.reason == "draining briefly to re-measure the baseline"]
    assert drains
    assert all(a.new == int(a.old * PROBE_FACTOR) for a in drains)
    assert "baseline re-measured; limit restored" in _reasons(limiter)
    assert 16 <= limiter.limit <= 18
    assert provider.rejected == 0


def test_a_baseline_that_crept_up_through_a_halved_phase_is_measured_again():
    """Held at 9 calls against a capacity of 8 (1.125x) for minutes, the baseline's window fills with queued
    answers: it crept up 8% (1.02 -> 1.10 s a call), the congestion read as none, so no probe came, and when
    capacity came back the limit held at 19 of 16 (1.19x every call). A probe runs every third wall-clock
    minute whatever the congestion, and its answers are the baseline."""
    limiter = AdaptiveLimiter(minimum=1, maximum=200, initial=2)
    provider = Provider(capacity=16)
    provider.run(limiter, 60.0)
    uncongested = limiter.baseline_s_per_token
    assert uncongested is not None
    provider.capacity = 8
    provider.run(limiter, 200.0)
    provider.capacity = 16
    provider.run(limiter, 160.0)

    assert limiter.baseline_s_per_token < 1.04 * uncongested
    assert 16 <= limiter.limit <= 18


def test_bounds_hold():
    limiter = AdaptiveLimiter(minimum=2, maximum=4, initial=2)
    Provider(capacity=1000).run(limiter, 10.0)
    assert limiter.limit == 4
    for i in range(50):
        limiter.record(Outcome.OVERLOADED, in_flight=4, now=100.0 + i * 10.0)
    assert limiter.limit == 2


def test_invalid_bounds_are_rejected_naming_them():
    with pytest.raises(ValueError, match=r"minimum \(5\) <= initial \(2\)"):
        AdaptiveLimiter(minimum=5, maximum=10, initial=2)


def test_slow_first_calls_do_not_hide_the_first_queueing():
    limiter = AdaptiveLimiter(minimum=1, maximum=64, initial=2)
    for i in range(3):  # the first calls also open connections: three times as slow
        limiter.record(Outcome.OK, in_flight=2, now=3.0 + i * 0.1, latency_s=3.0, tokens=100)
    provider = Provider(capacity=16, now=3.5)

    provider.run(limiter, 30.0)

    assert limiter.limit == 17
    assert provider.rejected == 0


def test_in_slow_start_a_429_goes_back_to_the_most_calls_answered_uncongested():
    limiter = AdaptiveLimiter(minimum=1, maximum=64, initial=2)
    for started_with in range(1, 11):
        limiter.record(
            Outcome.OK, in_flight=10, now=1.0, latency_s=1.0, tokens=100, started_with=started_with
        )
    assert limiter.limit == 15  # 1.5 x 10

    limiter.record(Outcome.OVERLOADED, in_flight=15, now=1.5, started_with=15)

    assert limiter.limit == 10
    assert not limiter.slow_start


def test_a_queued_answer_outdone_by_an_uncongested_one_with_more_in_flight_is_noise():
    limiter = AdaptiveLimiter(minimum=1, maximum=64, initial=2)
    now = 0.0
    for started_with in range(1, 9):  # the reference forms; the limit doubles up to 8, then 1.5 x 8
        now += 0.01
        limiter.record(Outcome.OK, in_flight=8, now=now, latency_s=1.0, tokens=100, started_with=started_with)
    assert limiter.limit == 12

    for started_with in (
        9,
        10,
        11,
        12,
    ):  # two slow ones, then faster ones with more in flight, then slow again
        now += 0.01
        latency = 1.2 if started_with in (9, 10) else 1.0
        limiter.record(
            Outcome.OK, in_flight=12, now=now, latency_s=latency, tokens=100, started_with=started_with
        )
    now += 0.01
    limiter.record(Outcome.OK, in_flight=18, now=now, latency_s=1.2, tokens=100, started_with=13)

    assert limiter.slow_start
    assert limiter.limit == 18  # 1.5 x 12; the slow answers at 9 and 10 do not count against 13
    assert all(a.new > a.old for a in limiter.adjustments)


def test_a_fleet_probes_in_the_same_wall_clock_minute_whatever_each_pods_monotonic_clock():
    """Two pods whose monotonic clocks differ by 1,000 s drain together: their wall clocks agree."""
    starts = []
    for monotonic_at_wall_zero in (0.0, 1000.0):
        limiter = AdaptiveLimiter(
            minimum=1, maximum=64, initial=8, fleet=2, wall_offset_s=-monotonic_at_wall_zero
        )
        limiter.slow_start = False
        limiter._last_uncongested = monotonic_at_wall_zero
        drained = None
        for step in range(1, 400):
            now = monotonic_at_wall_zero + step * 0.5
            limiter._probe(now)
            if drained is None and limiter.probing:
                drained = now - monotonic_at_wall_zero
        starts.append(drained)
    assert (
        starts[0] == starts[1] == 120.0
    )  # the first wall-clock minute boundary after the baseline went stale


@dataclass
class SharedProvider:
    """One provider, several executors' limiters: latency grows with the calls in flight of all of them
    (1-1.05 s up to `capacity`), 429 past 1.5 x capacity. Records the fleet's summed limit over time."""

    capacity: int
    now: float = 0.0
    fleet_limits: list[tuple[float, int]] = field(default_factory=list)
    _random: random.Random = field(default_factory=lambda: random.Random(7))

    def run(self, limiters: list[AdaptiveLimiter], seconds: float) -> None:
        # (finish, seq, executor, rejected, latency, started_with)
        calls: list[tuple[float, int, int, bool, float, int]] = []
        in_flight = [0] * len(limiters)
        seq, until = itertools.count(), self.now + seconds
        while self.now < until:
            for number, limiter in enumerate(limiters):
                while in_flight[number] < limiter.limit:
                    total = sum(in_flight)
                    if total >= 1.5 * self.capacity:
                        latency, rejected = 0.05, True
                    else:
                        load = max(1.0, (total + 1) / self.capacity)
                        latency, rejected = (1.0 + 0.05 * self._random.random()) * load, False
                    in_flight[number] += 1
                    heapq.heappush(
                        calls, (self.now + latency, next(seq), number, rejected, latency, in_flight[number])
                    )
            self.now, _, number, rejected, latency, started_with = heapq.heappop(calls)
            limiters[number].record(
                Outcome.OVERLOADED if rejected else Outcome.OK,
                in_flight=in_flight[number],
                now=self.now,
                latency_s=latency,
                tokens=100,
                started_with=started_with,
            )
            in_flight[number] -= 1
            self.fleet_limits.append((self.now, sum(limiter.limit for limiter in limiters)))

    def time_above(self, bound: float, since: float) -> float:
        """The share of the time since `since` that the fleet's limits summed to more than `bound`."""
        samples = [(t, total) for t, total in self.fleet_limits if t >= since]
        spans = [(b[0] - a[0], a[1]) for a, b in itertools.pairwise(samples)]
        return sum(span for span, total in spans if total > bound) / sum(span for span, _ in spans)


def _fleet(executors: int, capacity: int) -> list[AdaptiveLimiter]:
    return [
        AdaptiveLimiter(minimum=1, maximum=4 * capacity, initial=2, fleet=executors) for _ in range(executors)
    ]


def test_a_fleet_whose_share_is_one_call_each_stays_near_capacity_after_it_halves():
    """Eight executors, capacity 16 then 8: one call each. A step up is one call, an eighth of capacity; each
    executor's measured share rounds to 2 (2 x 0.93), and each climbed back toward its limit before the halving
    whenever another's cut made room: the fleet held more than one call past capacity most of the time (86%
    of it here, 52-90% with other seeds; now 0-27%)."""
    provider = SharedProvider(capacity=16)
    limiters = _fleet(8, 16)
    provider.run(limiters, 120)
    provider.capacity = 8
    provider.run(limiters, 120)
    assert provider.time_above(8 + 1, since=150) < 0.3


def test_a_fleet_probe_measures_the_baseline_again_from_the_calls_started_while_draining():
    """An executor of a fleet that took its baseline while the others kept the provider busy (1.2 s a call)
    learns the real speed (1 s) from a probe, though it answers only a few calls while draining: its slow
    average alone would have moved a few percent."""
    limiter = AdaptiveLimiter(minimum=1, maximum=64, initial=2, fleet=2)
    now = 0.0
    for _ in range(80):
        now += 0.6
        limiter.record(Outcome.OK, in_flight=2, now=now, latency_s=1.2, tokens=100, started_with=2)
    assert limiter.baseline_s_per_token == pytest.approx(0.012)
    # Every third wall-clock minute the fleet drains, whether or not this executor saw congestion.
    for _ in range(int(3 * PROBE_AFTER_S / 0.6) + 1):
        now += 0.6
        limiter.record(Outcome.OK, in_flight=2, now=now, latency_s=1.2, tokens=100, started_with=2)
        if limiter.probing:
            break
    assert limiter.probing, "no probe in three wall-clock minutes"
    probe_started = now
    while limiter.probing:
        now += 1.0
        limiter.record(Outcome.OK, in_flight=1, now=now, latency_s=1.0, tokens=100, started_with=1)
    assert now - probe_started <= 6 * 1.2
    assert limiter.baseline_s_per_token == pytest.approx(0.010)
    assert _reasons(limiter)[-2:] == [
        "draining briefly to re-measure the baseline",
        "baseline re-measured; limit restored",
    ]
