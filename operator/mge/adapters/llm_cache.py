"""An LLM client wrapper adding the prompt cache (lookup before the call, write after validation) and batching.

The executor asks `cached_answer` first: a hit skips the budget reservation (what its claim reserved, if
anything, is settled at $0), the concurrency gate and the LLM. On a miss it calls `complete` (batched with
other small independent atoms when enabled), validates the code, and only then `remember_answer` stores
it, so an answer that failed validation is never served again.
"""

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Final

from mge.adapters import metrics
from mge.adapters.cache import CacheSavings, LLMPromptCache
from mge.adapters.llm import (
    BEFORE_SEND,
    HEADERS_LISTENER,
    LLM,
    RETRY_LISTENER,
    ChatRequest,
    Completion,
    EndpointUnavailable,
    LLMError,
    call_span_s,
    retries_reported_to,
)
from mge.adapters.tokenizer import count_tokens
from mge.cache.batching import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_PROMPT_TOKENS,
    DEFAULT_WINDOW_S,
    BatchItem,
    BatchUnsplittable,
    apportion,
    batch_compatibility,
    batch_messages,
    batch_payoff,
    batchable,
    capped_shares,
    split_batch_answer,
)
from mge.cache.keys import PromptKeyInput, prompt_cacheability, prompt_key
from mge.cost.pricing import DEFAULT_PRICES, ModelPrice, UnknownModelPrice, price_for, worst_case_call_cost
from mge.generation.prompt import PROMPT_VERSION

log = logging.getLogger("mge.cache")

BATCH_ATOM_PREFIX: Final = "batch:"


class CancelledAfterSpending(asyncio.CancelledError):
    """A batched call cancelled after its batch was sent: the batch is paid regardless, and `spent` (this
    item's share, within its own worst case) is what its caller settles before the cancellation goes on."""

    def __init__(self, spent: Completion) -> None:
        super().__init__()
        self.spent = spent


def _worst_case(request: ChatRequest, price: ModelPrice) -> Decimal:
    """What the caller reserved for this request: the same worst case the executor computes."""
    return worst_case_call_cost(
        [count_tokens(m["content"]) for m in request.messages], request.max_tokens, price
    )


def request_key(llm: LLM, request: ChatRequest) -> str:
    """The prompt-cache key of a call: model, every message, sampling, prompt version and the backend."""
    identity = getattr(llm, "cache_identity", None)
    backend = identity(request) if callable(identity) else {"llm": llm.label}
    return prompt_key(
        PromptKeyInput(
            model=request.model,
            messages=[dict(m) for m in request.messages],
            sampling={"temperature": request.temperature, "max_tokens": request.max_tokens},
            prompt_version=PROMPT_VERSION,
            backend=backend,
        )
    )


@dataclass(frozen=True)
class BatchConfig:
    max_batch: int = DEFAULT_MAX_BATCH
    window_s: float = DEFAULT_WINDOW_S
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS


@dataclass
class BatchStats:
    """Running totals of the batcher, for the bench and the log line that says whether batching paid off."""

    batches: int = 0
    batched_items: int = 0
    fallbacks: int = 0
    requests_saved: int = 0
    prompt_tokens_saved: int = 0


@dataclass
class _Pending:
    request: ChatRequest
    item: BatchItem
    # Whom the submitter's retries are reported to: the batch is sent from another task, and a retry must
    # reach the limiter of the call whose completion carries it (the first item, or the item sent alone).
    retry_listener: Callable[[str], None] | None = field(default_factory=RETRY_LISTENER.get)
    # ... and the submitter's call gate's hooks for the provider's rate-limit headers: the request waits for the
    # room they announce before it is sent, and its answer's headers are read (a batch: the first item's gate).
    headers_listener: Callable[[Mapping[str, str]], None] | None = field(default_factory=HEADERS_LISTENER.get)
    before_send: Callable[[], Awaitable[None]] | None = field(default_factory=BEFORE_SEND.get)
    answer: asyncio.Future[Completion] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    # Its caller was cancelled after the batch went out: it only waits for its share, nothing is sent again.
    abandoned: bool = False


class RequestBatcher:
    """Groups up to `max_batch` small independent calls, or what arrives within `window_s`, into one request."""

    def __init__(
        self,
        send: Callable[[ChatRequest], Awaitable[Completion]],
        config: BatchConfig,
        prices: Mapping[str, ModelPrice] = DEFAULT_PRICES,
    ) -> None:
        if config.max_batch < 1 or config.window_s < 0:
            raise ValueError(f"batch size must be >= 1 and window >= 0, got {config}")
        self._send, self.config, self.prices = send, config, prices
        self._open: dict[str, list[_Pending]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._flushing: set[asyncio.Task[None]] = set()
        self.stats = BatchStats()

    async def submit(self, request: ChatRequest) -> Completion:
        messages = list(request.messages)
        shape_ok = (
            len(messages) == 2 and messages[0].get("role") == "system" and messages[1].get("role") == "user"
        )
        prompt_tokens = sum(count_tokens(m.get("content", "")) for m in messages)
        if (
            self.config.max_batch == 1
            or not shape_ok
            or request.model not in self.prices  # no price, no way to keep each share within its reservation
            or not batchable(prompt_tokens, request.attempt, self.config.max_prompt_tokens)
        ):
            return await self._send(request)
        group = batch_compatibility(
            request.model,
            {"temperature": request.temperature, "trace": request.trace_id},
            messages[0]["content"],
        )
        pending = _Pending(
            request, BatchItem(request.atom_id, messages[0]["content"], messages[1]["content"], prompt_tokens)
        )
        waiting = self._open.setdefault(group, [])
        waiting.append(pending)
        if len(waiting) >= self.config.max_batch:
            self._start_flush(group)
        elif len(waiting) == 1:
            self._timers[group] = asyncio.get_running_loop().call_later(
                self.config.window_s, self._start_flush, group
            )
        try:
            return await asyncio.shield(pending.answer)
        except asyncio.CancelledError:
            if self._withdraw(group, pending):
                raise  # still in its window: nothing was sent for it
            # The batch is out and will be paid: wait for this item's share so its caller settles it.
            pending.abandoned = True
            try:
                spent = await pending.answer
            except Exception:
                raise asyncio.CancelledError from None
            raise CancelledAfterSpending(spent) from None

    def _withdraw(self, group: str, pending: _Pending) -> bool:
        waiting = self._open.get(group, [])
        if pending not in waiting:
            return False
        waiting.remove(pending)
        if not waiting:
            del self._open[group]
            timer = self._timers.pop(group, None)
            if timer is not None:
                timer.cancel()
        return True

    def _start_flush(self, group: str) -> None:
        timer = self._timers.pop(group, None)
        if timer is not None:
            timer.cancel()
        items = self._open.pop(group, [])
        if items:
            task = asyncio.get_running_loop().create_task(self._flush_answering_all(items))
            self._flushing.add(task)
            task.add_done_callback(self._flushing.discard)

    async def _flush_answering_all(self, items: list[_Pending]) -> None:
        """Whatever happens to the batch (an error that is not the provider's, a bug, cancellation), each item
        ends with an answer or an error: an item left waiting would hold its LLM slot and lease forever."""
        try:
            await self._flush(items)
        except Exception as error:
            log.error("batch of %d failed", len(items), exc_info=error)
            for pending in items:
                if not pending.answer.done():
                    pending.answer.set_exception(error)
        finally:
            for pending in items:
                if not pending.answer.done():
                    pending.answer.set_exception(LLMError("the batch ended without an answer for this call"))

    async def _flush(self, items: list[_Pending]) -> None:
        metrics.BATCH_SIZE.observe(len(items))
        first = items[0].request
        price = self.prices[first.model]
        batch = ChatRequest(
            model=first.model,
            messages=batch_messages([p.item for p in items]),
            max_tokens=sum(p.request.max_tokens for p in items),
            temperature=first.temperature,
            trace_id=first.trace_id,
            atom_id=BATCH_ATOM_PREFIX + ",".join(p.item.item_id for p in items),
            attempt=1,
            masterplan_id=first.masterplan_id,
        )
        reserved = [_worst_case(p.request, price) for p in items]
        # The batch's own worst case must be covered by what its items reserved together: when the shared
        # instructions cost more prompt than the one system prompt saves, the batch allows fewer tokens.
        excess = _worst_case(batch, price) - sum(reserved, Decimal(0))
        if excess > 0:
            per_token = price.output / 1_000_000
            cut = int(-(-excess // per_token)) if per_token > 0 else batch.max_tokens
            batch = dataclasses.replace(batch, max_tokens=batch.max_tokens - cut)
        if (
            len(items) == 1
            or len({p.item.item_id for p in items}) != len(items)
            or batch.max_tokens < max(p.request.max_tokens for p in items)
        ):
            await asyncio.gather(*(self._alone(p, "alone") for p in items))
            return
        try:
            lead = items[0]
            with retries_reported_to(lead.retry_listener, lead.headers_listener, lead.before_send):
                combined = await self._send(batch)
        except EndpointUnavailable as error:  # sent alone, each would only fail the same way
            for pending in items:
                if not pending.answer.done():
                    pending.answer.set_exception(error)
            return
        except LLMError as error:
            log.warning("batch of %d failed, sending each alone: %s", len(items), error)
            self.stats.fallbacks += len(items)
            await asyncio.gather(*(self._alone(p, "fallback") for p in items))
            return
        try:
            answers = split_batch_answer(combined.content, [p.item.item_id for p in items])
        except BatchUnsplittable as error:
            log.warning("batch answer of %d could not be split, sending each alone: %s", len(items), error)
            answers = {}
        # The batch's usage is spread over its items, so every token is settled against some atom's budget.
        prompt_shares = apportion(combined.prompt_tokens, [p.item.prompt_tokens for p in items])
        completion_shares = apportion(
            combined.completion_tokens, [count_tokens(answers.get(p.item.item_id, "")) for p in items]
        )
        cached_shares = apportion(combined.cached_prompt_tokens, [p.item.prompt_tokens for p in items])
        costs = self._cost_shares(
            price.cost(combined.prompt_tokens, combined.completion_tokens, combined.cached_prompt_tokens),
            [price.cost(prompt_shares[i], completion_shares[i], cached_shares[i]) for i in range(len(items))],
            reserved,
            [p.item.item_id in answers for p in items],
        )
        missing = [p for p in items if p.item.item_id not in answers]
        resends = []
        for index, pending in enumerate(items):
            share = Completion(
                content=answers.get(pending.item.item_id, ""),
                prompt_tokens=prompt_shares[index],
                completion_tokens=completion_shares[index],
                cached_prompt_tokens=cached_shares[index],
                latency_s=combined.latency_s,
                retried_errors=combined.retried_errors if index == 0 else (),
                cost_usd=costs[index],
            )
            if pending.item.item_id in answers:
                metrics.BATCH_REQUESTS.labels("batched").inc()
                _resolve(pending, share)
            else:
                resends.append(
                    self._alone(pending, "fallback", already_spent=share, reserved=reserved[index])
                )
        await asyncio.gather(*resends)
        payoff = batch_payoff(
            [p.item.prompt_tokens for p in items],
            combined.prompt_tokens,
            [p.item.prompt_tokens for p in missing],
        )
        stats = self.stats
        stats.batches += 1
        stats.batched_items += len(items) - len(missing)
        stats.fallbacks += len(missing)
        stats.requests_saved += payoff.requests_saved
        stats.prompt_tokens_saved += payoff.prompt_tokens_saved
        log.info(
            "batch of %d (%d sent again alone): %d requests and %d prompt tokens saved; %s",
            len(items),
            len(missing),
            payoff.requests_saved,
            payoff.prompt_tokens_saved,
            "paid off" if payoff.paid_off else "did not pay off",
        )

    @staticmethod
    def _cost_shares(
        total: Decimal, weights: list[Decimal], reserved: list[Decimal], answered: list[bool]
    ) -> list[Decimal]:
        """The batch's cost over its items, none above what it reserved. Answered items take it first: an item
        the answer lacks is sent again alone, and what it carries here comes off that call's allowance."""
        shares = [Decimal(0)] * len(weights)
        groups = [[i for i, a in enumerate(answered) if a], [i for i, a in enumerate(answered) if not a]]
        left = total
        for n, group in enumerate(groups):
            if not group:
                continue
            room = sum((reserved[i] for i in group), Decimal(0))
            part = left if n == len(groups) - 1 or not groups[1] else min(left, room)
            for i, share in zip(
                group,
                capped_shares(part, [weights[i] for i in group], [reserved[i] for i in group]),
                strict=True,
            ):
                shares[i] = share
            left -= part
        return shares

    async def _alone(
        self,
        pending: _Pending,
        outcome: str,
        already_spent: Completion | None = None,
        reserved: Decimal | None = None,
    ) -> None:
        """Send one item by itself: alone in its window, or again after its batch answer lacked it (then with
        what is left of its reservation after its share of the batch)."""
        request = pending.request
        spent_before = already_spent.cost_usd if already_spent is not None else None
        if already_spent is not None and spent_before and reserved is not None:
            price = self.prices[request.model]
            per_completion_token = price.output / 1_000_000
            allowed = (
                request.max_tokens - int(-(-spent_before // per_completion_token))
                if per_completion_token > 0
                else request.max_tokens
            )
            if allowed < 1:  # nothing left to answer with: the attempt fails without a second call
                _resolve(pending, already_spent)
                return
            request = dataclasses.replace(request, max_tokens=allowed)
        if pending.abandoned:
            _resolve(pending, already_spent or Completion(content="", prompt_tokens=0, completion_tokens=0))
            return
        metrics.BATCH_REQUESTS.labels(outcome).inc()
        try:
            with retries_reported_to(pending.retry_listener, pending.headers_listener, pending.before_send):
                single = await self._send(request)
        except BaseException as error:  # handed to the atom's own task, which decides what it means
            if not pending.answer.done():
                pending.answer.set_exception(error)
            return
        if already_spent is not None:
            price = self.prices[request.model]
            single = Completion(
                content=single.content,
                prompt_tokens=single.prompt_tokens + already_spent.prompt_tokens,
                completion_tokens=single.completion_tokens + already_spent.completion_tokens,
                cached_prompt_tokens=single.cached_prompt_tokens + already_spent.cached_prompt_tokens,
                latency_s=already_spent.latency_s + single.latency_s,
                retried_errors=already_spent.retried_errors + single.retried_errors,
                cost_usd=(already_spent.cost_usd or Decimal(0))
                + price.cost(single.prompt_tokens, single.completion_tokens, single.cached_prompt_tokens),
            )
        _resolve(pending, single)

    async def close(self) -> None:
        for group in list(self._open):
            self._start_flush(group)
        if self._flushing:
            await asyncio.gather(*self._flushing, return_exceptions=True)


def _resolve(pending: _Pending, completion: Completion) -> None:
    if not pending.answer.done():
        pending.answer.set_result(completion)


class CachingLLM:
    """Wraps any LLM client; the executor's contract is cached_answer -> complete -> validate -> remember_answer."""

    def __init__(
        self,
        inner: LLM,
        *,
        cache: LLMPromptCache | None,
        prices: Mapping[str, ModelPrice],
        savings: CacheSavings | None = None,
        batching: BatchConfig | None = None,
        cache_sampled: bool = False,
    ) -> None:
        self.inner, self.cache, self.prices, self.savings = inner, cache, prices, savings
        self.cache_sampled = cache_sampled
        self.batcher = RequestBatcher(inner.complete, batching, prices) if batching is not None else None
        # A batched call waits for its window, then the batch, then possibly goes again alone.
        single = call_span_s(inner)
        self.longest_call_s = single if batching is None else batching.window_s + 2 * single
        metrics.initialise_cache_series()
        extras = [
            x for x, on in (("prompt cache", cache is not None), ("batching", batching is not None)) if on
        ]
        self.label = inner.label + (f" + {' + '.join(extras)}" if extras else "")

    def _cacheable(self, request: ChatRequest) -> bool:
        return prompt_cacheability(request.temperature, opt_in=self.cache_sampled).cacheable

    async def lookup(self, request: ChatRequest) -> Completion | None:
        """The stored answer for exactly this call, or None. A hit records the cost it avoided."""
        if self.cache is None or not self._cacheable(request):
            return None
        started = time.perf_counter()
        answer = await self.cache.get(request_key(self.inner, request))
        if answer is None:
            return None
        try:
            saved = price_for(request.model, self.prices).cost(
                answer.prompt_tokens, answer.completion_tokens, answer.cached_prompt_tokens
            )
        except UnknownModelPrice:
            saved = Decimal(0)
        metrics.CACHE_SAVINGS.labels("llm").inc(float(saved))
        if self.savings is not None and request.masterplan_id and request.trace_id:
            try:
                await self.savings.record(
                    masterplan_id=request.masterplan_id,
                    trace_id=request.trace_id,
                    atom_id=request.atom_id,
                    cache="llm",
                    model=request.model,
                    prompt_tokens=answer.prompt_tokens,
                    completion_tokens=answer.completion_tokens,
                    saved_usd=saved,
                )
            except Exception as error:  # Postgres trouble: the hit stands, only the report misses one line
                log.warning("cache saving of atom %s not recorded: %r", request.atom_id, error)
        return Completion(
            content=answer.content,
            prompt_tokens=0,
            completion_tokens=0,
            latency_s=time.perf_counter() - started,
            from_cache=True,
        )

    async def complete(self, request: ChatRequest) -> Completion:
        if self.batcher is not None:
            return await self.batcher.submit(request)
        return await self.inner.complete(request)

    async def remember(self, request: ChatRequest, completion: Completion) -> None:
        """Store an answer that passed validation (never one that failed: a rerun would repeat the failure)."""
        if (
            self.cache is None
            or completion.from_cache
            or not self._cacheable(request)
            or not completion.content
        ):
            return
        await self.cache.put(
            request_key(self.inner, request),
            content=completion.content,
            model=request.model,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            cached_prompt_tokens=completion.cached_prompt_tokens,
            masterplan_id=request.masterplan_id,
        )

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()
        await self.inner.close()


async def cached_answer(llm: LLM, request: ChatRequest) -> Completion | None:
    """The cache's answer when `llm` is a CachingLLM, else None (plain clients have no cache)."""
    return await llm.lookup(request) if isinstance(llm, CachingLLM) else None


async def remember_answer(llm: LLM, request: ChatRequest, completion: Completion) -> None:
    if isinstance(llm, CachingLLM):
        with contextlib.suppress(Exception):  # a cache write never fails an atom; the cache counts its errors
            await llm.remember(request, completion)
