"""Reading a provider's rate-limit headers and deciding when the next call may start (pure, no I/O)."""

import pytest

from mge.concurrency.rate_limits import (
    LONGEST_WAIT_S,
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
    budget = Budget(limit=60, remaining=0, reset_s=60.0)  # one request back per second
    assert budget.room(0.0) == 0
    assert budget.room(30.0) == pytest.approx(30)
    assert budget.room(61.0) == 60  # never past the limit
    assert budget.wait_for(1, spent=0, elapsed_s=0.0) == pytest.approx(1.0)
    assert budget.wait_for(1, spent=9, elapsed_s=4.0) == pytest.approx(6.0)
    # Taken past a full budget: the wait goes on past the reset time, one refill per request.
    assert Budget(limit=1, remaining=0, reset_s=1.0).wait_for(1, spent=5, elapsed_s=0.0) == pytest.approx(6.0)
    # A full budget reports no reset: a per-minute budget refills at its limit per minute.
    assert Budget(limit=60, remaining=60, reset_s=0.0).wait_for(1, spent=60, elapsed_s=0.0) == pytest.approx(
        1.0
    )
    # Without a limit the reading is all there is until the reset.
    assert Budget(None, 0, 5.0).wait_for(1, spent=0, elapsed_s=1.0) == pytest.approx(4.0)


def test_calls_started_since_the_reading_are_spent_from_it():
    provider = ProviderBudget()
    provider.observe(parse_rate_limit_headers(_requests(limit=10, remaining=2, reset="10s")), now=0.0)
    assert provider.wait_s(0, now=0.0) == 0
    provider.started(0)
    assert provider.wait_s(0, now=0.0) == 0
    provider.started(0)
    # Both remaining requests taken: the next one waits until one request has refilled (8 over 10 s).
    assert provider.wait_s(0, now=0.0) == pytest.approx(10 / 8)
    # A new reading replaces the estimate (the provider counts every process's calls).
    provider.observe(parse_rate_limit_headers(_requests(limit=10, remaining=5, reset="5s")), now=0.5)
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
    assert provider.wait_s(100, now=0.0) == 0
    assert provider.wait_s(550, now=0.0) == pytest.approx(4.5)  # 100 + 900 * t / 9 = 550
    assert provider.wait_s(5000, now=0.0) == pytest.approx(9.0)  # never fits: waits for the full 1000
    provider.started(100)
    assert provider.wait_s(100, now=0.0) == pytest.approx(1.0)  # the 100 left were just taken


def test_a_stale_reading_holds_nothing_and_no_wait_is_longer_than_the_cap():
    provider = ProviderBudget()
    provider.observe(parse_rate_limit_headers(_requests(limit=None, remaining=0, reset="1h")), now=0.0)
    assert provider.wait_s(0, now=1.0) == LONGEST_WAIT_S
    assert provider.wait_s(0, now=STALE_AFTER_S + 1) == 0
    assert provider.snapshot(STALE_AFTER_S + 1) is None


def test_the_snapshot_shows_the_room_left_now():
    provider = ProviderBudget()
    provider.observe(parse_rate_limit_headers(_requests(limit=100, remaining=40, reset="60s")), now=0.0)
    provider.started(0)
    snapshot = provider.snapshot(30.0)
    assert snapshot is not None
    assert snapshot["limit_requests"] == 100
    assert snapshot["remaining_requests"] == 40 + 30 - 1


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
