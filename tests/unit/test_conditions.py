"""Condition setter: transition time moves only on a status flip; reports whether anything changed."""

from datetime import UTC, datetime, timedelta

from mge.models.conditions import Condition, ConditionStatus, ConditionType, Reason, set_condition

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _set(conditions, status, reason, message="m", now=T0, generation=1):
    return set_condition(
        conditions,
        type_=ConditionType.PLANNED,
        status=status,
        reason=reason,
        message=message,
        generation=generation,
        now=now,
    )


def test_new_condition_is_added():
    conditions: list[Condition] = []

    assert _set(conditions, ConditionStatus.TRUE, Reason.PLANNED) is True
    assert conditions[0].last_transition_time == T0


def test_same_condition_again_is_not_a_change():
    conditions: list[Condition] = []
    _set(conditions, ConditionStatus.TRUE, Reason.PLANNED)

    assert _set(conditions, ConditionStatus.TRUE, Reason.PLANNED, now=T0 + timedelta(hours=1)) is False
    assert conditions[0].last_transition_time == T0


def test_message_change_keeps_the_transition_time():
    conditions: list[Condition] = []
    _set(conditions, ConditionStatus.TRUE, Reason.PLANNED)

    assert _set(conditions, ConditionStatus.TRUE, Reason.PLANNED, "new", now=T0 + timedelta(hours=1)) is True
    assert (conditions[0].message, conditions[0].last_transition_time) == ("new", T0)


def test_status_flip_moves_the_transition_time():
    conditions: list[Condition] = []
    _set(conditions, ConditionStatus.TRUE, Reason.PLANNED)
    later = T0 + timedelta(hours=1)

    _set(conditions, ConditionStatus.FALSE, Reason.DEPENDENCY_CYCLE, now=later, generation=2)

    assert (conditions[0].status, conditions[0].last_transition_time, conditions[0].observed_generation) == (
        ConditionStatus.FALSE,
        later,
        2,
    )
