"""Scale-down removes idle executors only, and ranks pods so the ReplicaSet deletes idle ones first."""

from mge.concurrency.replicas import ReplicaBounds
from mge.concurrency.scale_down import cost_patches, deletion_costs, idle_executors
from mge.concurrency.scaler import Observation, ScalerPolicy

IDLE_QUEUE = Observation(ready_atoms=0, running_atoms=0)


def _scaler():
    return ScalerPolicy(ReplicaBounds(0, 20, atoms_per_executor=8))


def _after_window(scaler, current, observed):
    scaler.decide(current, observed, now=0)
    return scaler.decide(current, observed, now=301)


def test_scale_down_removes_no_more_executors_than_are_idle():
    observed = Observation(ready_atoms=0, running_atoms=4, idle_executors=1)

    decision = _after_window(_scaler(), 10, observed)

    assert decision.replicas == 9  # demand is 1 and 25% of 10 would be 2, but only 1 executor is idle
    assert "only 1 idle executors" in decision.reason


def test_scale_down_holds_while_every_executor_is_busy():
    observed = Observation(ready_atoms=0, running_atoms=10, idle_executors=0)

    decision = _after_window(_scaler(), 10, observed)

    assert (decision.replicas, decision.reason) == (
        10,
        "holding: would scale down to 8, but no executor is idle",
    )


def test_enough_idle_executors_leave_the_25_percent_step_in_charge():
    observed = Observation(ready_atoms=0, running_atoms=0, idle_executors=10)

    assert _after_window(_scaler(), 10, observed).replicas == 8


def test_unknown_idle_count_does_not_limit_scale_down():
    assert _after_window(_scaler(), 10, IDLE_QUEUE).replicas == 8


def test_idle_count_does_not_slow_scale_up():
    observed = Observation(ready_atoms=80, running_atoms=0, idle_executors=0)

    assert _scaler().decide(2, observed, now=0).replicas == 6


def test_idle_executors_are_replicas_minus_those_holding_atoms():
    assert idle_executors(5, {"ex-a": 3, "ex-b": 0, "ex-c": 1}) == 3
    assert idle_executors(1, {"ex-a": 3, "ex-b": 2}) == 0  # reports of pods already gone over-count busy


def test_idle_pods_cost_least_and_busy_ones_by_atoms_held():
    costs = deletion_costs(["ex-a", "ex-b", "ex-new"], {"ex-a": 5, "ex-b": 0, "gone": 9})

    assert costs == {"ex-a": 5, "ex-b": 0, "ex-new": 0}


def test_only_pods_whose_cost_changed_are_patched():
    patches = cost_patches({"ex-a": "5", "ex-b": None, "ex-c": "2"}, {"ex-a": 5, "ex-b": 0, "ex-c": 0})

    assert patches == {"ex-b": "0", "ex-c": "0"}
