"""The fleet-wide ramp's rules: where a plan's allowance starts, how it grows, when the ramp ends."""

import pytest

from mge.concurrency.ramp import INITIAL_ALLOWANCE, RampPolicy, restart_allowance


def test_each_answer_adds_one_until_the_ramp_would_no_longer_limit():
    policy = RampPolicy(ends_at=6)
    allowances = [INITIAL_ALLOWANCE]
    while (grown := policy.grown(allowances[-1])) is not None:
        allowances.append(grown)

    assert allowances == [2, 3, 4, 5]  # 6 is where it ends: from then on only the executors' limits apply


def test_a_restarted_ramp_keeps_what_already_runs():
    assert restart_allowance(running=0) == INITIAL_ALLOWANCE
    assert restart_allowance(running=12) == 12


def test_an_end_that_would_not_ramp_is_rejected_naming_it():
    with pytest.raises(ValueError, match="ends_at must be > 2 \\(got ends_at=2\\)"):
        RampPolicy(ends_at=2)
