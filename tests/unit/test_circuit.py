"""The LLM endpoint circuit: when it opens, how it probes with backoff, when it closes."""

import pytest

from mge.concurrency.circuit import CircuitState, EndpointCircuit


def _circuit() -> EndpointCircuit:
    return EndpointCircuit(
        "https://llm.example/v1", failures_to_open=3, first_probe_after_s=2, longest_probe_wait_s=8
    )


def test_failures_below_the_threshold_or_broken_by_a_success_keep_it_closed():
    circuit = _circuit()
    assert not circuit.failed("HTTP 503", now=0)
    assert not circuit.failed("HTTP 503", now=1)
    circuit.succeeded()
    assert not circuit.failed("HTTP 503", now=2)
    assert not circuit.failed("HTTP 503", now=3)
    assert circuit.state is CircuitState.CLOSED
    assert circuit.calls_allowed(now=3) is None


def test_the_third_failure_in_a_row_opens_it_and_no_call_starts_until_the_probe_is_due():
    circuit = _circuit()
    opened = [circuit.failed("HTTP 503", now=t) for t in (0, 1, 2)]

    assert opened == [False, False, True]
    assert circuit.state is CircuitState.OPEN
    assert circuit.down_since == 2
    assert circuit.calls_allowed(now=3.9) == 0
    assert circuit.calls_allowed(now=4.0) == 1  # one trial call
    assert circuit.state is CircuitState.PROBING
    assert circuit.calls_allowed(now=4.1) == 0  # not a second one while it is out


@pytest.mark.parametrize(
    ("failed_trials", "next_wait"),
    [(1, 4), (2, 8), (3, 8)],  # doubling, capped at the longest wait
)
def test_each_failed_trial_doubles_the_wait_up_to_the_longest(failed_trials, next_wait):
    circuit = _circuit()
    for t in (0, 1, 2):
        circuit.failed("connection refused", now=t)
    now = 2.0
    for _ in range(failed_trials):
        now = circuit.next_probe_at
        assert circuit.calls_allowed(now) == 1
        assert not circuit.failed("connection refused", now)
    assert circuit.probe_wait_s == next_wait
    assert circuit.next_probe_at == now + next_wait


def test_calls_still_out_when_it_opened_do_not_push_the_trial_back():
    circuit = _circuit()
    for t in (0, 1, 2):
        circuit.failed("HTTP 502", now=t)
    circuit.failed("HTTP 502", now=3)
    circuit.failed("HTTP 502", now=3.5)
    assert circuit.next_probe_at == 4
    assert circuit.last_error == "HTTP 502"


def test_an_answer_closes_it_and_says_it_recovered():
    circuit = _circuit()
    for t in (0, 1, 2):
        circuit.failed("HTTP 503", now=t)
    circuit.calls_allowed(now=4)

    assert circuit.succeeded() is True
    assert circuit.state is CircuitState.CLOSED
    assert circuit.calls_allowed(now=4) is None
    assert circuit.succeeded() is False  # already closed: nothing recovered
    # Down again later: the backoff starts over from the first wait.
    for t in (10, 11, 12):
        circuit.failed("HTTP 503", now=t)
    assert circuit.next_probe_at == 14


def test_it_describes_itself_for_the_live_view():
    circuit = _circuit()
    assert circuit.describe(now=0) == "https://llm.example/v1: up"
    for t in (0, 1, 2):
        circuit.failed("HTTP 503: overloaded", now=t)
    assert circuit.describe(now=3) == (
        "https://llm.example/v1: down for 1s (next trial call in 1s); last error: HTTP 503: overloaded"
    )
