"""The OpenAI-compatible client against a real HTTP server: retries, Retry-After, usage, hard failures, and
the concurrency gate hearing of retries as they happen."""

import asyncio
import time
from collections import deque

import pytest

from mge.adapters.llm import ChatRequest, EndpointUnavailable, LLMError, OpenAICompatibleLLM
from mge.concurrency.limiter import Adjustment, Outcome
from mge.executor.gate import CallGate, SlotUnavailable
from tests.support.fake_llm import FakeLLM, FakeLLMConfig, Fault

pytestmark = pytest.mark.component

REQUEST = ChatRequest(
    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=50, atom_id="a"
)


@pytest.fixture
async def server():
    fake = FakeLLM()
    await fake.start()
    yield fake
    await fake.stop()


def _client(fake: FakeLLM, **options) -> OpenAICompatibleLLM:
    defaults = {"backoff_base_s": 0.01, "backoff_cap_s": 0.05, "jitter": lambda: 1.0}
    return OpenAICompatibleLLM(fake.url, "test-key", **{**defaults, **options})


async def test_usage_and_content_come_from_the_response(server):
    client = _client(server)
    try:
        completion = await client.complete(REQUEST)
    finally:
        await client.close()

    assert "VALUE = 1" in completion.content
    assert completion.prompt_tokens > 0
    assert completion.completion_tokens > 0


async def test_429_and_5xx_are_retried_and_reported(server):
    server.inject(Fault(429), Fault(503), Fault(500))
    client = _client(server)
    try:
        completion = await client.complete(REQUEST)
    finally:
        await client.close()

    assert server.stats.requests == 4
    assert [e.split(":")[0] for e in completion.retried_errors] == ["HTTP 429", "HTTP 503", "HTTP 500"]


async def test_retry_after_is_honoured(server):
    server.inject(Fault(429, retry_after=0.3))
    client = _client(server, backoff_cap_s=1.0)
    started = time.monotonic()
    try:
        await client.complete(REQUEST)
    finally:
        await client.close()

    assert time.monotonic() - started >= 0.3


async def test_garbage_body_is_retried(server):
    server.inject(Fault("garbage"))
    client = _client(server)
    try:
        completion = await client.complete(REQUEST)
    finally:
        await client.close()

    assert completion.retried_errors
    assert "malformed response" in completion.retried_errors[0]


async def test_a_malformed_usage_block_is_an_llm_error_naming_it_and_is_not_paid_for_again(server):
    server.inject(Fault("bad_usage"))
    client = _client(server)
    try:
        with pytest.raises(LLMError, match=r"malformed `usage` block.*many"):
            await client.complete(REQUEST)
    finally:
        await client.close()

    assert server.stats.requests == 1


async def test_timeouts_are_retried(server):
    server.config.hang_s = 1.0
    server.inject(Fault("timeout"))
    client = _client(server, timeout_s=0.2)
    try:
        completion = await client.complete(REQUEST)
    finally:
        await client.close()

    assert "timeout" in completion.retried_errors[0]


async def test_client_errors_fail_at_once_with_the_body(server):
    server.inject(Fault(400))
    client = _client(server)
    try:
        with pytest.raises(LLMError, match="HTTP 400") as raised:
            await client.complete(REQUEST)
    finally:
        await client.close()

    assert server.stats.requests == 1
    assert not isinstance(raised.value, EndpointUnavailable)  # the request's own fault: its atom's attempt


async def test_a_refused_key_is_the_endpoint_not_the_atom(server):
    server.inject(Fault(401))
    client = _client(server)
    try:
        with pytest.raises(EndpointUnavailable, match="refused our API key: HTTP 401"):
            await client.complete(REQUEST)
    finally:
        await client.close()


async def test_an_endpoint_that_refuses_connections_is_unavailable():
    fake = FakeLLM()
    await fake.start()
    await fake.stop()  # nothing listens on its port any more
    client = _client(fake, max_attempts=2)
    try:
        with pytest.raises(EndpointUnavailable, match="connection error"):
            await client.complete(REQUEST)
    finally:
        await client.close()


async def test_persistent_failure_gives_up_after_the_attempt_budget(server):
    server.inject(*[Fault(503)] * 10)
    client = _client(server, max_attempts=3)
    try:
        with pytest.raises(EndpointUnavailable, match="after 3 attempts"):
            await client.complete(REQUEST)
    finally:
        await client.close()

    assert server.stats.requests == 3


async def test_trace_and_atom_travel_as_headers(server):
    trace_id = "3f2b9c1e-8d4a-4e1f-9b6c-2a7d5e8f0c11"
    client = _client(server)
    try:
        await client.complete(
            ChatRequest(model="m", messages=[], max_tokens=5, trace_id=trace_id, atom_id="x")
        )
    finally:
        await client.close()

    assert trace_id in server.stats.trace_ids
    assert server.stats.calls_per_atom["x"] == 1
    # W3C Trace Context: version-traceid-spanid-flags, the plan's uuid as the trace id, sampled.
    (header,) = server.stats.traceparents
    version, trace_hex, span_hex, flags = header.split("-")
    assert (version, trace_hex, flags) == ("00", trace_id.replace("-", ""), "01")
    assert len(span_hex) == 16
    assert span_hex != "0" * 16


async def test_a_trace_id_that_is_not_a_uuid_still_gets_a_valid_traceparent(server):
    client = _client(server)
    try:
        await client.complete(ChatRequest(model="m", messages=[], max_tokens=5, trace_id="trace-9"))
    finally:
        await client.close()

    assert "trace-9" in server.stats.trace_ids
    (header,) = server.stats.traceparents
    assert len(header.split("-")[1]) == 32
    assert header.split("-")[1] != "0" * 32


class _RecordingLimiter:
    """Keeps every outcome the gate reports, with the time; the limit never moves."""

    def __init__(self) -> None:
        self.limit = 4
        self.adjustments: deque[Adjustment] = deque()
        self.outcomes: list[tuple[Outcome, float]] = []

    def record(self, outcome, *, in_flight, now, latency_s=0.0, tokens=0, started_with=None) -> None:
        self.outcomes.append((outcome, now))


async def test_the_gate_hears_of_a_429_while_the_call_is_still_retrying(server):
    server.inject(Fault(429, retry_after=0.3))
    client = _client(server, backoff_cap_s=1.0)
    limiter = _RecordingLimiter()
    gate = CallGate(limiter, "retry-test", queue_size=4, timeout_s=5.0)
    try:
        await gate.complete(lambda: client.complete(REQUEST), plan="p", critical_path=1, plan_priority=0)
        ended = time.monotonic()
    finally:
        await client.close()

    assert [outcome for outcome, _ in limiter.outcomes] == [Outcome.OVERLOADED, Outcome.OK]  # once each
    overloaded_at = limiter.outcomes[0][1]
    assert ended - overloaded_at >= 0.3  # heard before the Retry-After wait, not when the call ended


async def test_a_429_whose_headers_say_a_budget_is_spent_is_the_providers_pace_not_congestion():
    """Fewer calls in flight do not refill a requests-per-minute budget: the gate waits for the room the headers
    announce, and the limiter is told RATE_LIMITED (which it does not cut on), not OVERLOADED."""
    budgeted = FakeLLM(FakeLLMConfig(requests_per_minute=2, minute_s=1.0))
    await budgeted.start()
    client = _client(budgeted, backoff_cap_s=1.0)
    limiter = _RecordingLimiter()
    gate = CallGate(limiter, "budget-test", queue_size=4, timeout_s=5.0)
    try:
        # Nothing known before the first answers: the third of a burst of three meets the spent budget.
        await asyncio.gather(
            *(
                gate.complete(lambda: client.complete(REQUEST), plan="p", critical_path=1, plan_priority=0)
                for _ in range(3)
            )
        )
    finally:
        await client.close()
        await budgeted.stop()

    outcomes = [outcome for outcome, _ in limiter.outcomes]
    assert budgeted.stats.rate_limited >= 1
    assert outcomes.count(Outcome.RATE_LIMITED) == budgeted.stats.rate_limited, outcomes
    assert Outcome.OVERLOADED not in outcomes
    assert outcomes.count(Outcome.OK) == 3


async def test_calls_beyond_a_full_queue_wait_for_a_slot_and_give_up_only_at_the_deadline(server):
    server.config.base_latency_s = 0.2
    client = _client(server)
    limiter = _RecordingLimiter()
    limiter.limit = 1
    gate = CallGate(limiter, "full-queue", queue_size=1, timeout_s=5.0)
    impatient = CallGate(limiter, "impatient", queue_size=1, timeout_s=0.3)

    async def call(through: CallGate):
        return await through.complete(
            lambda: client.complete(REQUEST), plan="p", critical_path=1, plan_priority=0
        )

    try:
        answers = await asyncio.gather(*(call(gate) for _ in range(4)))
        started = time.monotonic()
        outcomes = await asyncio.gather(*(call(impatient) for _ in range(4)), return_exceptions=True)
        waited = time.monotonic() - started
    finally:
        await client.close()

    assert len(answers) == 4  # one in flight, one queued, two waiting for room in the queue
    assert server.stats.max_in_flight == 1
    refused = [o for o in outcomes if isinstance(o, SlotUnavailable)]
    assert refused
    assert all("backpressure queue full" in str(o) or "waited" in str(o) for o in refused)
    assert waited >= 0.3  # the ones refused waited for their deadline first
