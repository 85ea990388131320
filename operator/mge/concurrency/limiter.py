"""Per-executor limit on in-flight LLM calls, adapted on measured latency and overload (AIMD with slow start).

Pure: the caller passes each outcome and the time; nothing here sleeps or reads a clock.
"""

import bisect
import math
import statistics
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, Protocol

DECREASE_FACTOR: Final = 0.9
# Latency per output token over the baseline, measured for each limit on the calls that started under it.
# Past a provider's capacity more calls in flight add only latency, not throughput, so the limit stops
# growing as soon as queueing shows (HOLD) and is cut when it is clearly too high (SLOW).
HOLD_FACTOR: Final = 1.05
SLOW_FACTOR: Final = 1.2
# Below this the provider clearly has room (not just a step): the limit may climb back fast to where it was
# before its last cuts. Just under HOLD_FACTOR it grows one step at a time.
ROOM_FACTOR: Final = 1 + (HOLD_FACTOR - 1) / 2
# A limit is judged on this share of its own calls, counting only calls that started after it was set:
# a call that started under the old limit says nothing about the new one (judging it anyway is what made
# the limit overshoot by the feedback delay: a step per round trip seen one round trip late).
LEVEL_SHARE: Final = 0.5
LEVEL_MIN_CALLS: Final = 2
# Nor do the calls that a raised limit lets in at once: they start while the provider still carries the old
# load and come back fast, so a limit judged on them looks uncongested (enough for slow start to step from
# 1.1x to 1.7x capacity). Calls that started within this share of a round trip after the change are skipped.
BURST_SHARE: Final = 0.1
# Congestion is acted on sooner than room: this many calls clearly too slow are enough for a cut (and, in
# slow start, this many queued calls that started with more in flight than any uncongested one).
CUT_AFTER_CALLS: Final = 3
# Slow start grows on every answer, TCP-style, not once per measured limit (two round trips each, since a
# limit is judged on calls that started after it): the limit may go to twice the most calls in flight that
# were answered uncongested while that is small, and to 1.5 times it beyond, so one round trip doubles it
# and the step that crosses the provider's capacity overshoots it by at most 1.5x (providers that queue up
# to some point refuse past it). "Uncongested" is strict here (at most ROOM_FACTOR): a call just past
# capacity is only a little slower, and taking it as room is what would overshoot.
SLOW_START_DOUBLING_UP_TO: Final = 8
SLOW_START_FACTOR: Final = 1.5
# The limit grows only while the executor keeps all of it in flight, give or take this many calls (TCP's
# rule for an application-limited sender, RFC 7661): a limit the executor cannot fill was never tested
# against the provider. Growing it anyway (from 90% use, in an executor still claiming its first atoms)
# can take slow start from 1.1x to 1.7x capacity, and lets the limit drift far past capacity, to be paid in
# 429s when work arrives.
USED_SLACK_CALLS: Final = 1
# The baseline is the lowest smoothed latency per token of this window: congestion only adds latency, so the
# minimum is the provider's uncongested speed; the window lets it rise when the provider really got slower.
BASELINE_WINDOW_S: Final = 120.0
# Calls the baseline's average spans (at least; more when the limit is higher).
BASELINE_CALLS: Final = 32
# Holding just past capacity, every call is slightly queued, so the window would slowly fill with congested
# samples and the baseline (and the limit) would creep up to the 429 point. After this long without an
# uncongested sample the limiter drains to PROBE_FACTOR of its limit for two round trips to measure again.
PROBE_AFTER_S: Final = BASELINE_WINDOW_S / 2
PROBE_FACTOR: Final = 0.75
PROBE_ROUND_TRIPS: Final = 2
# The probe measures the baseline directly, from the median of at least this many answers to calls started
# while draining (waiting up to PROBE_MAX_ROUND_TRIPS for them): fed to the slow average, two round trips moved
# it a third of the way at best (a fleet's executor, holding a call or two, a sample or two), so a baseline
# that had crept up never came down. And it runs every PROBE_EVERY-th wall-clock minute even without
# congestion: a baseline that crept up (held at 1.125x capacity through a halved phase: 1.07 -> 1.19 s for
# 1.05 s calls) reads the congestion as none, and a fleet's executor whose baseline was taken while the others
# kept the provider busy never sees any.
PROBE_SAMPLES: Final = 3
PROBE_MAX_ROUND_TRIPS: Final = 6
PROBE_EVERY: Final = 3
# Cut on overload at most once per round trip (a call's smoothed latency, within these bounds): one overload
# episode returns many failures at once.
MIN_COOLDOWN_S: Final = 0.05
MAX_COOLDOWN_S: Final = 2.0
# A climb back to the limit before the cuts that is cut again (the room it saw was the noise of a provider held
# at its lower capacity, which looks the same as room until tried) keeps that limit in memory but waits this
# many round trips before the next try, twice as long after each failure in a row, up to CLIMB_BACKOFF_MAX
# times: capacity that comes back is found within a few round trips, and a provider that stays slower is tried
# only now and then.
CLIMB_BACKOFF_ROUND_TRIPS: Final = 4
CLIMB_BACKOFF_MAX: Final = 4


class Outcome(StrEnum):
    OK = "ok"
    OVERLOADED = "overloaded"  # 429, 503, timeout
    # A 429 whose rate-limit headers say a budget (requests or tokens per minute) is spent: the call gate's pacing
    # answers it (docs/concurrency.md, "Rate-limit headers"); fewer calls in flight would not.
    RATE_LIMITED = "rate_limited"
    ERROR = "error"  # other failures say nothing about load


@dataclass
class Adjustment:
    at: float
    old: int
    new: int
    reason: str


class CallLimiter(Protocol):
    """What the executor's call gate needs: the current limit, the changes, and a way to report each call."""

    @property
    def limit(self) -> int: ...

    @property
    def adjustments(self) -> deque[Adjustment]: ...

    def record(
        self,
        outcome: Outcome,
        *,
        in_flight: int,
        now: float,
        latency_s: float = 0.0,
        tokens: int = 0,
        started_with: int | None = None,
    ) -> None: ...


def adjustment_log() -> deque[Adjustment]:
    return deque(maxlen=50)


@dataclass
class _Level:
    """The calls that started under the current limit: their latency ratio and how busy the limit was.

    `reference` is the latency per token they are compared with, fixed when the limit was set: a
    provisional one (the mean so far) must not absorb the very calls it judges.
    """

    since: float
    reference: float | None = None
    provisional: bool = True
    calls: int = 0
    ratios: list[float] = field(default_factory=list)
    in_flight: int = 0  # summed over its calls, counted when each ended (how busy the limit was kept)
    started: list[int] = field(default_factory=list)  # calls in flight when each started

    def add(self, ratio: float | None, in_flight: int, started_with: int) -> None:
        self.calls += 1
        self.in_flight += in_flight
        self.started.append(started_with)
        if ratio is not None:
            self.ratios.append(ratio)

    @property
    def ratio(self) -> float | None:
        return sum(self.ratios) / len(self.ratios) if self.ratios else None

    @property
    def mean_in_flight(self) -> float:
        return self.in_flight / self.calls if self.calls else 0.0


@dataclass
class AdaptiveLimiter:
    """Slow start, then +1 per measured limit; held where queueing begins, cut to the measured capacity.

    Slow start grows on each answer, to twice (1.5 times past 8) the most calls in flight that were answered
    uncongested, and ends on the first calls that queue with more in flight than that, at the capacity they
    measure. After slow start each limit is judged on the calls that started under it. Their latency per
    token over the baseline (`r`) and the calls in flight (`n`) give the provider's capacity by Little's law:
    past capacity the latency grows with the calls in flight, so `n / r` is what it serves without queueing.
    Below 1.05 the limit grows (by slow start back to where it was before the last cuts, when the provider
    clearly has room again); from 1.05 it is brought to 1.05 x `n / r` (just past capacity: full throughput
    at 1.05x the latency), and above 1.2 cut to it (at most by half); a 429/5xx/timeout cuts x0.9, after which
    the last answers judge the latency until a limit is judged again.
    The limit only grows while the executor keeps all of it in flight, so an executor short of work does
    not accumulate a limit it never tested.
    """

    minimum: int = 1
    maximum: int = 64
    initial: int = 2
    # Executors calling the same endpoint (this one included), as the fleet reports it. The provider's
    # latency answers to all of them: each grows by 1/fleet per measured limit so the fleet grows by one.
    fleet: int = 1
    # Wall clock minus the `now` the caller passes (a monotonic clock): fleet probes line up on wall-clock
    # minutes, which every pod shares, where their monotonic clocks do not.
    wall_offset_s: float = 0.0
    # A fleet's one estimate (fleet_estimate.py): `started_with` counts the whole fleet's calls, and its first
    # calls are measured by how many were in flight when each started.
    counts_whole_fleet: bool = False
    limit: int = field(init=False)
    slow_start: bool = field(init=False, default=True)
    adjustments: deque[Adjustment] = field(init=False, default_factory=adjustment_log)
    # (time, smoothed latency per token), increasing in both: a monotonic queue whose head is the minimum.
    _minima: deque[tuple[float, float]] = field(init=False, default_factory=deque)
    _smoothed: float | None = field(init=False, default=None)
    _steady: float | None = field(init=False, default=None)
    _first_s_per_token: list[float] = field(init=False, default_factory=list)
    _first_started: list[tuple[int, float]] = field(init=False, default_factory=list)
    _samples: int = field(init=False, default=0)
    _round_trip_s: float = field(init=False, default=MAX_COOLDOWN_S)
    _level: _Level = field(init=False, default_factory=lambda: _Level(float("-inf")))
    # Slow start: where it stops (the maximum, or the limit before the last cuts when climbing back), the
    # most calls in flight answered uncongested, and the queued calls that started with more than that.
    _slow_start_to: int = field(init=False, default=0)
    _verified: int = field(init=False, default=0)
    _queued: list[tuple[int, float]] = field(init=False, default_factory=list)
    # The highest limit before a run of cuts for congestion: when the provider has room again, growth climbs
    # back to it fast. Holding at capacity after the cuts (capacity is lower now) keeps it, and so does a climb
    # back that fails (see CLIMB_BACKOFF_ROUND_TRIPS); reaching it and being judged there clears it.
    _recover_to: int = field(init=False, default=0)
    # In a run of cuts for congestion (or for slow start's overshoot): only its first cut remembers the limit it
    # cut. A limit judged and kept, or held at capacity, ends the run.
    _cutting: bool = field(init=False, default=False)
    # Climbed back to the limit before the cuts and not yet judged at it. If that limit is cut for congestion,
    # the climb failed: in a fleet the next one goes half as far (a bisection toward what the provider takes
    # now: the room seen was often another executor's cut); alone, the next one waits (_next_climb_at), as
    # does any executor's next climb after one cut on its way up.
    _unconfirmed_climb: bool = field(init=False, default=False)
    _failed_climbs: int = field(init=False, default=0)  # in a row
    _next_climb_at: float = field(init=False, default=float("-inf"))
    _suspect_rise: bool = field(init=False, default=False)
    _last_decrease: float = field(init=False, default=float("-inf"))
    _last_uncongested: float | None = field(init=False, default=None)
    _probe_until: float | None = field(init=False, default=None)
    _probe_restore: int = field(init=False, default=0)
    _probe_started: float = field(init=False, default=0.0)
    _probe_samples: list[float] = field(init=False, default_factory=list)
    _growth_credit: float = field(init=False, default=0.0)
    # The current level is this executor's additive step: if it queues, the step is what to take back.
    _level_is_step: bool = field(init=False, default=False)
    _probe_slot: int = field(init=False, default=-1)
    # Cut for overload since a limit was last judged, and the last answers (calls in flight when each started,
    # latency per token over the baseline) whatever limit they started under: see _cut_if_answers_slow.
    _cut_for_overload: bool = field(init=False, default=False)
    _last_answers: deque[tuple[int, float]] = field(
        init=False, default_factory=lambda: deque(maxlen=CUT_AFTER_CALLS)
    )

    def __post_init__(self) -> None:
        if not 1 <= self.minimum <= self.initial <= self.maximum:
            raise ValueError(
                f"need 1 <= minimum ({self.minimum}) <= initial ({self.initial}) <= maximum ({self.maximum})"
            )
        self.limit = self.initial
        self._slow_start_to = self.maximum

    @property
    def baseline_s_per_token(self) -> float | None:
        return self._minima[0][1] if self._minima else None

    @property
    def probing(self) -> bool:
        """Drained for now to re-measure the baseline (below the limit it will restore)."""
        return self._probe_until is not None

    @property
    def latency_ratio(self) -> float | None:
        """Smoothed latency per token over the baseline: 1.0 uncongested, 1.5 at half again capacity."""
        baseline = self.baseline_s_per_token
        return None if self._smoothed is None or not baseline else self._smoothed / baseline

    def _set(self, new: int, now: float, reason: str) -> None:
        new = max(self.minimum, min(self.maximum, new))
        if new != self.limit:
            self.adjustments.append(Adjustment(now, self.limit, new, reason))
            self.limit = new
        self._new_level(now)

    def _new_level(self, now: float) -> None:
        self._level_is_step = False
        baseline = self.baseline_s_per_token
        self._level = _Level(now, baseline or self._steady, provisional=baseline is None)

    def _observe_latency(self, now: float, per_token: float, started_with: int | None = None) -> None:
        # The current latency is smoothed over about one limit's worth of calls, so one slow answer is not
        # congestion. The baseline is the minimum of a slower average: the minimum of a noisy series lies
        # below its mean by a few of its standard deviations, and that gap would read as queueing.
        self._samples += 1
        # A plain mean until it has seen its span (and the slower one a median, below): an early fast answer
        # must not become the baseline.
        self._smoothed = self._ewma(self._smoothed, per_token, 1 / min(self._samples, max(4, self.limit)))
        if self._samples <= BASELINE_CALLS:
            # The median, not the mean, of the first calls: the very first ones also pay for opening
            # connections (and a starting process), and a mean would carry that into the baseline, where it
            # can hide the first queueing (and let slow start step from 1.1x to 1.7x capacity).
            bisect.insort(self._first_s_per_token, per_token)
            # In a fleet the provider is busy with the other executors' calls too: most of these first calls
            # already queue, so a low quantile (the 50/N-th percentile), not the median, is the uncongested one.
            # A fleet's one estimate starts with the whole fleet's calls, but knows how many were in flight when
            # each started: the median of the half that started with the fewest (which did not queue) is not
            # thrown off by the noise of the fast ones, as a low percentile is.
            first = self._first_s_per_token
            if self.counts_whole_fleet and started_with is not None:
                self._first_started.append((started_with, per_token))
                fewest = statistics.median_low(n for n, _ in self._first_started)
                self._steady = statistics.median(t for n, t in self._first_started if n <= fewest)
            else:
                self._steady = (
                    statistics.median(first)
                    if self.fleet <= 1
                    else first[int((len(first) - 1) * 0.5 / self.fleet)]
                )
        else:
            span = max(BASELINE_CALLS, self.limit)
            self._steady = self._ewma(self._steady, per_token, 1 / span)
        if self._samples < BASELINE_CALLS:
            return
        while self._minima and self._minima[-1][1] >= self._steady:
            self._minima.pop()
        self._minima.append((now, self._steady))
        while self._minima[0][0] < now - BASELINE_WINDOW_S:
            self._minima.popleft()
        ratio = self.latency_ratio
        if self._last_uncongested is None or (ratio is not None and ratio <= HOLD_FACTOR):
            self._last_uncongested = now

    @staticmethod
    def _ewma(average: float | None, sample: float, alpha: float) -> float:
        return sample if average is None else average + alpha * (sample - average)

    def _decrease(self, new: int, now: float, reason: str, *, congestion: bool = True) -> None:
        """Lower the limit; `congestion` for overload or a clear latency rise, not for holding at capacity."""
        if self.slow_start:
            if self._slow_start_to < self.maximum:  # a climb back, cut on its way
                self._climb_failed(self._slow_start_to, now)
            else:
                # Slow start's last step overshot: that limit was never good, nothing to climb back to.
                self._recover_to = 0
            self.slow_start = False
            self._cutting = True
        elif not congestion:
            self._cutting = False
        elif not self._cutting:
            if self._unconfirmed_climb and self.fleet > 1:
                self._recover_to = (self.limit + new) // 2
            elif self._unconfirmed_climb:
                self._climb_failed(self.limit, now)
            else:
                self._recover_to = max(self._recover_to, self.limit)
            self._cutting = True
        self._unconfirmed_climb = False
        self._last_decrease = now
        if self._probe_until is not None:  # too high even while draining: the drained limit stays
            self._probe_until = None
        self._set(new, now, reason)

    def _climb_failed(self, target: int, now: float) -> None:
        self._recover_to = max(self._recover_to, target)
        self._failed_climbs += 1
        backoff = CLIMB_BACKOFF_ROUND_TRIPS * min(CLIMB_BACKOFF_MAX, 2 ** (self._failed_climbs - 1))
        self._next_climb_at = now + backoff * self._round_trip_s

    def _overloaded(self, now: float) -> None:
        if now - self._last_decrease < self._round_trip_s:
            return
        reason = "overloaded (429/5xx/timeout)"
        if self.slow_start:
            # Slow start overshot: go back to the most calls in flight that were answered uncongested (before
            # any answer, to the limit before the last growth step).
            previous = self._verified or math.floor(self.limit / SLOW_START_FACTOR)
            self._decrease(min(self.limit - 1, previous), now, f"{reason}; slow start ends")
        else:
            self._decrease(min(self.limit - 1, int(self.limit * DECREASE_FACTOR)), now, reason)
            self._cut_for_overload = True

    def _probe(self, now: float) -> bool:
        """Drain now and then to re-measure the uncongested latency; True while a probe is running."""
        if self._probe_until is not None:
            if now < self._probe_until:
                return True
            waited = now - self._probe_started
            if (
                len(self._probe_samples) < PROBE_SAMPLES
                and waited < PROBE_MAX_ROUND_TRIPS * self._round_trip_s
            ):
                return True
            self._take_probe(now)
            self._probe_until = None
            self._last_uncongested = now
            self._set(self._probe_restore, now, "baseline re-measured; limit restored")
            return False
        due = self._last_uncongested is not None and now - self._last_uncongested > PROBE_AFTER_S
        # One executor of a fleet draining alone leaves the provider as busy as the others keep it: the fleet
        # drains together, at the first answer past a wall-clock minute, so each measures a quieter provider.
        slot = int((now + self.wall_offset_s) // PROBE_AFTER_S)
        due = due or (self._last_uncongested is not None and slot % PROBE_EVERY == 0)
        due = due and self._probe_slot not in (-1, slot)
        self._probe_slot = slot
        if due:
            self._probe_restore = self.limit
            self._probe_started, self._probe_samples = now, []
            self._probe_until = now + PROBE_ROUND_TRIPS * self._round_trip_s
            self._set(int(self.limit * PROBE_FACTOR), now, "draining briefly to re-measure the baseline")
            return True
        return False

    def _take_probe(self, now: float) -> None:
        """The median of the answers to calls started while draining is a baseline sample."""
        if len(self._probe_samples) < PROBE_SAMPLES or self._steady is None:
            return
        measured = statistics.median(self._probe_samples)
        if measured >= self._steady:
            return
        self._steady = measured
        while self._minima and self._minima[-1][1] >= measured:
            self._minima.pop()
        self._minima.append((now, measured))

    def _grow(self, now: float, ratio: float | None) -> None:
        if self._unconfirmed_climb:  # judged at the limit it climbed back to: that capacity is back
            self._failed_climbs = 0
        self._cutting = self._unconfirmed_climb = False
        room = ratio is None or ratio <= ROOM_FACTOR
        if self.limit < self._recover_to and room and now >= self._next_climb_at:
            # Capacity came back (it was there before the last cuts): slow start back up to it.
            self.slow_start, self._slow_start_to = True, self._recover_to
            self._verified, self._queued = math.floor(self._level.mean_in_flight), []
            self._recover_to = 0
            self._slow_start_step(now)
        else:
            self._growth_credit += 1 / max(1, self.fleet)
            if self._growth_credit >= 1 - 1e-9:
                self._growth_credit = 0.0
                self._set(self.limit + 1, now, "additive increase")
                self._level_is_step = True
            else:
                self._new_level(now)

    def grow_for_newcomer(self, calls: int, now: float) -> None:
        """A fleet's one estimate (fleet_estimate.py): an executor joined during the fleet's first slow start,
        with the calls it would have started with alone. Past that slow start, a newcomer changes nothing: the
        provider's capacity is what it was."""
        if self.slow_start and self._slow_start_to == self.maximum:
            self._set(self.limit + calls, now, "an executor joined the fleet's slow start")

    def _slow_start_step(self, now: float) -> None:
        target = max(
            min(2 * self._verified, SLOW_START_DOUBLING_UP_TO), math.ceil(SLOW_START_FACTOR * self._verified)
        )
        target = min(target, self._slow_start_to)
        if target > self.limit:
            climbing_back = self._slow_start_to < self.maximum
            reason = (
                "latency flat again: back toward the limit before the cuts" if climbing_back else "slow start"
            )
            self._set(target, now, reason)
        if self.limit >= self._slow_start_to:
            self._unconfirmed_climb = self._slow_start_to < self.maximum
            self.slow_start = False
            self._new_level(now)

    def _slow_start_answer(self, now: float, ratio: float, started_with: int) -> None:
        """Slow start, call by call: an uncongested answer raises the limit, queued ones end slow start."""
        if ratio <= ROOM_FACTOR:
            self._verified = max(self._verified, started_with)
            # Queued calls that started with fewer in flight than this one were noise, not capacity.
            self._queued = [(n, r) for n, r in self._queued if n > started_with]
            self._slow_start_step(now)
            return
        if ratio <= HOLD_FACTOR or started_with <= self._verified:
            return  # neither room nor news: that many in flight answered uncongested before
        self._queued.append((started_with, ratio))
        if len(self._queued) < CUT_AFTER_CALLS:
            return
        in_flight = statistics.fmean(n for n, _ in self._queued)
        mean_ratio = statistics.fmean(r for _, r in self._queued)
        at_capacity = self._share(in_flight / mean_ratio * HOLD_FACTOR)
        self._queued = []
        if at_capacity >= self.limit:
            self.slow_start = False
            self._new_level(now)
            return
        cause = "latency per token rose" if mean_ratio > SLOW_FACTOR else "queueing began"
        self._decrease(
            max(math.ceil(self.limit / 2), at_capacity),
            now,
            f"{cause} ({mean_ratio:.2f}x): held at capacity; slow start ends",
            congestion=False,
        )

    def _share(self, calls: float) -> int:
        """The measured capacity as a limit. Alone, rounded up (a limit just short of capacity loses
        throughput); in a fleet, rounded to the nearest, or N executors rounding up hold N calls too many."""
        return math.ceil(calls) if self.fleet <= 1 else max(1, round(calls))

    def _judge_level(self, now: float) -> None:
        """Decide on the limit from the calls that started under it."""
        level = self._level
        ratio = level.ratio
        self._cut_for_overload = False
        if ratio is None or ratio <= HOLD_FACTOR:
            self._suspect_rise = False
            if level.mean_in_flight >= self.limit - USED_SLACK_CALLS:
                self._grow(now, ratio)
            else:
                self._new_level(now)
            return
        if level.provisional and (ratio <= SLOW_FACTOR or not self._suspect_rise):
            # Measured against a provisional reference (a few small-limit calls, one of them perhaps a lucky
            # fast answer): noise must not cut the limit. Only a clear rise, twice in a row, does.
            self._suspect_rise = ratio > SLOW_FACTOR
            self._new_level(now)
            return
        self._suspect_rise = False
        # Past capacity: n in flight at r times the uncongested latency serve n / r without queueing (n counted
        # when each call started: the count when it ends is lower after a cut, as the calls above it drain).
        started_with = statistics.fmean(level.started)
        at_capacity = self._share(started_with / ratio * HOLD_FACTOR)
        if self.fleet > 1 and self._level_is_step:
            # In a fleet the provider's queueing answers to everyone's calls, and each executor's share of
            # capacity is a call or two: rounding it keeps the step (2 x 0.93 is 1.87, so 2), and the fleet
            # stays a call or two past capacity. The step this executor just took is what queued: undo it.
            at_capacity = min(at_capacity, self.limit - 1)
        if ratio > SLOW_FACTOR:
            # A limit measured slow is cut by a call at least, unless its calls started with more in flight than
            # it (it was cut while they ran): they measured that many, and the limit may be right.
            most = self.limit if started_with > self.limit else self.limit - 1
            at_capacity = max(math.ceil(self.limit / 2), min(most, at_capacity))
        if at_capacity >= self.limit:
            self._cutting = False
            self._new_level(now)  # at capacity already: hold, and judge the limit again
        elif ratio > SLOW_FACTOR:
            self._decrease(at_capacity, now, f"latency per token rose ({ratio:.2f}x)")
        else:
            reason = f"queueing began ({ratio:.2f}x): held at capacity"
            self._decrease(at_capacity, now, reason, congestion=False)

    def _cut_if_answers_slow(self, now: float) -> bool:
        """After a cut for overload, the last answers judge the latency, whatever limit they started under.

        Each cut for 429s (once a round trip) is a new limit, judged on its own calls a round trip later, so
        while 429s keep coming no latency is judged: capacity 16 -> 8 took the limit 17 -> 15 -> 13 -> 11 -> 9
        over 5 s, while the answers already said how far. The last CUT_AFTER_CALLS answers all clearly slow
        bring the limit to the capacity they measure. While 429s come, the calls counted in flight include
        refused ones waiting to retry, which the provider did not hold: each counts at most the limit the cuts
        have left.
        """
        answers = self._last_answers
        if len(answers) < CUT_AFTER_CALLS or min(r for _, r in answers) <= SLOW_FACTOR:
            return False
        self._cut_for_overload = False
        capacity = statistics.median(min(n, self.limit) / r for n, r in answers) * HOLD_FACTOR
        new = max(math.ceil(self.limit / 2), min(self.limit - 1, self._share(capacity)))
        ratio = statistics.fmean(r for _, r in answers)
        self._decrease(new, now, f"latency per token rose ({ratio:.2f}x) while overloaded")
        return True

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
        """One finished call: `in_flight` counts the calls still running when it finished, itself included;
        `started_with` those running when it started (unknown: `in_flight`)."""
        if outcome is Outcome.OVERLOADED:
            self._overloaded(now)
            return
        if outcome is not Outcome.OK:
            return
        ratio = per_token = None
        if latency_s > 0:
            bounded = min(MAX_COOLDOWN_S, max(MIN_COOLDOWN_S, latency_s))
            self._round_trip_s += 0.2 * (bounded - self._round_trip_s)
            if tokens > 0:
                per_token = latency_s / tokens
                self._observe_latency(now, per_token, started_with)
                reference = self._level.reference
                ratio = per_token / reference if reference else None
        probing = self._probe_until is not None and now - latency_s >= self._probe_started
        if probing and per_token is not None:
            self._probe_samples.append(per_token)
        if self._probe(now):
            return
        started = in_flight if started_with is None else started_with
        # Against the reference of the moment (the median of the first calls, then the baseline), where a limit
        # has a fixed one: slow start steps faster than that could follow, and so do the cuts while overloaded.
        current = self.baseline_s_per_token or self._steady
        answer_ratio = per_token / current if per_token and current else None
        if self.slow_start:
            # No latency signal, no brake.
            self._slow_start_answer(now, 1.0 if answer_ratio is None else answer_ratio, started)
            return
        if answer_ratio is not None:
            self._last_answers.append((started, answer_ratio))
        if self._cut_for_overload and self._cut_if_answers_slow(now):
            return
        level = self._level
        if now - latency_s < level.since + BURST_SHARE * self._round_trip_s:
            return  # started under an earlier limit, or in the burst that filled this one
        level.add(ratio, in_flight, started)
        enough = level.calls >= max(LEVEL_MIN_CALLS, math.ceil(self.limit * LEVEL_SHARE))
        clearly_slow = level.calls >= CUT_AFTER_CALLS and (level.ratio or 0.0) > SLOW_FACTOR
        if enough or clearly_slow:
            self._judge_level(now)


@dataclass
class FixedLimiter:
    """A limit that never moves: the benchmark's fixed baselines, and a safe fallback."""

    limit: int
    adjustments: deque[Adjustment] = field(default_factory=adjustment_log)

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
        return None


@dataclass
class SeedRuleLimiter:
    """The original spec's rule, kept as the baseline: every 30 s, -10% if p95 is too high, else +5%.

    As specified: a failed call counts as an unhealthy sample (the spec's error-rate check), growth needs
    more than 80% of the limit in use, and both steps round down (so below 20 the limit cannot grow).
    """

    minimum: int = 10
    maximum: int = 200
    limit: int = 100
    period_s: float = 30.0
    p95_threshold_s: float = 2.0
    adjustments: deque[Adjustment] = field(default_factory=adjustment_log)
    _window: list[float] = field(default_factory=list)
    _busiest: int = 0
    _next: float | None = None

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
        self._window.append(float("inf") if outcome is Outcome.OVERLOADED else latency_s)
        self._busiest = max(self._busiest, in_flight)
        if self._next is None:
            self._next = now + self.period_s
        if now < self._next:
            return
        self._next = now + self.period_s
        ordered = sorted(self._window)
        p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
        busiest, self._busiest = self._busiest, 0
        self._window.clear()
        old = self.limit
        if p95 > self.p95_threshold_s:
            self.limit = max(self.minimum, int(self.limit * 0.9))
        elif busiest > 0.8 * self.limit:
            self.limit = min(self.maximum, int(self.limit * 1.05))
        if self.limit != old:
            self.adjustments.append(Adjustment(now, old, self.limit, f"seed rule: p95 {p95:.2f}s"))
