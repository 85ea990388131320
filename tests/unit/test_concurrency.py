"""Limiter and scaler decisions with a fake clock: no sleeps, no I/O."""

import pytest

from mge.concurrency.limiter import PROBE_AFTER_S, AdaptiveLimiter, FixedLimiter, Outcome, SeedRuleLimiter
from mge.concurrency.replicas import ReplicaBounds
from mge.concurrency.scaler import Observation, ScalerPolicy


def _feed_ok(limiter: AdaptiveLimiter, calls: int, now: float = 0.0) -> None:
    for _ in range(calls):
        limiter.record(Outcome.OK, in_flight=limiter.limit, now=now, latency_s=1.0, tokens=100)


def test_slow_start_doubles_per_limits_worth_of_good_calls():
    limiter = AdaptiveLimiter(minimum=1, maximum=64, initial=2)

    _feed_ok(limiter, 2 + 4 + 8)

    assert limiter.limit == 16


def test_first_overload_ends_slow_start_at_half_and_later_ones_cut_ten_percent():
    limiter = AdaptiveLimiter(minimum=1, maximum=64, initial=20)

    limiter.record(Outcome.OVERLOADED, in_flight=20, now=10.0)
    _feed_ok(limiter, 10, now=11.0)
    limiter.record(Outcome.OVERLOADED, in_flight=11, now=20.0)

    assert limiter.limit == 9  # 20 -> 10 (slow start ends), +1 additively (not doubled) -> 11, x0.9 -> 9
    assert [a.reason for a in limiter.adjustments] == [
        "overloaded (429/5xx/timeout); slow start ends",
        "additive increase",
        "overloaded (429/5xx/timeout)",
    ]


def test_a_burst_of_429s_counts_as_one_decrease():
    limiter = AdaptiveLimiter(minimum=1, maximum=64, initial=30)
    limiter.slow_start = False

    for i in range(10):
        limiter.record(Outcome.OVERLOADED, in_flight=30, now=5.0 + i * 0.1)

    assert limiter.limit == 27


def test_the_limit_only_grows_while_it_is_used():
    limiter = AdaptiveLimiter(minimum=1, maximum=64, initial=8)

    for _ in range(100):
        limiter.record(Outcome.OK, in_flight=2, now=0.0, latency_s=1.0, tokens=100)

    assert limiter.limit == 8


def _warm(limiter: AdaptiveLimiter, calls: int = 40, latency_s: float = 1.0, now: float = 0.0) -> None:
    """Uncongested calls at full use: enough for the baseline to form (it needs BASELINE_CALLS samples)."""
    for _ in range(calls):
        limiter.record(Outcome.OK, in_flight=limiter.limit, now=now, latency_s=latency_s, tokens=100)


def test_latency_per_token_well_above_the_baseline_cuts_the_limit():
    limiter = AdaptiveLimiter(minimum=1, maximum=64, initial=10)
    limiter.slow_start = False
    _warm(limiter)
    before = limiter.limit

    for i in range(20):
        limiter.record(Outcome.OK, in_flight=before, now=5.0 + i * 0.01, latency_s=1.6, tokens=100)

    assert limiter.limit == int(before * 0.9)
    assert limiter.adjustments[-1].reason == "latency per token rose"


def test_latency_a_little_above_the_baseline_holds_the_limit_at_capacity():
    limiter = AdaptiveLimiter(minimum=1, maximum=64, initial=10)
    limiter.slow_start = False
    _warm(limiter)
    before = limiter.limit

    for i in range(200):  # 1.1x: queueing has begun, but not enough to cut
        limiter.record(Outcome.OK, in_flight=before, now=5.0 + i * 0.01, latency_s=1.1, tokens=100)

    # At most one step while the smoothed latency catches up, then no more growth and no cut.
    assert before <= limiter.limit <= before + 1


def test_no_latency_signal_before_the_baseline_has_enough_calls():
    limiter = AdaptiveLimiter(minimum=1, maximum=64, initial=8)
    limiter.slow_start = False
    limiter.record(Outcome.OK, in_flight=8, now=0.0, latency_s=0.5, tokens=100)  # one lucky fast answer

    for i in range(8):
        limiter.record(Outcome.OK, in_flight=8, now=1.0 + i, latency_s=1.0, tokens=100)

    assert limiter.baseline_s_per_token is None
    assert limiter.limit == 9  # grew additively; the early fast call did not make the rest look slow


def test_latency_is_compared_per_output_token():
    limiter = AdaptiveLimiter(minimum=1, maximum=64, initial=10)
    limiter.slow_start = False
    _warm(limiter)
    before = limiter.limit

    for i in range(50):  # twice as long answers, twice the latency: the same speed
        limiter.record(Outcome.OK, in_flight=before, now=5.0 + i * 0.01, latency_s=2.0, tokens=200)

    assert limiter.limit > before


def test_a_long_hold_drains_briefly_to_re_measure_the_baseline_then_restores():
    limiter = AdaptiveLimiter(minimum=1, maximum=64, initial=20)
    limiter.slow_start = False
    _warm(limiter)
    now = 1.0
    for _ in range(40):  # settles just past capacity
        limiter.record(Outcome.OK, in_flight=limiter.limit, now=now, latency_s=1.1, tokens=100)
        now += 0.5
    held = limiter.limit
    while limiter.limit == held and now < 1.0 + 3 * PROBE_AFTER_S:
        limiter.record(Outcome.OK, in_flight=held, now=now, latency_s=1.1, tokens=100)
        now += 0.5
    assert limiter.limit == int(held * 0.75)
    assert limiter.adjustments[-1].reason == "draining briefly to re-measure the baseline"

    for _ in range(30):  # the drained limit sees uncongested calls for two round trips
        limiter.record(Outcome.OK, in_flight=limiter.limit, now=now, latency_s=1.0, tokens=100)
        now += 0.5

    assert held <= limiter.limit <= held + 1
    assert "baseline re-measured; limit restored" in [a.reason for a in limiter.adjustments]


def test_bounds_hold():
    limiter = AdaptiveLimiter(minimum=2, maximum=4, initial=2)
    _feed_ok(limiter, 100)
    assert limiter.limit == 4
    for i in range(50):
        limiter.record(Outcome.OVERLOADED, in_flight=4, now=i * 10.0)
    assert limiter.limit == 2


def test_invalid_bounds_are_rejected_naming_them():
    with pytest.raises(ValueError, match=r"minimum \(5\) <= initial \(2\)"):
        AdaptiveLimiter(minimum=5, maximum=10, initial=2)


def _seed(seed: SeedRuleLimiter, latency_s: float, now: float, in_flight: int = 100) -> None:
    seed.record(Outcome.OK, in_flight=in_flight, now=now, latency_s=latency_s)


def test_seed_rule_moves_once_per_period():
    seed = SeedRuleLimiter(limit=100)
    _seed(seed, 3.0, now=0.0)
    _seed(seed, 3.0, now=30.0)
    assert seed.limit == 90
    _seed(seed, 0.5, now=40.0)
    assert seed.limit == 90
    _seed(seed, 0.5, now=60.0)
    assert seed.limit == 94


def test_seed_rule_grows_only_when_more_than_80_percent_is_used_and_never_below_20():
    idle = SeedRuleLimiter(limit=100)
    _seed(idle, 0.5, now=0.0, in_flight=50)
    _seed(idle, 0.5, now=30.0, in_flight=50)
    stuck = SeedRuleLimiter(limit=19)
    _seed(stuck, 0.5, now=0.0, in_flight=19)
    _seed(stuck, 0.5, now=30.0, in_flight=19)

    assert (idle.limit, stuck.limit) == (100, 19)  # floor(19 x 1.05) = 19, as the seed specifies


def test_fixed_limiter_never_moves():
    fixed = FixedLimiter(12)
    fixed.record(Outcome.OVERLOADED, in_flight=12, now=0.0)

    assert fixed.limit == 12


def _scaler(minimum=0, maximum=20):
    return ScalerPolicy(ReplicaBounds(minimum, maximum, atoms_per_executor=8))


def test_scale_up_is_fast_but_at_most_double_or_plus_four():
    decision = _scaler().decide(2, Observation(ready_atoms=200, running_atoms=16), now=0)

    assert decision.replicas == 6  # max(2 x 2, 2 + 4), though demand is 20


def test_scale_down_waits_for_the_stabilization_window_and_steps_at_most_25_percent():
    scaler = _scaler()
    busy, idle = Observation(ready_atoms=80, running_atoms=0), Observation(ready_atoms=0, running_atoms=8)

    assert scaler.decide(10, busy, now=0).replicas == 10
    assert scaler.decide(10, idle, now=100).replicas == 10  # the busy recommendation is still in the window
    assert scaler.decide(10, idle, now=301).replicas == 8  # 25% of 10, rounded down, per step
    assert scaler.decide(8, idle, now=331).replicas == 6


def test_unreadable_metrics_hold_the_last_decision():
    decision = _scaler().decide(7, None, now=0)

    assert (decision.replicas, decision.reason) == (7, "holding: metrics unavailable")


def test_no_scale_up_while_the_llm_is_already_slow():
    decision = _scaler().decide(4, Observation(ready_atoms=100, running_atoms=32, llm_p95_s=5.0), now=0)

    assert decision.replicas == 4
    assert "LLM p95" in decision.reason


from mge.concurrency.queue import BackpressureQueue  # noqa: E402


def test_queue_serves_the_most_critical_atom_of_a_plan_first_then_fifo():
    queue: BackpressureQueue[str] = BackpressureQueue(max_size=10, timeout_s=60)
    queue.push("leaf", plan="p", critical_path=1, plan_priority=0, now=0)
    queue.push("root", plan="p", critical_path=5, plan_priority=0, now=1)
    queue.push("leaf-2", plan="p", critical_path=1, plan_priority=0, now=2)

    assert [queue.pop(now=3).item for _ in range(3)] == ["root", "leaf", "leaf-2"]


def test_queue_takes_turns_so_a_big_plan_cannot_starve_a_small_one():
    queue: BackpressureQueue[str] = BackpressureQueue(max_size=100, timeout_s=60)
    for i in range(10):
        queue.push(f"big-{i}", plan="big", critical_path=9, plan_priority=0, now=0)
    queue.push("small", plan="small", critical_path=1, plan_priority=0, now=1)

    served = [queue.pop(now=2).item for _ in range(3)]

    assert "small" in served[:2]


def test_higher_plan_priority_goes_first():
    queue: BackpressureQueue[str] = BackpressureQueue(max_size=10, timeout_s=60)
    queue.push("normal", plan="a", critical_path=1, plan_priority=0, now=0)
    queue.push("urgent", plan="b", critical_path=1, plan_priority=10, now=1)

    assert queue.pop(now=2).item == "urgent"


def test_full_queue_drops_and_counts():
    queue: BackpressureQueue[str] = BackpressureQueue(max_size=1, timeout_s=60)

    assert queue.push("a", plan="p", critical_path=1, plan_priority=0, now=0)
    assert not queue.push("b", plan="p", critical_path=1, plan_priority=0, now=0)
    assert (queue.size, queue.drops) == (1, 1)


def test_expired_items_time_out_instead_of_getting_a_slot():
    queue: BackpressureQueue[str] = BackpressureQueue(max_size=10, timeout_s=5)
    queue.push("old", plan="p", critical_path=9, plan_priority=0, now=0)
    queue.push("new", plan="p", critical_path=1, plan_priority=0, now=4)

    popped = queue.pop(now=6)

    assert (popped.item, popped.waited_s) == ("new", 2)
    assert (queue.timeouts, queue.size) == (1, 0)
