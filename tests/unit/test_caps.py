"""Budget decisions from plain numbers: reservations, cap crossings, projections, overrides."""

from decimal import Decimal as D  # noqa: N817 - short amounts keep the tables readable

import pytest

from mge.cost.caps import (
    BudgetLimits,
    BudgetState,
    OverrideRejected,
    budget_state,
    check_override,
    projected_total,
    reservation_decision,
)
from mge.cost.pricing import ModelPrice, worst_case_call_cost

LIMITS = BudgetLimits(limit_usd=D(200), soft_cap_percent=D(70), hard_cap_percent=D(100))


def test_caps_are_shares_of_the_limit():
    assert (LIMITS.soft_cap_usd, LIMITS.hard_cap_usd) == (D(140), D(200))


@pytest.mark.parametrize(
    ("spent", "reserved", "amount", "granted"),
    [
        ("0", "0", "200", True),
        ("150", "49", "1", True),
        ("150", "49", "1.01", False),
        ("200", "0", "0.01", False),
    ],
)
def test_reservation_is_granted_only_within_the_hard_cap(spent, reserved, amount, granted):
    assert reservation_decision(D(spent), D(reserved), D(amount), LIMITS).granted is granted


@pytest.mark.parametrize(
    ("spent", "reserved", "amount", "wait"),
    [
        ("0", "120", "120", True),  # the first call may settle low: this one waits for it
        ("150", "49", "1.01", True),
        ("150", "0", "50.01", False),  # would not fit with nothing outstanding: the hard cap
        ("150", "30", "50.01", False),  # outstanding calls can only add to spend: still the hard cap
        ("0", "0", "1", False),  # granted
    ],
)
def test_refusal_for_calls_in_flight_is_a_wait_not_the_hard_cap(spent, reserved, amount, wait):
    assert reservation_decision(D(spent), D(reserved), D(amount), LIMITS).wait is wait


def test_refusal_reports_the_headroom_left():
    assert reservation_decision(D(190), D(5), D(10), LIMITS).headroom_usd == D(5)


@pytest.mark.parametrize(
    ("spent", "exhausted", "state"),
    [
        ("10", False, BudgetState.WITHIN),
        ("140", False, BudgetState.SOFT_CAP),
        ("150", True, BudgetState.HARD_CAP),
    ],
)
def test_budget_state(spent, exhausted, state):
    assert budget_state(D(spent), exhausted, LIMITS) is state


def test_projection_uses_the_observed_mean_then_the_estimate():
    assert projected_total(D(30), finished_atoms=3, remaining_atoms=7, estimate_per_atom=D(1)) == D(100)
    assert projected_total(D(0), finished_atoms=0, remaining_atoms=10, estimate_per_atom=D("0.5")) == D(5)


def test_override_below_what_is_spent_or_reserved_is_rejected_naming_the_field():
    with pytest.raises(OverrideRejected, match=r"spec\.budget\.override\.limitUSD \(\$150\.00\).*\$160\.00"):
        check_override(D(150), spent=D(150), reserved=D(10))


def test_worst_case_call_cost_pads_the_prompt_and_counts_every_completion_token():
    price = ModelPrice(input=D(1), cached_input=D(1), output=D(2))

    cost = worst_case_call_cost([1000, 1000], max_tokens=500, price=price)

    assert cost == (D(2200 + 24) * D(1) + D(500) * D(2)) / D(1_000_000)
