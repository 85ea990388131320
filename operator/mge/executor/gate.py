"""Admits LLM calls up to the adaptive limit and feeds every call's outcome back into it."""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from mge.adapters import metrics
from mge.adapters.llm import Completion
from mge.concurrency.limiter import AdaptiveLimiter, Outcome

_OVERLOAD_MARKERS = ("HTTP 429", "HTTP 503", "HTTP 502", "HTTP 504", "timeout")


def classify(error: str) -> Outcome:
    return Outcome.OVERLOADED if any(marker in error for marker in _OVERLOAD_MARKERS) else Outcome.ERROR


class CallGate:
    def __init__(self, limiter: AdaptiveLimiter, executor_id: str) -> None:
        self.limiter = limiter
        self.in_flight = 0
        self._changed = asyncio.Condition()
        self._labels = (executor_id,)
        metrics.CONCURRENCY_LIMIT.labels(*self._labels).set(limiter.limit)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_flight < self.limiter.limit)
            self.in_flight += 1
        try:
            yield
        finally:
            async with self._changed:
                self.in_flight -= 1
                self._changed.notify_all()

    async def record(self, completion: Completion | None, error: str | None = None) -> None:
        """After a call: the retries it needed, then its final outcome, all count."""
        now = time.monotonic()
        before = self.limiter.limit
        for retried in completion.retried_errors if completion else ():
            self.limiter.record(classify(retried), in_flight=self.in_flight + 1, now=now)
        if completion is not None:
            self.limiter.record(
                Outcome.OK,
                in_flight=self.in_flight + 1,
                now=now,
                latency_s=completion.latency_s,
                tokens=completion.completion_tokens,
            )
        elif error is not None:
            self.limiter.record(classify(error), in_flight=self.in_flight + 1, now=now)
        if self.limiter.limit != before:
            direction = "up" if self.limiter.limit > before else "down"
            metrics.CONCURRENCY_LIMIT.labels(*self._labels).set(self.limiter.limit)
            metrics.CONCURRENCY_LIMIT_CHANGES.labels(*self._labels, direction).inc()
            async with self._changed:
                self._changed.notify_all()
