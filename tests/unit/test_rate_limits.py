"""Reading a provider's rate-limit headers and deciding when the next call may start (pure, no I/O)."""

import random

import pytest

from mge.concurrency.rate_limits import (
    LONGEST_WAIT_S,
    OTHERS_WINDOW_S,
    STALE_AFTER_S,
    Budget,
    ProviderBudget,
    parse_duration,
    parse_rate_limit_headers,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0.75", 0.75), ("17", 17.0)],
)
def test_openai_durations_and_plain_seconds_are_read(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "1d", "5s later", "-"])
def test_unreadable_durations_are_none_not_zero(text):
    assert parse_duration(text) is None


def test_headers_are_read_whatever_their_case_and_an_answer_without_them_is_none():
    reading = parse_rate_limit_headers(
        {
            "X-RateLimit-Limit-Requests": "60",
            "x-ratelimit-remaining-requests": "59",
            "x-ratelimit-reset-requests": "1s",
            "x-ratelimit-limit-tokens": "150000",
            "x-ratelimit-remaining-tokens": "149984",
            "x-ratelimit-reset-tokens": "6ms",
        }
    )
    assert reading is not None
    assert reading.requests == Budget(60, 59, 1.0)
    assert reading.tokens == Budget(150000, 149984, 0.006)
    assert reading.retry_after_s is None
    assert parse_rate_limit_headers({"content-type": "application/json"}) is None
    assert parse_rate_limit_headers({"Retry-After": "2"}).retry_after_s == 2.0  # type: ignore[union-attr]


def test_a_budget_refills_at_the_rate_its_reset_time_says():
    budget = Budget(limit=61, remaining=0, reset_s=60.0)  # one request back per second (rounding below)
    assert budget.refill_per_s == pytest.approx(1.0)
    assert budget.room(0.0) == 0
    assert budget.room(30.0) == pytest.approx(30)
    assert budget.room(70.0) == 61  # never past the limit
    assert budget.wait_for(1, elapsed_s=0.0) == pytest.approx(1.0)
    assert budget.wait_for(1, elapsed_s=4.0, takes=[(0.0, 1.0)] * 9) == pytest.approx(6.0)
    # Taken past a full budget: the wait goes on past the reset time, one refill per request.
    assert Budget(limit=2, remaining=0, reset_s=2.0).wait_for(1, 0.0, [(0.0, 1.0)] * 5) == pytest.approx(12.0)
    # A full budget reports no reset: a per-minute budget refills at its limit per minute.
    assert Budget(limit=60, remaining=60, reset_s=0.0).wait_for(1, 0.0, [(0.0, 1.0)] * 60) == pytest.approx(
        1.0
    )
    # Without a limit the reading is all there is until the reset.
    assert Budget(None, 0, 5.0).wait_for(1, elapsed_s=1.0) == pytest.approx(4.0)


def test_what_was_taken_from_a_full_budget_refills_from_when_it_was_taken():
    budget = Budget(limit=10, remaining=10, reset_s=0.0)  # full: 10 per minute
    rate = 10 / 60
    # All ten taken at once, then half a minute of refill: five are back (not min(10, 10 + 5) - 10 = 0).
    assert budget.room(30.0, [(0.0, 1.0)] * 10) == pytest.approx(30 * rate)
    # Taken as they refill, each costs only itself.
    assert budget.room(12.0, [(6.0, 1.0), (12.0, 1.0)]) == pytest.approx(10 - 1)


def test_a_remaining_rounded_down_never_lets_a_call_start_before_the_provider_has_room():
    """The provider's bucket as OpenAI-compatible ones report it: `remaining` rounded down, the reset to the
    millisecond. Read as exact, the refill came out faster than it is and one call a second was refused."""
    limit, rate = 16, 16.0  # per second
    level = 0.96
    reading = Budget(limit, int(level), int((limit - level) / rate * 1000) / 1000)
    takes: list[tuple[float, float]] = []
    now = 0.0
    while now < 3.0:
        wait = reading.wait_for(1, now, takes)
        now += max(wait, 0.001)
        level = min(limit, level + rate * max(wait, 0.001))
        if reading.wait_for(1, now, takes) == 0:
            assert level >= 1, (now, level)  # the provider admits what the estimate lets start
            level -= 1
            takes.append((now, 1.0))
    assert len(takes) >= 0.9 * rate * 3.0  # and the estimate does not hold calls back for long


def test_a_reading_counts_from_its_own_request_and_a_late_older_one_changes_nothing():
    provider = ProviderBudget()
    first = provider.started(0, now=0.0)
    provider.started(0, now=0.1)
    provider.started(0, now=0.2)
    headers = parse_rate_limit_headers(_requests(limit=100, remaining=2, reset="10s"))
    assert headers is not None
    assert headers.requests is not None
    rate = headers.requests.refill_per_s
    assert rate is not None
    # The answer to the second request comes at 1.0 s: the 2 were left when it was sent (0.1 s), the one sent
    # after it was taken since, and 0.9 s of refill came meanwhile.
    provider.observe(headers, now=1.0, sent=first + 1)
    assert provider.snapshot(1.0)["remaining_requests"] == int(2 + rate * 0.9 - 1)  # type: ignore[index]
    # The first request's answer comes after it: older, whatever it says.
    late = parse_rate_limit_headers(_requests(limit=100, remaining=90, reset="1s"))
    provider.observe(late, now=1.1, sent=first)  # type: ignore[arg-type]
    assert provider.snapshot(1.0)["remaining_requests"] == int(2 + rate * 0.9 - 1)  # type: ignore[index]


def test_calls_started_since_the_reading_are_spent_from_it():
    provider = ProviderBudget()
    provider.observe(parse_rate_limit_headers(_requests(limit=10, remaining=2, reset="10s")), now=0.0)  # type: ignore[arg-type]
    assert provider.wait_s(0, now=0.0) == 0
    provider.started(0, now=0.0)
    assert provider.wait_s(0, now=0.0) == 0
    provider.started(0, now=0.0)
    # Both remaining requests taken: the next one waits until one request has refilled. The 8 missing come
    # back in 10 s, or as few as 7 (`remaining` is rounded down): the slowest refill is the one counted on.
    assert provider.requests is not None
    assert provider.requests.refill_per_s == pytest.approx(7 / 10, rel=1e-3)
    assert provider.wait_s(0, now=0.0) == pytest.approx(1 / provider.requests.refill_per_s)
    # A new reading replaces the estimate (the provider counts every process's calls).
    provider.observe(parse_rate_limit_headers(_requests(limit=10, remaining=5, reset="5s")), now=0.5)  # type: ignore[arg-type]
    assert provider.wait_s(0, now=0.5) == 0


def test_a_retry_after_holds_every_new_call_until_it_passes():
    provider = ProviderBudget()
    provider.observe(parse_rate_limit_headers({"Retry-After": "3"}), now=10.0)
    assert provider.wait_s(0, now=10.0) == pytest.approx(3.0)
    assert provider.wait_s(0, now=12.0) == pytest.approx(1.0)
    assert provider.wait_s(0, now=13.0) == 0
    assert provider.snapshot(11.0) == {
        "remaining_requests": None,
        "limit_requests": None,
        "remaining_tokens": None,
        "limit_tokens": None,
        "retry_after_s": 2.0,
    }


def test_a_token_budget_holds_a_call_until_its_tokens_fit_and_a_too_big_call_waits_only_for_a_full_budget():
    provider = ProviderBudget()
    headers = {
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "100",
        "x-ratelimit-reset-tokens": "9s",
    }
    provider.observe(parse_rate_limit_headers(headers), now=0.0)
    assert provider.tokens is not None
    rate, level = provider.tokens.refill_per_s, provider.tokens.level
    assert rate == pytest.approx(100, rel=2e-3)  # 900 missing (899-900, rounded) back in 9 s
    assert 100 <= level < 101
    assert provider.wait_s(100, now=0.0) == 0
    assert provider.wait_s(550, now=0.0) == pytest.approx((550 - level) / rate)
    # Never fits: waits for the full 1000.
    assert provider.wait_s(5000, now=0.0) == pytest.approx((1000 - level) / rate)
    provider.started(100, now=0.0)
    assert provider.wait_s(100, now=0.0) == pytest.approx(
        (200 - level) / rate
    )  # the 100 left were just taken


def test_a_stale_reading_holds_nothing_and_no_wait_is_longer_than_the_cap():
    provider = ProviderBudget()
    provider.observe(parse_rate_limit_headers(_requests(limit=None, remaining=0, reset="1h")), now=0.0)
    assert provider.wait_s(0, now=1.0) == LONGEST_WAIT_S
    assert provider.wait_s(0, now=STALE_AFTER_S + 1) == 0
    assert provider.snapshot(STALE_AFTER_S + 1) is None


def test_the_snapshot_shows_the_room_left_now():
    provider = ProviderBudget()
    provider.observe(parse_rate_limit_headers(_requests(limit=101, remaining=41, reset="59s")), now=0.0)
    provider.started(0, now=0.0)
    snapshot = provider.snapshot(30.0)
    assert snapshot is not None
    assert snapshot["limit_requests"] == 101
    # 41 left, 30 s of refill at about one a second, one taken.
    assert snapshot["remaining_requests"] in (69, 70)


def _requests(*, limit: int | None, remaining: int, reset: str) -> dict[str, str]:
    headers = {"x-ratelimit-remaining-requests": str(remaining), "x-ratelimit-reset-requests": reset}
    if limit is not None:
        headers["x-ratelimit-limit-requests"] = str(limit)
    return headers


def test_retry_after_is_read_as_seconds_a_duration_or_an_http_date():
    from email.utils import format_datetime, parsedate_to_datetime

    from mge.concurrency.rate_limits import retry_after_s

    date = "Wed, 21 Oct 2015 07:28:00 GMT"
    now = parsedate_to_datetime(date).timestamp() - 30
    assert retry_after_s("2", now) == 2.0
    assert retry_after_s("1m30s", now) == 90.0
    assert retry_after_s(date, now) == pytest.approx(30.0)
    assert retry_after_s(format_datetime(parsedate_to_datetime(date)), now + 60) == 0.0  # already past
    assert retry_after_s(date, None) is None
    assert retry_after_s("soon", now) is None
    assert parse_rate_limit_headers({"Retry-After": date}, now).retry_after_s == pytest.approx(30.0)  # type: ignore[union-attr]


def _one_key(processes: int, seconds: float, latency_s: float = 0.5) -> tuple[list[int], int]:
    """`processes` processes on one API key, each paced by its own ProviderBudget, against a provider's bucket
    of 40 requests refilled at 20 per second whose answers (after `latency_s`, jittered) report what was left
    when it admitted the request, rounded down as providers do. Returns each process's calls answered, and
    the refusals, after the first second."""
    limit, rate, step = 40, 20.0, 0.005
    rnd = random.Random(3)
    level, now = float(limit), 0.0
    budgets = [ProviderBudget() for _ in range(processes)]
    answers: list[tuple[float, int, int, dict[str, str]]] = []  # (due, process, number, headers)
    answered, refused = [0] * processes, 0

    def reading() -> dict[str, str]:
        return _requests(limit=limit, remaining=int(level), reset=f"{int((limit - level) / rate * 1000)}ms")

    while now < seconds:
        level = min(limit, level + rate * step)
        for process in rnd.sample(range(processes), processes):  # none always first
            budget = budgets[process]
            while budget.wait_s(0, now) == 0:
                number = budget.started(0, now)
                if level >= 1:
                    level -= 1
                    answers.append((now + latency_s * rnd.uniform(0.8, 1.2), process, number, reading()))
                    answered[process] += now > 1.0
                else:
                    refused += now > 1.0
                    refusal = {**reading(), "retry-after": f"{(1 - level) / rate:.3f}"}
                    budget.observe(parse_rate_limit_headers(refusal), now, number)  # type: ignore[arg-type]
        for _, process, number, headers in sorted(a for a in answers if a[0] <= now):
            budgets[process].observe(parse_rate_limit_headers(headers), now, number)  # type: ignore[arg-type]
        answers = [a for a in answers if a[0] > now]
        now += step
    return answered, refused


def test_a_fleet_on_one_key_counts_each_others_calls_from_how_the_readings_fall_short():
    """A reading shows only what the other processes took before its request. Counted as if they took nothing
    since, each process starts calls on room another has already taken, and the provider refuses them."""
    alone, refused_alone = _one_key(1, seconds=11.0)
    fleet, refused_fleet = _one_key(4, seconds=11.0)
    # One process, or four, take the whole refill (20 per second), and share it.
    assert sum(alone) == pytest.approx(20 * 10, rel=0.03)
    assert refused_alone <= 1
    assert sum(fleet) == pytest.approx(20 * 10, rel=0.05), fleet
    assert min(fleet) >= 0.2 * max(fleet), fleet  # none starved
    # Some races are still lost (31 refusals in 10 s here, against 600 when each counted only its own calls).
    assert refused_fleet <= 50, refused_fleet


def test_an_estimate_of_other_processes_ages_out_when_no_reading_comes():
    """Everyone holding back for the others, nobody sends the request whose answer would say they stopped: the
    estimate must fade without readings, or a fleet on one key waits forever (a halved budget did that)."""
    budget = ProviderBudget()
    half = parse_rate_limit_headers(_requests(limit=200, remaining=100, reset="1s"))  # 100 back per second
    budget.observe(half, now=0.0)  # type: ignore[arg-type]
    # A second later its own request finds the budget empty: others took the 100 left and the second's refill.
    number = budget.started(0, now=1.0)
    empty = parse_rate_limit_headers(_requests(limit=200, remaining=0, reset="2s"))
    budget.observe(empty, now=1.0, sent=number)  # type: ignore[arg-type]
    assert budget.wait_s(0, now=1.5) > 0  # the refill goes to the others
    assert budget.wait_s(0, now=1.0 + OTHERS_WINDOW_S + 0.5) == 0
