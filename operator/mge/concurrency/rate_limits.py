"""What a provider's rate-limit headers say, and when the next call may start without being refused.

OpenAI-compatible providers send `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` on every answer and
`Retry-After` with a 429. Their budgets refill continuously (what is missing returns over the reset time),
so the room at a later moment is the last reading, refilled at that rate, less what was taken since.
Pure: the caller passes the headers and the time.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Final

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# A reading older than this says nothing any more: the provider's counters moved on without us.
STALE_AFTER_S: Final = 120.0
# No wait longer than this on one reading; a longer reset is looked at again (a new reading may come first).
LONGEST_WAIT_S: Final = 60.0


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
    """One of the provider's budgets (requests or tokens) as one answer reported it."""

    limit: int | None
    remaining: int
    reset_s: float

    @property
    def refill_per_s(self) -> float | None:
        """How fast it refills: what is missing comes back over the reset time. A full budget reports no
        reset; these are per-minute budgets (RPM, TPM), so it refills at its limit per minute."""
        if self.limit is None:
            return None
        if self.reset_s > 0 and self.limit > self.remaining:
            return (self.limit - self.remaining) / self.reset_s
        return self.limit / 60.0

    def room(self, elapsed_s: float, spent: float = 0.0) -> float:
        """What is left `elapsed_s` after the reading once `spent` more was taken from it."""
        rate = self.refill_per_s
        if rate is None:  # no limit given: the reading holds until its reset, then nothing is known
            return float("inf") if elapsed_s >= self.reset_s else self.remaining - spent
        return min(float(self.limit or 0), self.remaining + rate * elapsed_s) - spent

    def wait_for(self, needed: float, spent: float, elapsed_s: float) -> float:
        """Seconds from now until a call taking `needed` fits, `spent` having been taken since the reading.
        A call bigger than the whole budget waits for a full budget, no more (it could never fit)."""
        if self.limit is not None:
            needed = min(needed, self.limit)
        if self.room(elapsed_s, spent) >= needed:
            return 0.0
        rate = self.refill_per_s
        if rate is None:
            return self.reset_s - elapsed_s
        # remaining + rate * t - spent = needed
        return max(0.0, (needed + spent - self.remaining) / rate - elapsed_s)


@dataclass(frozen=True, slots=True)
class RateLimitHeaders:
    requests: Budget | None
    tokens: Budget | None
    retry_after_s: float | None


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
class ProviderBudget:
    """The room a provider's last reading left, minus the calls started since: when may the next one start?

    A reading counts the calls the provider had seen; the calls this process started after it are spent
    from it here, so a burst of starts cannot all take the same last request. (Other processes' calls show
    in the next reading: the provider counts them all.)
    """

    requests: Budget | None = None
    tokens: Budget | None = None
    read_at: float = float("-inf")
    started_requests: int = 0
    started_tokens: int = 0
    blocked_until: float = float("-inf")

    def observe(self, headers: RateLimitHeaders, now: float) -> None:
        if headers.retry_after_s is not None:
            self.blocked_until = max(self.blocked_until, now + headers.retry_after_s)
        if headers.requests is not None or headers.tokens is not None:
            self.requests, self.tokens, self.read_at = headers.requests, headers.tokens, now
            self.started_requests = self.started_tokens = 0

    def wait_s(self, tokens: int, now: float) -> float:
        """0 if a call of `tokens` (prompt + max output) may start now, else how long to wait first."""
        wait = max(0.0, self.blocked_until - now)
        elapsed = now - self.read_at
        if elapsed < STALE_AFTER_S:
            if self.requests is not None:
                wait = max(wait, self.requests.wait_for(1, self.started_requests, elapsed))
            if self.tokens is not None:
                wait = max(wait, self.tokens.wait_for(tokens, self.started_tokens, elapsed))
        return min(wait, LONGEST_WAIT_S)

    def started(self, tokens: int) -> None:
        self.started_requests += 1
        self.started_tokens += tokens

    def snapshot(self, now: float) -> dict[str, float | int | None] | None:
        """What /api/v2/concurrency/status shows: the last reading, refilled to now, and any Retry-After;
        None when the provider told nothing (recently)."""
        elapsed = now - self.read_at
        fresh = elapsed < STALE_AFTER_S

        def left(budget: Budget | None, started: int) -> int | None:
            if budget is None or not fresh:
                return None
            room = budget.room(elapsed, started)
            return max(0, int(room)) if room != float("inf") else None

        reading = {
            "remaining_requests": left(self.requests, self.started_requests),
            "limit_requests": self.requests.limit if self.requests and fresh else None,
            "remaining_tokens": left(self.tokens, self.started_tokens),
            "limit_tokens": self.tokens.limit if self.tokens and fresh else None,
            "retry_after_s": round(self.blocked_until - now, 3) if self.blocked_until > now else None,
        }
        return reading if any(value is not None for value in reading.values()) else None
