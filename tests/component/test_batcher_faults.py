"""The request batcher when the batch goes wrong in ways that are not the provider's retryable errors: every
call of the batch still ends, with an answer or an error."""

import asyncio

import pytest

from mge.adapters.llm import ChatRequest, OpenAICompatibleLLM
from mge.adapters.llm_cache import BatchConfig, RequestBatcher
from tests.support.batch_answers import batch_responder
from tests.support.batch_answers import batchable_request as _request
from tests.support.fake_llm import FakeLLM, Fault

pytestmark = pytest.mark.component

ATOMS = ["a0", "a1", "a2"]
RECORDINGS = {atom: {1: f"```python\nNAME_{i} = {i}\n```"} for i, atom in enumerate(ATOMS)}


@pytest.fixture
async def server():
    fake = FakeLLM(responder=batch_responder(RECORDINGS))
    fake.recordings = {atom: dict(answers) for atom, answers in RECORDINGS.items()}
    await fake.start()
    yield fake
    await fake.stop()


async def test_a_batch_answer_with_a_malformed_usage_block_still_answers_every_call(server):
    server.inject(Fault("bad_usage"))  # the batch request's answer; the calls sent again alone are fine
    llm = OpenAICompatibleLLM(server.url, "k", backoff_base_s=0.01, backoff_cap_s=0.02, jitter=lambda: 1.0)
    batcher = RequestBatcher(llm.complete, BatchConfig(max_batch=3, window_s=5.0))
    try:
        async with asyncio.timeout(10):
            answers = await asyncio.gather(*(batcher.submit(_request(a)) for a in ATOMS))
    finally:
        await batcher.close()
        await llm.close()

    assert [a.content for a in answers] == [RECORDINGS[a][1] for a in ATOMS]
    assert server.stats.requests == 1 + len(ATOMS)


async def test_any_error_of_the_batch_request_ends_every_call_of_the_batch(server):
    """The send function stands in for a client with a bug (nothing real raises a plain error on demand):
    an error that is not an LLMError must still reach each waiting call instead of leaving it hanging."""
    llm = OpenAICompatibleLLM(server.url, "k")

    async def send(request: ChatRequest):
        if request.atom_id.startswith("batch:"):
            raise ZeroDivisionError("a bug while sending the batch")
        return await llm.complete(request)

    batcher = RequestBatcher(send, BatchConfig(max_batch=3, window_s=5.0))
    try:
        async with asyncio.timeout(10):
            outcomes = await asyncio.gather(
                *(batcher.submit(_request(a)) for a in ATOMS), return_exceptions=True
            )
    finally:
        await batcher.close()
        await llm.close()

    assert [type(o) for o in outcomes] == [ZeroDivisionError] * len(ATOMS)
