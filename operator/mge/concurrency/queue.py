"""Backpressure queue for work waiting on a concurrency slot: priority inside a plan, fairness across plans.

Pure: time is passed in. Items of one Masterplan leave in priority order (critical-path length, then
age); Masterplans take turns, higher Masterplan priority first within a turn, so one big plan cannot
starve a small one. Bounded: a push beyond `max_size` is refused (a drop). Each item has a deadline:
expired items are taken out and reported (timeouts) instead of being handed a slot.
"""

import heapq
import itertools
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(order=True)
class _Entry(Generic[T]):
    sort_key: tuple[int, float, int]
    item: T = field(compare=False)
    deadline: float = field(compare=False)
    enqueued: float = field(compare=False)


@dataclass
class Popped(Generic[T]):
    item: T
    waited_s: float


class BackpressureQueue(Generic[T]):
    def __init__(self, max_size: int, timeout_s: float) -> None:
        if max_size < 1 or timeout_s <= 0:
            raise ValueError("backpressure queue: max_size must be >= 1 and timeout_s > 0")
        self.max_size, self.timeout_s = max_size, timeout_s
        self._plans: OrderedDict[str, list[_Entry[T]]] = OrderedDict()
        self._plan_priority: dict[str, int] = {}
        self._sequence = itertools.count()
        self.size = 0
        self.drops = 0
        self.timeouts = 0

    def push(self, item: T, *, plan: str, critical_path: int, plan_priority: int, now: float) -> bool:
        if self.size >= self.max_size:
            self.drops += 1
            return False
        entry = _Entry((-critical_path, now, next(self._sequence)), item, now + self.timeout_s, now)
        heapq.heappush(self._plans.setdefault(plan, []), entry)
        self._plan_priority[plan] = plan_priority
        self.size += 1
        return True

    def expire(self, now: float) -> list[T]:
        """Take out every item past its deadline."""
        expired: list[T] = []
        for plan, heap in list(self._plans.items()):
            keep = [e for e in heap if e.deadline > now]
            expired.extend(e.item for e in heap if e.deadline <= now)
            if keep:
                heapq.heapify(keep)
                self._plans[plan] = keep
            else:
                del self._plans[plan]
        self.size -= len(expired)
        self.timeouts += len(expired)
        return expired

    def pop(self, now: float) -> Popped[T] | None:
        """The next item: the plan whose turn it is (higher plan priority first), its most critical item."""
        self.expire(now)
        if not self._plans:
            return None
        plan = max(self._plans, key=lambda p: self._plan_priority[p])  # ties: the earliest in the rotation
        heap = self._plans[plan]
        entry = heapq.heappop(heap)
        # Rotate: the plan that was served goes to the back of the line.
        del self._plans[plan]
        if heap:
            self._plans[plan] = heap
        self.size -= 1
        return Popped(entry.item, now - entry.enqueued)
