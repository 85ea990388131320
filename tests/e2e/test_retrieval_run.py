"""`mge run` of a plan whose atoms need its reference material (examples/pricing), against a real HTTP
endpoint that serves chat answers and embeddings and refuses any other key: the handbook's rules reach the
prompts that need them, embeddings are paid through the ledger, and a re-run is served by the caches."""

import re
import shutil
from pathlib import Path

import pytest

from tests.support.cli import run_mge
from tests.support.fake_llm import FakeLLM, FakeLLMConfig

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
PRICING = REPO / "examples" / "pricing"


def _prompt(provider: FakeLLM, atom: str) -> str:
    return next(text for seen, text in provider.stats.prompts if seen == atom)


async def test_the_handbook_reaches_the_atoms_and_a_rerun_is_served_by_the_caches(folder):
    plan = folder / "pricing"
    shutil.copytree(PRICING, plan)
    provider = FakeLLM(FakeLLMConfig(api_key="sk-pricing"))
    provider.load_recording(PRICING / "responses.jsonl")
    await provider.start()
    try:
        runs = []
        for run in ("first", "again"):
            code, output = await run_mge(
                "run", str(plan), "--llm", "openai",
                "--state-dir", str(folder / f"state-{run}"), "--out", str(folder / f"out-{run}"),
                "--cache-dir", str(folder / "cache"),
                OPENAI_BASE_URL=provider.url, OPENAI_API_KEY="sk-pricing",
            )  # fmt: skip
            assert code == 0, output
            assert "Gate S │ passed: MUST 100%, SHOULD 100%" in output
            runs.append((output, provider.stats.completed, provider.stats.embedding_requests))
    finally:
        await provider.stop()

    # Each atom's prompt carries the handbook section its description only points at.
    assert "ROUND_HALF_UP" in _prompt(provider, "fees")
    assert "2.9 percent" in _prompt(provider, "rates")
    assert "EUR <amount> + fee EUR <fee> = EUR <total>" in _prompt(provider, "receipt")
    assert "generated/pricing/fees.py" in _prompt(provider, "receipt")  # a dependency's file, labelled
    assert "generated/" not in _prompt(provider, "rates")  # nothing generated before the first wave
    # Acceptance tests are generated from the requirements; they carry no retrieved context.
    assert "[configmap/" not in _prompt(provider, "acceptance/MUST-1")

    (first, chats, embeddings), (again, chats_again, embeddings_again) = runs
    assert embeddings > 0, "the chunks and queries were embedded by the endpoint"
    assert set(provider.stats.authorizations) == {"Bearer sk-pricing"}
    assert "Retrieval │ 0 of 4 atom contexts from the RAG cache" in first
    # The re-run: every retrieval and every generation from the caches; nothing embedded or generated again.
    assert "Retrieval │ 4 of 4 atom contexts from the RAG cache (100%)" in again
    combined = re.search(r"prompt and RAG caches together (\d+) of (\d+) \((\d+)%\)", again)
    assert combined is not None, again
    assert int(combined.group(3)) >= 60
    assert embeddings_again == embeddings
    assert {a: provider.stats.calls_per_atom[a] for a in ("rates", "fees", "receipt", "package")} == {
        "rates": 1,
        "fees": 1,
        "receipt": 1,
        "package": 1,
    }
    assert chats_again > chats  # acceptance tests are generated again: only atoms' answers are prompt-cached
    # The embeddings were paid for (a price in the table) and the run's cost says so.
    assert re.search(r"Cost │ \$0\.\d+", first)
