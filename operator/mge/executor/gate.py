"""Admits LLM calls up to the adaptive limit, in backpressure-queue order, and feeds outcomes back."""

import asyncio
import contextlib
import functools
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

from mge.adapters import metrics
from mge.adapters.llm import Completion, LLMError, retries_reported_to
from mge.concurrency.fleet_estimate import SharedLimiter
from mge.concurrency.limiter import CallLimiter, Outcome
from mge.concurrency.queue import BackpressureQueue
from mge.concurrency.rate_limits import ProviderBudget, parse_rate_limit_headers
from mge.concurrency.statistics import CallStatistics

# A full queue is a wait, not a failure: try again after a pause that doubles up to the cap.
QUEUE_FULL_BACKOFF_S: Final = 0.05
QUEUE_FULL_BACKOFF_CAP_S: Final = 2.0
_OVERLOAD_MARKERS = ("HTTP 429", "HTTP 503", "HTTP 502", "HTTP 504", "timeout")


def classify(error: str) -> Outcome:
    return Outcome.OVERLOADED if any(marker in error for marker in _OVERLOAD_MARKERS) else Outcome.ERROR


class SlotUnavailable(RuntimeError):
    """No slot within the gate's deadline (queue full or not admitted): hand the atom back for another executor."""


@dataclass
class _Requests:
    """The HTTP requests of one call, as the provider's budget sees them."""

    tokens: int  # what each takes of the tokens budget
    # The number of the last one sent (`ProviderBudget.started`): its answer's reading is of it.
    latest: int | None = None
    # The last answer was a refusal its headers explain (a budget spent): the provider's pace, not congestion.
    refused_by_budget: bool = False


@dataclass
class _Waiter:
    admitted: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class CallGate:
    def __init__(self, limiter: CallLimiter, executor_id: str, *, queue_size: int, timeout_s: float) -> None:
        self.limiter = limiter
        self.in_flight = 0
        # The executor's own LLM latency and error rate, reported for a scaler without Prometheus.
        self.statistics = CallStatistics()
        self.queue: BackpressureQueue[_Waiter] = BackpressureQueue(max_size=queue_size, timeout_s=timeout_s)
        # What the provider's rate-limit headers and Retry-After allow: calls it said it would refuse wait.
        self.provider = ProviderBudget()
        self._timeout_s = timeout_s
        self._executor = executor_id
        metrics.CONCURRENCY_LIMIT.labels(executor_id).set(limiter.limit)
        metrics.initialise_executor_series(executor_id)

    def _admit_waiting(self) -> None:
        now = time.monotonic()
        while self.in_flight < self.limiter.limit:
            popped = self.queue.pop(now)
            if popped is None:
                break
            if popped.item.admitted.done():  # its wait timed out meanwhile
                continue
            self.in_flight += 1
            metrics.QUEUE_WAIT.observe(popped.waited_s)
            popped.item.admitted.set_result(None)
        self._export_queue()

    def _export_queue(self) -> None:
        metrics.QUEUE_SIZE.labels(self._executor).set(self.queue.size)

    async def complete(
        self,
        call: Callable[[], Awaitable[Completion]],
        *,
        plan: str,
        critical_path: int,
        plan_priority: int,
        tokens: int = 0,
    ) -> Completion:
        """Make one LLM call (`call`, retries included) in a slot; each retry and the outcome reach the limiter.

        `tokens` (prompt + most output) is what the call takes of the provider's tokens-per-minute budget: it
        starts only once the provider's last rate-limit headers leave room for it (and after any Retry-After).
        """
        # Most of a wait for the provider happens here, before the call takes a slot; the room is taken (and
        # looked at again) right before each request is sent, once readings of the calls ahead have come in.
        await self._provider_room(tokens)
        async with self.slot(
            plan=plan, critical_path=critical_path, plan_priority=plan_priority
        ) as started_with:
            retries: list[str] = []
            requests = _Requests(tokens)

            def retrying(error: str) -> None:
                retries.append(error)
                before = self.limiter.limit
                outcome = classify(error)
                if outcome is Outcome.OVERLOADED and requests.refused_by_budget:
                    outcome = Outcome.RATE_LIMITED
                self._failed(outcome, time.monotonic())
                self.limit_changed(before)

            try:
                with retries_reported_to(
                    retrying,
                    functools.partial(self._heard, requests),
                    functools.partial(self._send, requests),
                ):
                    completion = await call()
            except LLMError as failure:
                self.record(None, str(failure), started_with=started_with)
                raise
            self.record(completion, started_with=started_with, reported_retries=len(retries))
        return completion

    async def _provider_room(self, tokens: int) -> None:
        """Wait (not a failure, no deadline: the provider says when) until the provider has room for the call."""
        # A deadline, not an event: the room comes back with time (and a new reading may move it), so look again.
        while (wait := self.provider.wait_s(tokens, time.monotonic())) > 0:  # noqa: ASYNC110
            await asyncio.sleep(wait)

    async def _send(self, requests: "_Requests") -> None:
        """Right before a request goes out: wait for the provider's room, then count the request against it."""
        await self._provider_room(requests.tokens)
        requests.latest = self.provider.started(requests.tokens, time.monotonic())

    def _heard(self, requests: "_Requests", headers: Mapping[str, str]) -> None:
        reading = parse_rate_limit_headers(headers, time.time())
        requests.refused_by_budget = reading is not None and reading.refused_for_budget(requests.tokens)
        if reading is not None:
            self.provider.observe(reading, time.monotonic(), requests.latest)

    @contextlib.asynccontextmanager
    async def slot(self, *, plan: str, critical_path: int, plan_priority: int) -> AsyncIterator[int]:
        """Hold one of the limit's slots; yields the calls in flight when it was admitted, itself included."""
        if self.in_flight < self.limiter.limit and self.queue.size == 0:
            self.in_flight += 1
        else:
            deadline = time.monotonic() + self._timeout_s
            waiter = await self._enqueue(plan, critical_path, plan_priority, deadline)
            try:
                await asyncio.wait_for(asyncio.shield(waiter.admitted), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                if waiter.admitted.done():  # admitted at the last moment: use the slot
                    pass
                else:
                    waiter.admitted.cancel()
                    metrics.QUEUE_TIMEOUTS.labels(self._executor).inc()
                    raise SlotUnavailable(f"waited {self._timeout_s:.0f}s for an LLM slot") from None
        admitted = time.monotonic()
        shared = self.limiter if isinstance(self.limiter, SharedLimiter) else None
        if shared is not None:
            shared.started(admitted)
        try:
            yield self.in_flight
        finally:
            now = time.monotonic()
            self.statistics.llm_latency.add(now - admitted, now)  # the call, retries included
            self.in_flight -= 1
            if shared is not None:
                shared.finished(now)
            self._admit_waiting()

    async def _enqueue(self, plan: str, critical_path: int, plan_priority: int, deadline: float) -> _Waiter:
        """A place in the queue; a full queue is waited out (backoff with jitter) until the deadline."""
        waiter = _Waiter()
        backoff = QUEUE_FULL_BACKOFF_S
        while not self.queue.push(
            waiter, plan=plan, critical_path=critical_path, plan_priority=plan_priority, now=time.monotonic()
        ):
            if backoff == QUEUE_FULL_BACKOFF_S:  # counted once per call that found the queue full
                metrics.QUEUE_DROPS.labels(self._executor).inc()
            pause = backoff * random.uniform(0.5, 1.0)
            if time.monotonic() + pause > deadline:
                raise SlotUnavailable(
                    f"backpressure queue full ({self.queue.max_size} waiting) for {self._timeout_s:.0f}s"
                )
            await asyncio.sleep(pause)
            backoff = min(backoff * 2, QUEUE_FULL_BACKOFF_CAP_S)
        # Slots may have freed while it backed off, with nobody queued to take them: without this, a waiter
        # queued after the last call ended would wait out its whole deadline with no call in flight.
        self._admit_waiting()
        return waiter

    def _failed(self, outcome: Outcome, now: float) -> None:
        metrics.LLM_REQUESTS.labels(outcome.value).inc()
        self.statistics.llm_failures.add(1.0, now)
        self.limiter.record(outcome, in_flight=self.in_flight, now=now)

    def limit_changed(self, before: int) -> None:
        """The limit moved from `before` (an outcome, or the fleet's estimate): export it, admit who it lets in."""
        if self.limiter.limit != before:
            direction = "up" if self.limiter.limit > before else "down"
            metrics.CONCURRENCY_LIMIT.labels(self._executor).set(self.limiter.limit)
            metrics.CONCURRENCY_LIMIT_CHANGES.labels(self._executor, direction).inc()
            self._admit_waiting()

    def record(
        self,
        completion: Completion | None,
        error: str | None = None,
        *,
        started_with: int | None = None,
        reported_retries: int = 0,
    ) -> None:
        """After a call: the retries it needed (but the first `reported_retries`, heard of as they happened),
        then its final outcome, all count."""
        now = time.monotonic()
        before = self.limiter.limit
        for retried in (completion.retried_errors if completion else ())[reported_retries:]:
            self._failed(classify(retried), now)
        if completion is not None:
            metrics.LLM_REQUESTS.labels(Outcome.OK.value).inc()
            self.statistics.llm_failures.add(0.0, now)
            self.limiter.record(
                Outcome.OK,
                in_flight=self.in_flight,
                now=now,
                latency_s=completion.latency_s,
                tokens=completion.completion_tokens,
                started_with=started_with,
            )
        elif error is not None:
            self._failed(classify(error), now)
        self.limit_changed(before)
