"""`mge run --resume` after the process was killed mid-call, near the budget: the dead run's reservations
(money it never spent) are given back, so the resumed run finishes instead of stopping at the hard cap."""

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support.fake_llm import FakeLLM, FakeLLMConfig

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
HELLO = REPO / "examples" / "hello"


@pytest.fixture
def state():
    """Not under tmp_path: embedded Postgres runs as its own user when the tests run as root."""
    folder = Path(tempfile.mkdtemp(prefix="mge-resume-"))
    yield folder / "state"
    # The killed run's embedded Postgres outlives it; stop the ones this test started.
    for pid_file in folder.rglob("postmaster.pid"):
        with contextlib.suppress(ValueError, OSError):
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
    shutil.rmtree(folder, ignore_errors=True)


async def _mge(*args: str, url: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mge.cli",
        *args,
        env={
            **os.environ,
            "COLUMNS": "160",
            "PYTHONPATH": str(REPO / "operator"),
            "OPENAI_BASE_URL": url,
            "OPENAI_API_KEY": "k",
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_resume_after_a_kill_mid_call_gives_back_the_dead_runs_reservation(tmp_path, state):
    # The whole run spends about $0.0011, but each call reserves about $0.0013 (its 2,048-token worst case):
    # $0.0025 holds one call's reservation beside another's, not the dead call's and a new one's.
    plan = tmp_path / "masterplan.yaml"
    plan.write_text((HELLO / "masterplan.yaml").read_text().replace("limitUSD: 5", "limitUSD: 0.0025"))
    (tmp_path / "responses.jsonl").write_text((HELLO / "responses.jsonl").read_text())
    llm = FakeLLM(FakeLLMConfig(base_latency_s=20))
    llm.load_recording(HELLO / "responses.jsonl")
    await llm.start()
    args = ["run", str(plan), "--llm", "openai", "--state-dir", str(state), "--out", str(tmp_path / "out")]
    args += ["--executors", "1", "--concurrency", "1"]
    try:
        killed = await _mge(*args, url=llm.url)
        async with asyncio.timeout(60):
            while llm.stats.in_flight == 0:  # its first call is out: its reservation is held
                await asyncio.sleep(0.05)
        killed.kill()
        await killed.wait()
        llm.config.base_latency_s = 0.0

        resumed = await _mge(*args, "--resume", url=llm.url)
        out, err = await asyncio.wait_for(resumed.communicate(), 120)
    finally:
        await llm.stop()

    report = " ".join(out.decode().split())
    assert resumed.returncode == 0, out.decode() + err.decode()
    assert "6 succeeded" in report
