"""Every example against a provider that behaves like a real one, time-scaled as the benchmarks are (1/20):
1-5 s calls with jitter, sporadic 429/5xx, a requests-per-minute budget with rate-limit headers, and one
outage mid-run. Each must still pass Gate S with no atom failed for the provider's reasons.

The provider is the fake OpenAI-compatible server over real HTTP (no real model can run here), serving each
example's recorded answers.
"""

import asyncio
from pathlib import Path

import pytest

from tests.support.cli import run_mge
from tests.support.fake_llm import FakeLLM, FakeLLMConfig

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p.parent for p in (REPO / "examples").glob("*/masterplan.yaml"))
TIME_SCALE = 1 / 20


def _provider() -> FakeLLM:
    return FakeLLM(
        FakeLLMConfig(
            base_latency_s=1.0 * TIME_SCALE,
            latency_jitter_s=4.0 * TIME_SCALE,
            fault_rate=0.05,
            # 60 requests per scaled minute (3 s): 20 a second, below what 2 executors x 4 calls ask for.
            requests_per_minute=60,
            minute_s=60 * TIME_SCALE,
        )
    )


async def _outage(provider: FakeLLM, *, after_s: float, lasting_s: float) -> None:
    await asyncio.sleep(after_s)
    provider.down_with = 503
    await asyncio.sleep(lasting_s)
    provider.down_with = None


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
async def test_every_example_passes_gate_s_through_latency_faults_rate_limits_and_an_outage(example, folder):
    provider = _provider()
    provider.load_recording(example / "responses.jsonl")
    await provider.start()
    # 30 s of calls at real speed, 1.5 s here: long enough to catch atoms and acceptance tests in flight.
    outage = asyncio.create_task(_outage(provider, after_s=0.5, lasting_s=1.5))
    try:
        code, output = await run_mge(
            "run", str(example), "--llm", "openai", "--no-cache",
            "--state-dir", str(folder / "state"), "--out", str(folder / "out"),
            OPENAI_BASE_URL=provider.url, OPENAI_API_KEY="k", timeout_s=300,
        )  # fmt: skip
    finally:
        outage.cancel()
        await provider.stop()

    assert code == 0, output
    assert "Gate S │ passed: MUST 100%" in output
    assert " 0 failed, 0 blocked by failures" in output
    stats = provider.stats
    # The run met what it was meant to meet: refusals (sporadic and over budget) and the outage.
    assert stats.rejected > 0
    assert stats.requests > stats.completed
