"""The executor's report schedule: soon while its fleet forms or changes, then every heartbeat."""

from mge.concurrency.heartbeat import FIRST_REPORT_AGAIN_S, next_report_in


def _schedule(changes: list[bool], heartbeat_s: float) -> list[float]:
    delays, last = [], None
    for changed in changes:
        last = next_report_in(last, changed, heartbeat_s)
        delays.append(last)
    return delays


def test_reports_come_soon_after_the_first_and_double_up_to_the_heartbeat():
    assert _schedule([False] * 6, heartbeat_s=15.0) == [1.0, 2.0, 4.0, 8.0, 15.0, 15.0]


def test_a_fleet_that_changed_size_is_read_again_soon():
    # Settled at the heartbeat, then a scale-up is seen: back to the first delay, and doubling again.
    assert _schedule([False] * 5 + [True, False, False], heartbeat_s=15.0)[4:] == [15.0, 1.0, 2.0, 4.0]


def test_a_heartbeat_shorter_than_the_first_delay_is_never_exceeded():
    assert FIRST_REPORT_AGAIN_S > 0.2
    assert _schedule([False, True, False], heartbeat_s=0.2) == [0.2, 0.2, 0.2]
