"""Per-Masterplan ramp-up in an executor, with a fake clock: a new plan starts small and doubles."""

import pytest

from mge.concurrency.ramp import PlanRamp


def _grow(ramp, plan, now):
    ramp.answered(plan, now)
    return ramp.allowance(plan, now)


def test_a_plan_the_executor_has_not_seen_gets_the_initial_allowance():
    ramp = PlanRamp(maximum=16, initial=2)

    assert ramp.room({}, now=0) == {}  # unknown plans: the caller uses new_plan_allowance
    assert ramp.new_plan_allowance == 2
    assert ramp.allowance("new", now=0) == 2


def test_allowance_doubles_each_step_after_an_answer_up_to_the_maximum():
    ramp = PlanRamp(maximum=16, initial=2, step_s=2.0)
    ramp.claimed("big", now=0)

    assert [_grow(ramp, "big", t) for t in (1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0)] == [2, 4, 4, 8, 16, 16, 16]


def test_no_growth_without_an_answer_since_the_last_doubling():
    ramp = PlanRamp(maximum=16, initial=2, step_s=2.0)
    ramp.claimed("failing", now=0)

    assert ramp.allowance("failing", now=60) == 2  # its calls never answered: no escalation


def test_room_is_allowance_minus_atoms_held():
    ramp = PlanRamp(maximum=8, initial=2, step_s=1.0)
    ramp.claimed("old", now=0)
    for t in (1, 2, 3):
        _grow(ramp, "old", t)  # 2 -> 4 -> 8
    ramp.claimed("new", now=3)

    assert ramp.room({"old": 5, "new": 2}, now=3) == {"old": 3, "new": 0}


def test_a_running_plan_keeps_its_share_when_a_new_plan_arrives():
    ramp = PlanRamp(maximum=8, initial=2, step_s=1.0)
    ramp.claimed("old", now=0)
    for t in (1, 2):
        _grow(ramp, "old", t)
    ramp.claimed("new", now=2)

    assert (ramp.allowance("old", now=2), ramp.allowance("new", now=2)) == (8, 2)


def test_jitter_delays_the_first_doubling():
    ramp = PlanRamp(maximum=8, initial=2, step_s=2.0)
    ramp.claimed("a", now=0, jitter_s=0.0)
    ramp.claimed("b", now=0, jitter_s=1.5)

    assert (_grow(ramp, "a", 2.0), _grow(ramp, "b", 2.0)) == (4, 2)
    assert _grow(ramp, "b", 3.5) == 4


def test_a_plan_idle_past_the_forget_time_ramps_again():
    ramp = PlanRamp(maximum=8, initial=2, step_s=1.0, forget_after_s=60)
    ramp.claimed("p", now=0)
    _grow(ramp, "p", 1)

    assert ramp.room({"p": 0}, now=30) == {"p": 4}
    assert ramp.room({"p": 0}, now=100) == {}  # forgotten: starts at the initial allowance again


def test_a_plan_still_holding_atoms_is_never_forgotten():
    ramp = PlanRamp(maximum=8, initial=2, step_s=1.0, forget_after_s=60)
    ramp.claimed("p", now=0)

    assert ramp.room({"p": 2}, now=500) == {"p": 0}


def test_initial_above_the_maximum_is_clamped_and_bad_values_rejected():
    assert PlanRamp(maximum=1, initial=2).new_plan_allowance == 1
    with pytest.raises(ValueError, match="step_s"):
        PlanRamp(maximum=4, step_s=0)
