"""Circuit breaker per LLM endpoint: stop sending work to an endpoint that is down, probe it, resume by itself."""

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

# Calls that failed for the endpoint's reasons in a row (each after its own HTTP retries) before it is
# called down: one failing call may be bad luck, three in a row across atoms is an outage.
FAILURES_TO_OPEN: Final = 3
FIRST_PROBE_AFTER_S: Final = 2.0
LONGEST_PROBE_WAIT_S: Final = 60.0


class CircuitState(StrEnum):
    CLOSED = "closed"  # calls flow
    OPEN = "open"  # the endpoint is down: no new work until the next probe
    PROBING = "probing"  # one trial call is out; its answer closes or re-opens the circuit


@dataclass(frozen=True, slots=True)
class EndpointReport:
    """What an executor publishes of its circuit (`down_for_s` rather than a time: no clock here)."""

    endpoint: str | None
    circuit: str
    last_error: str | None
    down_for_s: float | None


@dataclass
class EndpointCircuit:
    """What one executor believes of its endpoint. Times are monotonic seconds, passed in (no clock here)."""

    endpoint: str
    failures_to_open: int = FAILURES_TO_OPEN
    first_probe_after_s: float = FIRST_PROBE_AFTER_S
    longest_probe_wait_s: float = LONGEST_PROBE_WAIT_S
    state: CircuitState = CircuitState.CLOSED
    failures_in_a_row: int = 0
    last_error: str = ""
    down_since: float | None = None
    next_probe_at: float = 0.0
    probe_wait_s: float = 0.0

    def calls_allowed(self, now: float) -> int | None:
        """How many new calls may start: None for no limit, 1 for the trial call when a probe is due, else 0.
        Asking when a probe is due starts it: the caller must make that one call and report its outcome."""
        if self.state is CircuitState.CLOSED:
            return None
        if self.state is CircuitState.OPEN and now >= self.next_probe_at:
            self.state = CircuitState.PROBING
            return 1
        return 0

    def succeeded(self) -> bool:
        """An answer came back (whatever its content). True if this closed an open circuit."""
        recovered = self.state is not CircuitState.CLOSED
        self.state = CircuitState.CLOSED
        self.failures_in_a_row = 0
        self.down_since = None
        self.probe_wait_s = 0.0
        return recovered

    def failed(self, error: str, now: float) -> bool:
        """A call failed for the endpoint's reasons (5xx, timeouts, refused connections, a refused key).
        True if this opened the circuit."""
        self.last_error = error
        self.failures_in_a_row += 1
        if self.state is CircuitState.CLOSED:
            if self.failures_in_a_row < self.failures_to_open:
                return False
            self.down_since = now
            self._open(self.first_probe_after_s, now)
            return True
        if self.state is CircuitState.PROBING:  # the trial failed: wait twice as long for the next one
            self._open(min(self.longest_probe_wait_s, self.probe_wait_s * 2), now)
        # Open already: calls that were out when it opened keep failing; the next trial stays as planned.
        return False

    def _open(self, wait_s: float, now: float) -> None:
        self.state = CircuitState.OPEN
        self.probe_wait_s = wait_s
        self.next_probe_at = now + wait_s

    def report(self, now: float) -> EndpointReport:
        if self.state is CircuitState.CLOSED or self.down_since is None:
            return EndpointReport(self.endpoint, str(CircuitState.CLOSED), None, None)
        return EndpointReport(self.endpoint, str(self.state), self.last_error, now - self.down_since)

    def cancel_trial(self) -> None:
        """The trial call was never made (no atom to claim, a cache hit, budget): the next ask may start one."""
        if self.state is CircuitState.PROBING:
            self.state = CircuitState.OPEN

    def describe(self, now: float) -> str:
        """One line for logs and the live view."""
        if self.state is CircuitState.CLOSED:
            return f"{self.endpoint}: up"
        since = now - (self.down_since if self.down_since is not None else now)
        probe = (
            "a trial call is out"
            if self.state is CircuitState.PROBING
            else f"next trial call in {max(0.0, self.next_probe_at - now):.0f}s"
        )
        return f"{self.endpoint}: down for {since:.0f}s ({probe}); last error: {self.last_error}"
