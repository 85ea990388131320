"""The provider's rate-limit headers as a limiter signal, over real HTTP: calls the provider said it would
refuse are not started, so a requests- or tokens-per-minute budget costs waiting, not 429s and retries.

The provider is the fake OpenAI-compatible server (no real provider can run here) with OpenAI's continuous
budgets and headers, its minute scaled down to seconds as the benchmarks do.
"""

import asyncio
import time

import pytest

from mge.adapters.llm import ChatRequest, OpenAICompatibleLLM
from mge.concurrency.limiter import FixedLimiter
from mge.executor.gate import CallGate
from tests.support.fake_llm import FakeLLM, FakeLLMConfig, Fault

pytestmark = pytest.mark.component

CALLS = 40
IN_FLIGHT = 16
ROUNDING = 2


def _request(number: int, max_tokens: int = 20) -> ChatRequest:
    return ChatRequest(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "write it"}],
        max_tokens=max_tokens,
        atom_id=f"a{number}",
    )


async def _run(
    config: FakeLLMConfig, *, through_gate: bool, max_tokens: int = 20
) -> tuple[FakeLLM, float, CallGate]:
    fake = FakeLLM(config)
    await fake.start()
    client = OpenAICompatibleLLM(fake.url, "k", backoff_base_s=0.05, backoff_cap_s=0.5, max_attempts=30)
    gate = CallGate(FixedLimiter(IN_FLIGHT), f"rate-{through_gate}", queue_size=CALLS, timeout_s=60.0)
    room = asyncio.Semaphore(IN_FLIGHT)

    async def call(number: int) -> None:
        request = _request(number, max_tokens)
        if through_gate:
            await gate.complete(
                lambda: client.complete(request),
                plan="p",
                critical_path=1,
                plan_priority=0,
                tokens=request.rate_limit_tokens,
            )
        else:  # the same concurrency, deaf to the headers: only the client's own retries
            async with room:
                await client.complete(request)

    started = time.monotonic()
    try:
        await asyncio.gather(*(call(n) for n in range(CALLS)))
    finally:
        await client.close()
        await fake.stop()
    return fake, time.monotonic() - started, gate


async def test_a_requests_per_minute_budget_is_waited_for_instead_of_refused():
    # 20 requests per 2 s "minute": 10 per second, a burst of 20.
    config = FakeLLMConfig(base_latency_s=0.05, requests_per_minute=20, minute_s=2.0)
    deaf, deaf_s, _ = await _run(config, through_gate=False)
    ours, ours_s, gate = await _run(config, through_gate=True)

    assert deaf.stats.completed == ours.stats.completed == CALLS
    assert deaf.stats.rate_limited >= 10  # the baseline this test is about: it hammers the provider
    # Before the first answer nothing is known, so the first burst can overrun; after that, hardly any 429s
    # (the headers are rounded to whole requests and milliseconds, so a start can be a hair early).
    assert ours.stats.rate_limited <= IN_FLIGHT - 10 + ROUNDING, (
        ours.stats.rate_limited,
        deaf.stats.rate_limited,
    )
    # Waiting for the provider's room is not slower than being refused and retrying.
    assert ours_s <= deaf_s * 1.25 + 0.5, (ours_s, deaf_s)
    snapshot = gate.provider.snapshot(time.monotonic())
    assert snapshot is not None
    assert snapshot["limit_requests"] == 20


async def test_answers_slower_than_the_budget_refills_do_not_let_calls_through_that_the_provider_refuses():
    """A reading is what was left when its request was admitted, which is most of a second before its answer
    arrives here: read as a reading of the arrival, the calls sent in between were forgotten and the provider
    refused them (a 429 each, a limiter cut each in production)."""
    config = FakeLLMConfig(base_latency_s=0.6, requests_per_minute=12, minute_s=2.0)  # 6 per second
    ours, _, _ = await _run(config, through_gate=True)

    assert ours.stats.completed == CALLS
    # The first burst overruns (nothing is known before the first answer); after it, hardly any.
    burst_ended = sorted(ours.stats.arrivals)[IN_FLIGHT - 1] + 0.05
    later = [round(at - burst_ended, 2) for at in ours.stats.refusals_429 if at > burst_ended]
    assert len(later) <= ROUNDING, later


async def test_a_tokens_per_minute_budget_holds_calls_whose_tokens_do_not_fit():
    # Each call takes 2 + 200 tokens; 2,000 tokens per 1 s "minute": about 10 calls per second.
    config = FakeLLMConfig(base_latency_s=0.02, tokens_per_minute=2000, minute_s=1.0)
    deaf, _, _ = await _run(config, through_gate=False, max_tokens=200)
    ours, _, gate = await _run(config, through_gate=True, max_tokens=200)

    assert deaf.stats.completed == ours.stats.completed == CALLS
    assert deaf.stats.rate_limited >= 10
    assert ours.stats.rate_limited <= IN_FLIGHT - 9 + ROUNDING, (
        ours.stats.rate_limited,
        deaf.stats.rate_limited,
    )
    snapshot = gate.provider.snapshot(time.monotonic())
    assert snapshot is not None
    assert snapshot["limit_tokens"] == 2000


async def test_a_429_with_retry_after_holds_the_calls_not_yet_sent():
    """One call is refused with Retry-After 0.5 s (no rate-limit headers at all): the calls queued behind it are
    not sent until the pause is over, where a client deaf to it sends them and meets the same refusal."""
    fake = FakeLLM(FakeLLMConfig(base_latency_s=0.05))
    fake.inject(Fault(429, retry_after=0.5))
    await fake.start()
    client = OpenAICompatibleLLM(fake.url, "k", backoff_base_s=0.01, backoff_cap_s=0.5)
    gate = CallGate(FixedLimiter(4), "retry-after", queue_size=16, timeout_s=30.0)

    async def call(number: int) -> None:
        request = _request(number)
        await gate.complete(lambda: client.complete(request), plan="p", critical_path=1, plan_priority=0)

    try:
        await asyncio.gather(*(call(n) for n in range(12)))
    finally:
        await client.close()
        await fake.stop()

    assert fake.stats.completed == 12
    (refused_at,) = fake.stats.refusals_429
    # The first four went out together; everything else waited out the 0.5 s.
    sent_during_the_pause = [t for t in fake.stats.arrivals if refused_at + 0.02 < t < refused_at + 0.45]
    assert sent_during_the_pause == []
    assert sum(1 for t in fake.stats.arrivals if t >= refused_at + 0.45) == 12 - 3
