"""The request batcher against the fake LLM server over HTTP: one request for five atoms, exact usage, fallbacks."""

import asyncio

import pytest

from mge.adapters import metrics
from mge.adapters.llm import OpenAICompatibleLLM, retries_reported_to
from mge.adapters.llm_cache import BatchConfig, RequestBatcher
from tests.support.batch_answers import batch_responder
from tests.support.batch_answers import batchable_request as _request
from tests.support.fake_llm import FakeLLM, FakeLLMConfig, Fault

pytestmark = pytest.mark.component

ATOMS = [f"a{i}" for i in range(7)]
RECORDINGS = {atom: {1: f"```python\nNAME_{i} = {i}\n```"} for i, atom in enumerate(ATOMS)}


async def _server(**responder_options) -> FakeLLM:
    server = FakeLLM(responder=batch_responder(RECORDINGS, **responder_options))
    # Single requests (fallbacks) are answered by atom id, as the recordings say.
    server.recordings = {atom: dict(answers) for atom, answers in RECORDINGS.items()}
    await server.start()
    return server


async def _submit_all(batcher, requests):
    return await asyncio.gather(*(batcher.submit(r) for r in requests))


async def test_five_small_atoms_share_one_request_and_each_gets_its_own_answer():
    server = await _server()
    llm = OpenAICompatibleLLM(server.url, "k")
    batcher = RequestBatcher(llm.complete, BatchConfig(max_batch=5, window_s=5.0))
    batched_before = metrics.BATCH_REQUESTS.labels("batched")._value.get()
    try:
        answers = await asyncio.wait_for(_submit_all(batcher, [_request(a) for a in ATOMS[:5]]), 3)
    finally:
        await batcher.close()
        await llm.close()
        await server.stop()

    assert server.stats.requests == 1
    assert [a.content for a in answers] == [RECORDINGS[a][1] for a in ATOMS[:5]]
    assert metrics.BATCH_REQUESTS.labels("batched")._value.get() == batched_before + 5
    assert batcher.stats.batches == 1
    assert batcher.stats.requests_saved == 4
    assert batcher.stats.prompt_tokens_saved > 0


async def test_the_batch_usage_is_split_exactly_over_its_atoms():
    server = await _server()
    seen = []
    llm = OpenAICompatibleLLM(server.url, "k")

    async def send(request):
        completion = await llm.complete(request)
        seen.append(completion)
        return completion

    batcher = RequestBatcher(send, BatchConfig(max_batch=3, window_s=5.0))
    try:
        answers = await _submit_all(batcher, [_request(a) for a in ATOMS[:3]])
    finally:
        await llm.close()
        await server.stop()

    (combined,) = seen
    assert sum(a.prompt_tokens for a in answers) == combined.prompt_tokens
    assert sum(a.completion_tokens for a in answers) == combined.completion_tokens


async def test_a_window_sends_what_arrived_when_it_closes():
    server = await _server()
    llm = OpenAICompatibleLLM(server.url, "k")
    batcher = RequestBatcher(llm.complete, BatchConfig(max_batch=5, window_s=0.05))
    try:
        answers = await asyncio.wait_for(_submit_all(batcher, [_request("a0"), _request("a1")]), 2)
        lone = await asyncio.wait_for(batcher.submit(_request("a2")), 2)
    finally:
        await llm.close()
        await server.stop()

    assert [a.content for a in answers] == [RECORDINGS["a0"][1], RECORDINGS["a1"][1]]
    assert lone.content == RECORDINGS["a2"][1]
    assert server.stats.requests == 2
    assert server.stats.calls_per_atom["a2"] == 1  # sent alone, as an ordinary request


async def test_atoms_the_answer_lacks_are_sent_again_alone_and_pay_for_both():
    server = await _server(drop={"a1"})
    llm = OpenAICompatibleLLM(server.url, "k")
    batcher = RequestBatcher(llm.complete, BatchConfig(max_batch=3, window_s=5.0))
    try:
        answers = await _submit_all(batcher, [_request(a) for a in ATOMS[:3]])
    finally:
        await llm.close()
        await server.stop()

    assert [a.content for a in answers] == [RECORDINGS[a][1] for a in ATOMS[:3]]
    assert server.stats.requests == 2
    assert server.stats.calls_per_atom["a1"] == 1
    assert batcher.stats.fallbacks == 1
    # a1 carries its share of the batch plus its own request.
    assert answers[1].prompt_tokens > answers[0].prompt_tokens


async def test_an_answer_that_cannot_be_split_falls_back_to_single_requests():
    server = await _server(garble=True)
    llm = OpenAICompatibleLLM(server.url, "k")
    batcher = RequestBatcher(llm.complete, BatchConfig(max_batch=4, window_s=5.0))
    try:
        answers = await _submit_all(batcher, [_request(a) for a in ATOMS[:4]])
    finally:
        await llm.close()
        await server.stop()

    assert [a.content for a in answers] == [RECORDINGS[a][1] for a in ATOMS[:4]]
    assert server.stats.requests == 5
    assert batcher.stats.fallbacks == 4


async def test_repairs_and_large_prompts_are_never_batched():
    server = await _server()
    llm = OpenAICompatibleLLM(server.url, "k")
    batcher = RequestBatcher(llm.complete, BatchConfig(max_batch=5, window_s=5.0, max_prompt_tokens=20))
    # The system prompt alone is over 20 tokens: every first attempt here counts as large.
    try:
        repair = await asyncio.wait_for(batcher.submit(_request("a0", attempt=2)), 2)
        large = await asyncio.wait_for(batcher.submit(_request("a1")), 2)
    finally:
        await llm.close()
        await server.stop()

    assert repair.content == RECORDINGS["a0"][1]
    assert large.content == RECORDINGS["a1"][1]
    assert server.stats.calls_per_atom["a0"] == 1
    assert server.stats.calls_per_atom["a1"] == 1


async def test_calls_with_different_sampling_never_share_a_request():
    server = await _server()
    llm = OpenAICompatibleLLM(server.url, "k")
    batcher = RequestBatcher(llm.complete, BatchConfig(max_batch=2, window_s=0.05))
    try:
        await _submit_all(batcher, [_request("a0"), _request("a1", temperature=0.5)])
    finally:
        await llm.close()
        await server.stop()

    assert server.stats.requests == 2
    assert server.stats.calls_per_atom == {"a0": 1, "a1": 1}


async def test_a_batch_waits_for_the_providers_room_and_its_headers_reach_the_first_items_gate():
    """Batches and their fallbacks are sent from the batcher's task: without the submitters' rate-limit hooks
    they went out with no wait for the room the provider's headers announce, and their headers were never
    read. Each request now carries the hooks of the call whose answer it is (a batch: its first item's)."""
    server = FakeLLM(FakeLLMConfig(requests_per_minute=100), responder=batch_responder(RECORDINGS))
    server.recordings = {atom: dict(answers) for atom, answers in RECORDINGS.items()}
    await server.start()
    llm = OpenAICompatibleLLM(server.url, "k")
    batcher = RequestBatcher(llm.complete, BatchConfig(max_batch=3, window_s=0.2))
    sent: dict[str, int] = dict.fromkeys(ATOMS[:4], 0)
    heard: dict[str, list[str]] = {atom: [] for atom in ATOMS[:4]}

    async def submit(atom: str, **options):
        async def before_send() -> None:
            sent[atom] += 1

        def headers(values) -> None:
            heard[atom].append(values["x-ratelimit-remaining-requests"])

        with retries_reported_to(None, headers, before_send):
            return await batcher.submit(_request(atom, **options))

    try:
        # a3 cannot share their request (another temperature): after the window it is sent alone.
        *_, alone = await asyncio.wait_for(
            asyncio.gather(*(submit(a) for a in ATOMS[:3]), submit("a3", temperature=0.5)), 5
        )
    finally:
        await batcher.close()
        await llm.close()
        await server.stop()

    assert alone.content == RECORDINGS["a3"][1]
    assert server.stats.requests == 2
    assert sent == {"a0": 1, "a1": 0, "a2": 0, "a3": 1}
    assert [len(heard[atom]) for atom in ATOMS[:4]] == [1, 0, 0, 1]


async def test_a_retry_of_the_batch_is_reported_to_the_item_whose_answer_carries_it():
    server = await _server()
    server.inject(Fault(429, retry_after=0.01))
    llm = OpenAICompatibleLLM(server.url, "k", backoff_base_s=0.01, backoff_cap_s=0.05)
    batcher = RequestBatcher(llm.complete, BatchConfig(max_batch=3, window_s=5.0))
    heard: dict[str, list[str]] = {atom: [] for atom in ATOMS[:3]}

    async def submit(atom: str):
        # The third submitter fills the batch, so the batch is sent from a task started in its context.
        with retries_reported_to(heard[atom].append):
            return await batcher.submit(_request(atom))

    try:
        answers = await asyncio.wait_for(asyncio.gather(*(submit(a) for a in ATOMS[:3])), 5)
    finally:
        await batcher.close()
        await llm.close()
        await server.stop()

    assert server.stats.requests == 2  # the 429, then the batch again
    assert [len(a.retried_errors) for a in answers] == [1, 0, 0]
    assert [len(heard[atom]) for atom in ATOMS[:3]] == [1, 0, 0]
