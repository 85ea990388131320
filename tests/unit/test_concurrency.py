"""Seed-rule and fixed limiters, the replica scaler and the backpressure queue, with a fake clock: no sleeps, no I/O.

The adaptive limiter has its own file, test_limiter.py.
"""

from mge.concurrency.limiter import FixedLimiter, Outcome, SeedRuleLimiter
from mge.concurrency.replicas import ReplicaBounds
from mge.concurrency.scaler import Observation, ScalerPolicy


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


def test_scale_to_zero_wakes_up_in_the_same_steps_not_at_once():
    """minReplicas 0 with a full queue: +4 from zero, then x2 or +4 per period, up to the maximum."""
    scaler = ScalerPolicy(ReplicaBounds(0, 10, atoms_per_executor=8))
    queued = Observation(ready_atoms=10_000, running_atoms=0, idle_executors=0)

    replicas, steps = 0, []
    for period in range(4):
        replicas = scaler.decide(replicas, queued, now=period * 30).replicas
        steps.append(replicas)

    assert steps == [4, 8, 10, 10]


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
