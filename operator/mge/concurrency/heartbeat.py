"""When an executor reports next: soon while its fleet is forming or changing, every heartbeat once it holds."""

from typing import Final

# Executors started together count each other only once each has reported: the first reports see part of
# the fleet, so the next one comes after this, and sooner again whenever the count moved.
FIRST_REPORT_AGAIN_S: Final = 1.0


def next_report_in(last_delay_s: float | None, fleet_changed: bool, heartbeat_s: float) -> float:
    """Seconds to the next report: FIRST_REPORT_AGAIN_S after the first one or a change in the fleet's size,
    then twice the last delay, up to `heartbeat_s`."""
    if last_delay_s is None or fleet_changed:
        return min(FIRST_REPORT_AGAIN_S, heartbeat_s)
    return min(2 * last_delay_s, heartbeat_s)
