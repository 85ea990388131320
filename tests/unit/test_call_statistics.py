"""Windowed percentiles and the fleet's signals from executors' own reports, with a fake clock."""

import pytest

from mge.concurrency.statistics import CallStatistics, CallSummary, RecentSamples, fleet_signals


def test_p95_is_the_nearest_rank_of_the_window():
    samples = RecentSamples(window_s=60)
    for i in range(1, 101):
        samples.add(i / 100, now=0)

    assert samples.percentile(0.95, now=1) == pytest.approx(0.95)
    assert samples.percentile(1.0, now=1) == pytest.approx(1.0)


def test_samples_older_than_the_window_no_longer_count():
    samples = RecentSamples(window_s=60)
    samples.add(9.0, now=0)  # a slow call a while ago
    samples.add(0.5, now=50)

    assert samples.percentile(0.95, now=59) == 9.0
    assert samples.percentile(0.95, now=61) == 0.5
    assert samples.percentile(0.95, now=200) is None


def test_sample_count_is_bounded():
    samples = RecentSamples(window_s=60, max_samples=3)
    for value in (5.0, 1.0, 1.0, 1.0):
        samples.add(value, now=0)

    assert samples.values(now=0) == [1.0, 1.0, 1.0]


def test_bad_window_or_quantile_is_rejected():
    with pytest.raises(ValueError, match="window_s"):
        RecentSamples(window_s=0)
    with pytest.raises(ValueError, match="quantile"):
        RecentSamples().percentile(95, now=0)


def test_summary_counts_requests_and_errors_in_the_window():
    statistics = CallStatistics(window_s=60)
    for i in range(10):
        statistics.llm_latency.add(1.0 + i, now=i)
        statistics.llm_failures.add(1.0 if i < 2 else 0.0, now=i)
    statistics.db_latency.add(0.02, now=5)

    summary = statistics.summary(now=10)

    assert summary == CallSummary(llm_p95_s=10.0, db_p95_s=0.02, llm_requests=10, llm_errors=2)


def test_fleet_p95_is_the_slowest_executors_and_errors_are_weighted_by_requests():
    fleet = fleet_signals(
        [
            CallSummary(llm_p95_s=1.2, db_p95_s=0.01, llm_requests=90, llm_errors=0),
            CallSummary(llm_p95_s=3.5, db_p95_s=0.2, llm_requests=10, llm_errors=10),
            CallSummary(llm_p95_s=None, db_p95_s=None, llm_requests=0, llm_errors=0),  # idle
        ]
    )

    assert (fleet.llm_p95_s, fleet.db_p95_s) == (3.5, 0.2)
    assert fleet.error_rate == pytest.approx(0.10)  # 10 of 100, not the mean of 0% and 100%


def test_too_few_requests_give_no_error_rate_reading():
    fleet = fleet_signals([CallSummary(0.8, 0.01, llm_requests=3, llm_errors=1)])

    assert fleet.error_rate is None
    assert fleet.llm_p95_s == 0.8


def test_no_reports_are_no_readings():
    assert fleet_signals([]) == fleet_signals([CallSummary(None, None, 0, 0)])
    assert fleet_signals([]).llm_p95_s is None
