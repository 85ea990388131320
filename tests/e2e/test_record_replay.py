"""`mge run --llm openai --record` keeps every answer; `--llm replay` then runs the same plan for free."""

import shutil
from pathlib import Path

import pytest

from tests.support.cli import run_mge
from tests.support.fake_llm import FakeLLM

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
HELLO = REPO / "examples" / "hello"


_mge = run_mge


def _files(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): p.read_text() for p in sorted(out.rglob("*.py"))}


async def test_a_recorded_run_replays_offline_to_the_same_project_and_gate(folder):
    plan = folder / "hello"
    shutil.copytree(HELLO, plan)
    (plan / "responses.jsonl").unlink()  # a plan of the user's own, never run before
    provider = FakeLLM()
    provider.load_recording(HELLO / "responses.jsonl")  # the "real" model's answers
    await provider.start()
    try:
        code, paid = await _mge(
            "run", str(plan), "--llm", "openai", "--record",
            "--state-dir", str(folder / "s1"), "--out", str(folder / "o1"),
            OPENAI_BASE_URL=provider.url, OPENAI_API_KEY="k",
        )  # fmt: skip
    finally:
        await provider.stop()
    assert code == 0, paid
    assert "Gate S │ passed: MUST 100%" in paid
    recording = plan / "responses.jsonl"
    assert f"Recorded the answers in {recording}" in paid
    recorded = recording.read_text().splitlines()
    assert len(recorded) == provider.stats.completed  # every answer the endpoint gave, one line each

    # The endpoint is gone; the recording is all there is.
    code, replayed = await _mge(
        "run", str(plan), "--llm", "replay", "--no-cache",
        "--state-dir", str(folder / "s2"), "--out", str(folder / "o2"),
    )  # fmt: skip
    assert code == 0, replayed
    assert "REPLAY of recorded responses" in replayed
    assert "Gate S │ passed: MUST 100%" in replayed
    assert _files(folder / "o2") == _files(folder / "o1")


async def test_record_never_overwrites_a_recording_and_needs_a_real_endpoint(folder):
    plan = folder / "hello"
    shutil.copytree(HELLO, plan)
    before = (plan / "responses.jsonl").read_text()

    code, output = await _mge(
        "run", str(plan), "--llm", "openai", "--record", OPENAI_BASE_URL="http://127.0.0.1:9"
    )
    assert code == 2
    assert "exists and --record never overwrites a recording" in output
    code, output = await _mge("run", str(plan), "--record")
    assert code == 2
    assert "use it with --llm openai, not --llm replay" in output
    assert (plan / "responses.jsonl").read_text() == before
