"""Per-Masterplan ramp-up in an executor: a plan new to it starts with a few atoms at once and grows.

Pure, time and jitter passed in. Without it a newly applied big plan would get the executor's full
concurrency in one claim and hit the LLM with it at once, while the limiter's slow start only protects
a freshly started executor. A plan's allowance (atoms of it this executor holds at once) starts at
`initial` and doubles at most every `step_s` seconds (plus the plan's jitter, so plans applied together
do not double in the same instant), and only after one of its LLM calls answered since the last
doubling: a plan whose calls fail does not escalate. Plans already running keep their allowance; a
plan idle for `forget_after_s` ramps again when it returns (a resumed plan is a new surge too).
"""

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Plan = TypeVar("Plan", bound=Hashable)


@dataclass
class _PlanState:
    allowance: int
    next_growth_at: float
    answered_since_growth: int = 0
    last_active: float = 0.0


@dataclass
class PlanRamp(Generic[Plan]):
    maximum: int
    initial: int = 2
    step_s: float = 2.0
    forget_after_s: float = 300.0
    _plans: dict[Plan, _PlanState] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.maximum < 1 or self.initial < 1 or self.step_s <= 0 or self.forget_after_s <= 0:
            raise ValueError(
                "plan ramp: maximum and initial must be >= 1, step_s and forget_after_s > 0 "
                f"(got maximum={self.maximum}, initial={self.initial}, step_s={self.step_s})"
            )
        self.initial = min(self.initial, self.maximum)

    @property
    def new_plan_allowance(self) -> int:
        """What a plan this executor has not seen may get in one claim."""
        return self.initial

    def allowance(self, plan: Plan, now: float) -> int:
        state = self._plans.get(plan)
        if state is None:
            return self.initial
        if state.allowance < self.maximum and state.answered_since_growth and now >= state.next_growth_at:
            state.allowance = min(self.maximum, state.allowance * 2)
            state.answered_since_growth = 0
            state.next_growth_at = now + self.step_s
        return state.allowance

    def room(self, held: Mapping[Plan, int], now: float) -> dict[Plan, int]:
        """Atoms each known plan may still be given (allowance minus held); unknown plans get `initial`."""
        self._forget(held, now)
        return {plan: max(0, self.allowance(plan, now) - held.get(plan, 0)) for plan in self._plans}

    def claimed(self, plan: Plan, now: float, jitter_s: float = 0.0) -> None:
        """An atom of `plan` was claimed; the first one starts the plan's ramp."""
        state = self._plans.get(plan)
        if state is None:
            state = self._plans[plan] = _PlanState(self.initial, now + self.step_s + max(jitter_s, 0.0))
        state.last_active = now

    def answered(self, plan: Plan, now: float) -> None:
        """One of the plan's LLM calls returned an answer: evidence the plan can take more."""
        state = self._plans.get(plan)
        if state is not None:
            state.answered_since_growth += 1
            state.last_active = now

    def _forget(self, held: Mapping[Plan, int], now: float) -> None:
        for plan, state in list(self._plans.items()):
            if not held.get(plan) and now - state.last_active > self.forget_after_s:
                del self._plans[plan]
