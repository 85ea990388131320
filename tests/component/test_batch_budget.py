"""Batched calls and the budget, against the fake LLM server over HTTP: no item settles above its reservation,
the batch is paid in full by its items, and a cancelled item still settles what its batch spent."""

import asyncio
from decimal import Decimal

import pytest

from mge.adapters.llm import ChatRequest, OpenAICompatibleLLM
from mge.adapters.llm_cache import BatchConfig, RequestBatcher
from mge.adapters.tokenizer import count_tokens
from mge.cost.pricing import DEFAULT_PRICES, worst_case_call_cost
from tests.support.batch_answers import batch_responder
from tests.support.batch_answers import batchable_request as _request
from tests.support.fake_llm import FakeLLM, FakeLLMConfig

pytestmark = pytest.mark.component

PRICE = DEFAULT_PRICES["gpt-4o-mini"]
# One long answer and one short: split by answer length, the long one took more than its own max_tokens.
LONG = "```python\n" + "\n".join(f"VALUE_{i} = {i} * {i}" for i in range(35)) + "\n```"
SHORT = "```python\nNAME = 1\n```"
RECORDINGS = {"a0": {1: LONG}, "a1": {1: SHORT}}


def _reserved(request: ChatRequest) -> Decimal:
    """What the executor reserves for this call."""
    return worst_case_call_cost(
        [count_tokens(m["content"]) for m in request.messages], request.max_tokens, PRICE
    )


async def _batcher(server: FakeLLM, seen: list):
    llm = OpenAICompatibleLLM(server.url, "k")

    async def send(request):
        completion = await llm.complete(request)
        seen.append(completion)
        return completion

    return llm, RequestBatcher(send, BatchConfig(max_batch=2, window_s=5.0))


async def test_no_item_settles_above_its_reservation_and_the_items_pay_the_whole_batch():
    server = FakeLLM(responder=batch_responder(RECORDINGS))
    await server.start()
    seen: list = []
    llm, batcher = await _batcher(server, seen)
    requests = [_request("a0"), _request("a1")]
    try:
        answers = await asyncio.wait_for(asyncio.gather(*(batcher.submit(r) for r in requests)), 5)
    finally:
        await llm.close()
        await server.stop()

    (combined,) = seen
    assert count_tokens(LONG) > requests[0].max_tokens  # the case: more than one item's own allowance
    assert [a.content for a in answers] == [LONG, SHORT]
    settled = [a.cost_usd for a in answers]
    assert all(s <= _reserved(r) for s, r in zip(settled, requests, strict=True)), settled
    assert sum(settled) == PRICE.cost(combined.prompt_tokens, combined.completion_tokens)


async def test_an_item_cancelled_after_its_batch_went_out_carries_its_share_of_the_cost():
    server = FakeLLM(FakeLLMConfig(base_latency_s=0.5), responder=batch_responder(RECORDINGS))
    await server.start()
    seen: list = []
    llm, batcher = await _batcher(server, seen)
    try:
        first = asyncio.create_task(batcher.submit(_request("a0")))
        second = asyncio.create_task(batcher.submit(_request("a1")))
        async with asyncio.timeout(5):
            while server.stats.requests == 0:  # the batch is on its way
                await asyncio.sleep(0.01)
        first.cancel()
        with pytest.raises(asyncio.CancelledError) as cancelled:
            await asyncio.wait_for(first, 5)
        other = await asyncio.wait_for(second, 5)
    finally:
        await llm.close()
        await server.stop()

    (combined,) = seen
    spent = cancelled.value.spent  # what the cancelled atom's task settles before the cancellation goes on
    assert spent.cost_usd > 0
    assert spent.cost_usd + other.cost_usd == PRICE.cost(combined.prompt_tokens, combined.completion_tokens)
    assert server.stats.requests == 1  # nothing sent again for the cancelled item


async def test_an_item_cancelled_in_its_window_is_never_sent():
    server = FakeLLM(responder=batch_responder(RECORDINGS))
    server.recordings = {atom: dict(answers) for atom, answers in RECORDINGS.items()}
    await server.start()
    seen: list = []
    llm, batcher = await _batcher(server, seen)
    try:
        first = asyncio.create_task(batcher.submit(_request("a0")))
        await asyncio.sleep(0)  # queued in the open window
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        second = asyncio.create_task(batcher.submit(_request("a1")))
        await asyncio.sleep(0)
        await batcher.close()  # closes the window: what is left goes out
        answer = await asyncio.wait_for(second, 5)
    finally:
        await llm.close()
        await server.stop()

    assert answer.content == SHORT
    assert server.stats.requests == 1
    assert server.stats.calls_per_atom["a1"] == 1  # alone: the cancelled item was not paid for in a batch
