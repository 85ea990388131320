"""What a provider's rate-limit headers say, and when the next call may start without being refused.

OpenAI-compatible providers send `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` on every answer and
`Retry-After` with a 429. Their budgets refill continuously (what is missing returns over the reset time),
so the room at a later moment is the last reading, refilled at that rate, less what this process and the
other processes on the same key (estimated from the readings) took since. Pure: the caller passes the headers
and the time.
"""

import re
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from email.utils import parsedate_to_datetime
from typing import Final

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# A reading older than this says nothing any more: the provider's counters moved on without us.
STALE_AFTER_S: Final = 120.0
# No wait longer than this on one reading; a longer reset is looked at again (a new reading may come first).
LONGEST_WAIT_S: Final = 60.0
# A request reaches the provider's rate limiter some milliseconds after it is sent (more from a busy client):
# a reading dated at the send would count refill from before the provider took its count, and the first call
# that extra refill let start was refused (a few tokens short, at a budget's edge). Dated this much later.
ADMISSION_DELAY_S: Final = 0.05
# Other processes' spending is estimated over the readings of this long: long enough that the rounding of
# the headers (a unit per reading) averages out, short enough to follow a fleet that grows or shrinks.
OTHERS_WINDOW_S: Final = 5.0
# ... and never as a rate over less than this, so the first two readings a few milliseconds apart do not
# make one rounded unit a rate of hundreds per second.
OTHERS_MIN_SPAN_S: Final = 1.0
# The others take their calls one by one, not as a smooth rate: processes that start a call as soon as their
# estimate leaves room for one race each other for the last units of the budget, and the losers are refused.
# With others on the key, a process starts only when this many seconds of the refill would still be left after
# its call: the budget hovers that far above empty, at no cost to the rate of calls. The same for every
# process (a reserve in proportion to a process's view of the others starved all but the busiest).
OTHERS_RESERVE_S: Final = 0.2


def parse_duration(text: str) -> float | None:
    """Seconds of an OpenAI-style duration ("1s", "6m0s", "20ms", "1h2m3.5s") or a bare number of seconds."""
    text = text.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    return sum(float(number) * _UNIT_S[unit] for number, unit in parts)


def retry_after_s(value: str | None, now_epoch: float | None) -> float | None:
    """Seconds a Retry-After asks for: seconds, an OpenAI-style duration, or an HTTP date (read against
    `now_epoch`, the wall clock; None reads no dates)."""
    if value is None:
        return None
    seconds = parse_duration(value)
    if seconds is not None or now_epoch is None:
        return seconds
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now_epoch)
    except (TypeError, ValueError):
        return None


def _integer(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return max(0, int(float(value)))
    except ValueError:
        return None


def _seconds(headers: Mapping[str, str], name: str) -> float | None:
    value = headers.get(name)
    return parse_duration(value) if value is not None else None


@dataclass(frozen=True, slots=True)
class Budget:
    """One of the provider's budgets (requests or tokens) as one answer reported it; `period_s` is how long
    it takes to refill from empty (lowest, highest), when earlier readings have pinned it (`RefillPeriod`)."""

    limit: int | None
    remaining: int
    reset_s: float
    period_s: tuple[float, float] | None = None

    @property
    def level(self) -> float:
        """What was left, to a fraction: `remaining` is rounded down, and with the period known the reset time
        (to the millisecond) says the rest (the shortest period: the least it can be)."""
        if self.period_s is None or self.limit is None or self.reset_s <= 0:
            return float(self.remaining)
        least = self.limit * (1 - self.reset_s / self.period_s[0])
        return min(max(least, float(self.remaining)), self.remaining + 0.999)

    @property
    def refill_per_s(self) -> float | None:
        """How fast it refills: what is missing comes back over the reset time. A full budget reports no
        reset; these are per-minute budgets (RPM, TPM), so it refills at its limit per minute."""
        if self.limit is None:
            return None
        if self.period_s is not None:
            return self.limit / self.period_s[1]  # the longest period: the slowest it can be
        if self.reset_s > 0 and self.limit > self.remaining:
            # Providers report `remaining` rounded down to a whole request or token, the reset to the millisecond:
            # read as exact, what is missing refills up to one unit per reset faster than it does, and the call
            # that estimate lets start early is refused. One unit less keeps the estimate under the real refill.
            missing = self.limit - self.remaining
            return max(missing - 1, missing / 2) / self.reset_s
        return self.limit / 60.0

    def room(
        self, elapsed_s: float, takes: Sequence[tuple[float, float]] = (), drain_per_s: float = 0.0
    ) -> float:
        """What is left `elapsed_s` after the reading once `takes` were taken: (seconds after the reading,
        amount), in order, and `drain_per_s` (what others take, as a rate). A bucket: it refills continuously up
        to its limit, each take out of it when made."""
        rate = self.refill_per_s
        if rate is None:  # no limit given: the reading holds until its reset, then nothing is known
            return float("inf") if elapsed_s >= self.reset_s else self.remaining - sum(a for _, a in takes)
        rate -= drain_per_s
        limit = float(self.limit or 0)
        level, at = self.level, 0.0
        for offset, amount in takes:
            offset = max(at, min(offset, elapsed_s))
            level = min(limit, level + rate * (offset - at)) - amount
            at = offset
        return min(limit, level + rate * (elapsed_s - at))

    def wait_for(
        self,
        needed: float,
        elapsed_s: float,
        takes: Sequence[tuple[float, float]] = (),
        drain_per_s: float = 0.0,
    ) -> float:
        """Seconds from now until a call taking `needed` fits, `takes` and `drain_per_s` having been taken since
        the reading. A call bigger than the whole budget waits for a full budget, no more (it could never fit)."""
        if self.limit is not None:
            needed = min(needed, self.limit)
        room = self.room(elapsed_s, takes, drain_per_s)
        if room >= needed:
            return 0.0
        rate = self.refill_per_s
        if rate is None:
            return self.reset_s - elapsed_s
        # When the others take it all, the next reading says more: look again after what the refill alone needs.
        return (needed - room) / (rate - drain_per_s if rate > drain_per_s else rate)


@dataclass(frozen=True, slots=True)
class RateLimitHeaders:
    requests: Budget | None
    tokens: Budget | None
    retry_after_s: float | None

    def refused_for_budget(self, tokens: int) -> bool:
        """A refusal (Retry-After) with no request left, or fewer tokens than a call of `tokens` takes."""
        if self.retry_after_s is None:
            return False
        return (self.requests is not None and self.requests.remaining < 1) or (
            self.tokens is not None and self.tokens.remaining < tokens
        )


def parse_rate_limit_headers(
    headers: Mapping[str, str], now_epoch: float | None = None
) -> RateLimitHeaders | None:
    """The rate-limit headers of one answer (names case-insensitive), None when it has none."""
    lower = {name.lower(): value for name, value in headers.items()}

    def budget(kind: str) -> Budget | None:
        remaining = _integer(lower, f"x-ratelimit-remaining-{kind}")
        reset = _seconds(lower, f"x-ratelimit-reset-{kind}")
        if remaining is None or reset is None:
            return None
        return Budget(_integer(lower, f"x-ratelimit-limit-{kind}"), remaining, reset)

    parsed = RateLimitHeaders(
        budget("requests"), budget("tokens"), retry_after_s(lower.get("retry-after"), now_epoch)
    )
    if parsed.requests is None and parsed.tokens is None and parsed.retry_after_s is None:
        return None
    return parsed


@dataclass
class RefillPeriod:
    """How long one of the provider's budgets takes to refill from empty (a minute, for OpenAI's), pinned by
    its readings. Each bounds it: the reset time is what is missing over the refill rate, and what is missing
    is known to within one unit (`remaining` is rounded down) and the reset to the millisecond; the bounds of
    all readings meet (within a few per cent after one reading of a budget of a hundred). With them a reading's
    reset gives its level to a fraction, and so the refill, and what others took between two readings (a unit
    of rounding per reading hides them: a fleet at the edge of its budget reads "0 left" every time)."""

    low: float = 0.0
    high: float = float("inf")

    def narrow(self, budget: Budget) -> None:
        if budget.limit is None or budget.reset_s <= 0 or budget.remaining >= budget.limit:
            return  # a full budget says nothing of its refill
        missing = budget.limit - budget.remaining  # at most; more than missing - 1
        low = max(0.0, budget.reset_s - 0.0005) * budget.limit / missing
        high = (budget.reset_s + 0.001) * budget.limit / (missing - 1) if missing > 1 else float("inf")
        if max(low, self.low) > min(high, self.high):
            self.low, self.high = low, high  # the provider changed the budget: start again from this reading
        else:
            self.low, self.high = max(low, self.low), min(high, self.high)

    @property
    def known(self) -> tuple[float, float] | None:
        return None if self.high == float("inf") else (self.low, self.high)


def _at_middle(budget: Budget) -> Budget:
    assert budget.period_s is not None
    middle = sum(budget.period_s) / 2
    return replace(budget, period_s=(middle, middle))


@dataclass
class _Sent:
    number: int
    at: float
    tokens: int


@dataclass
class ProviderBudget:
    """The room a provider's last reading left, minus the calls started since: when may the next one start?

    A provider counts a request against its budgets when it admits it, and its answer's headers say what was
    left then: a reading is as old as its request, seconds by the time it arrives. So a reading is dated at its
    request's send (a refusal's at its arrival: it is answered at once), refilled from then, and the calls this
    process sent after that request are spent from it (not the ones sent after the answer came: a slow answer
    would otherwise forget a second of starts, and the provider refuse them). Readings that arrive out of order
    are kept only when newer than the one held.

    Other processes on the same key (the executors of a fleet) spend from the same budgets, and a reading shows
    only what they took before it. What they take since is estimated from the readings: each new one against
    what the one before predicted from this process's own calls. The shortfall, over the last
    OTHERS_WINDOW_S, is the others' rate, spent from the room as it refills.
    """

    requests: Budget | None = None
    tokens: Budget | None = None
    read_at: float = float("-inf")
    blocked_until: float = float("-inf")
    # The requests sent after the reading's own, oldest first; numbered in the order they were sent.
    _since_reading: deque[_Sent] = field(default_factory=deque)
    _reading_of: int = -1
    _sent: int = 0
    # What other processes took between two readings: (first reading's time, next reading's, requests, tokens).
    _others: deque[tuple[float, float, float, float]] = field(default_factory=deque)
    _request_period: RefillPeriod = field(default_factory=RefillPeriod)
    _token_period: RefillPeriod = field(default_factory=RefillPeriod)

    def observe(self, headers: RateLimitHeaders, now: float, sent: int | None = None) -> None:
        """The headers of the answer to request number `sent` (what `started` returned); None: a reading of
        now, every request sent so far counted in it."""
        if headers.retry_after_s is not None:
            self.blocked_until = max(self.blocked_until, now + headers.retry_after_s)
        if headers.requests is None and headers.tokens is None:
            return
        if sent is None:
            sent, read_at = self._sent - 1, now
        elif sent < self._reading_of:
            return  # an older request's answer, come late: the reading held is newer
        elif headers.retry_after_s is not None:
            read_at = now  # a refusal is answered as soon as it is decided, however long the request took to get there
        else:
            sent_at = next((s.at for s in self._since_reading if s.number == sent), now)
            read_at = min(sent_at + ADMISSION_DELAY_S, now)
        requests = self._calibrated(headers.requests, self._request_period)
        tokens = self._calibrated(headers.tokens, self._token_period)
        # A refused request took nothing: counted as this process's, it would hide the call that beat it.
        refused = headers.retry_after_s is not None
        own = [s for s in self._since_reading if s.number < sent or (s.number == sent and not refused)]
        self._count_others(requests, tokens, read_at, own)
        self.requests, self.tokens, self.read_at, self._reading_of = requests, tokens, read_at, sent
        while self._since_reading and self._since_reading[0].number <= sent:
            self._since_reading.popleft()

    @staticmethod
    def _calibrated(budget: Budget | None, period: RefillPeriod) -> Budget | None:
        if budget is None:
            return None
        period.narrow(budget)
        return replace(budget, period_s=period.known)

    def _count_others(
        self, requests: Budget | None, tokens: Budget | None, read_at: float, own: list[_Sent]
    ) -> None:
        """What the new reading says others took since the last one: its shortfall against the prediction."""
        elapsed = read_at - self.read_at
        if not 0 <= elapsed < STALE_AFTER_S:
            return
        shortfalls = []
        for old, new, amounts in (
            (self.requests, requests, [1.0 for _ in own]),
            (self.tokens, tokens, [float(s.tokens) for s in own]),
        ):
            if old is None or new is None or old.period_s is None or new.period_s is None:
                shortfalls.append(0.0)  # rounded to a unit per reading, the shortfalls would be noise
                continue
            # Both at the period's middle: its bounds would tilt every shortfall the same way.
            old, new = _at_middle(old), _at_middle(new)
            takes = [(s.at - self.read_at, amount) for s, amount in zip(own, amounts, strict=True)]
            shortfalls.append(old.room(elapsed, takes) - new.level)
        self._others.append((self.read_at, read_at, shortfalls[0], shortfalls[1]))

    def _others_per_s(self, now: float) -> tuple[float, float]:
        """The requests and tokens per second other processes take, over the readings of the last
        OTHERS_WINDOW_S up to now (with no new reading, what was seen ages out: waiting on an estimate of
        others who have stopped would leave nobody to send the request whose answer says so). Never below 0:
        a reading above the prediction is the provider refilling faster than its rounded headers said."""
        while self._others and self._others[0][1] < now - OTHERS_WINDOW_S:
            self._others.popleft()
        if not self._others:
            return 0.0, 0.0
        span = max(now - self._others[0][0], OTHERS_MIN_SPAN_S)
        requests = sum(entry[2] for entry in self._others)
        tokens = sum(entry[3] for entry in self._others)
        return max(0.0, requests / span), max(0.0, tokens / span)

    @staticmethod
    def _reserve(budget: Budget, others_per_s: float) -> float:
        """What to leave in the budget for the others' bursts: OTHERS_RESERVE_S of its refill, once others
        are seen on the key."""
        rate = budget.refill_per_s
        return OTHERS_RESERVE_S * rate if others_per_s > 0 and rate is not None else 0.0

    def _takes(self) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        """The requests and tokens sent since the reading, as (seconds after it, amount)."""
        requests = [(sent.at - self.read_at, 1.0) for sent in self._since_reading]
        tokens = [(sent.at - self.read_at, float(sent.tokens)) for sent in self._since_reading]
        return requests, tokens

    def wait_s(self, tokens: int, now: float) -> float:
        """0 if a call of `tokens` (prompt + max output) may start now, else how long to wait first."""
        wait = max(0.0, self.blocked_until - now)
        elapsed = now - self.read_at
        if elapsed < STALE_AFTER_S:
            requests, spent_tokens = self._takes()
            others_requests, others_tokens = self._others_per_s(now)
            if self.requests is not None:
                needed = 1 + self._reserve(self.requests, others_requests)
                wait = max(wait, self.requests.wait_for(needed, elapsed, requests, others_requests))
            if self.tokens is not None:
                needed = tokens + self._reserve(self.tokens, others_tokens)
                wait = max(wait, self.tokens.wait_for(needed, elapsed, spent_tokens, others_tokens))
        return min(wait, LONGEST_WAIT_S)

    def started(self, tokens: int, now: float) -> int:
        """A request of `tokens` is sent now: spent from the room; returns its number, for `observe`."""
        number, self._sent = self._sent, self._sent + 1
        self._since_reading.append(_Sent(number, now, tokens))
        # A provider that never answers with headers leaves nothing to spend them from: keep what a reading can use.
        while self._since_reading and self._since_reading[0].at < now - STALE_AFTER_S:
            self._since_reading.popleft()
        return number

    def snapshot(self, now: float) -> dict[str, float | int | None] | None:
        """What /api/v2/concurrency/status shows: the last reading, refilled to now, and any Retry-After;
        None when the provider told nothing (recently)."""
        elapsed = now - self.read_at
        fresh = elapsed < STALE_AFTER_S

        def left(budget: Budget | None, takes: list[tuple[float, float]], others: float) -> int | None:
            if budget is None or not fresh:
                return None
            room = budget.room(elapsed, takes, others)
            return max(0, int(room)) if room != float("inf") else None

        requests, spent_tokens = self._takes()
        others_requests, others_tokens = self._others_per_s(now)
        reading = {
            "remaining_requests": left(self.requests, requests, others_requests),
            "limit_requests": self.requests.limit if self.requests and fresh else None,
            "remaining_tokens": left(self.tokens, spent_tokens, others_tokens),
            "limit_tokens": self.tokens.limit if self.tokens and fresh else None,
            "retry_after_s": round(self.blocked_until - now, 3) if self.blocked_until > now else None,
        }
        return reading if any(value is not None for value in reading.values()) else None
