"""`mge run` as a user runs it: a real process, embedded Postgres, the replay or an HTTP LLM, Ctrl-C, --resume."""

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.support.fake_llm import FakeLLM, FakeLLMConfig

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
HELLO = REPO / "examples" / "hello"


@pytest.fixture
def state(tmp_path):
    """Embedded Postgres data for a run. Not under tmp_path: Postgres runs as its own user when the tests run
    as root, and pytest resets its temp root to mode 0700 whenever another pytest session starts."""
    folder = Path(tempfile.mkdtemp(prefix="mge-run-"))
    yield folder / "state"
    shutil.rmtree(folder, ignore_errors=True)


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "COLUMNS": "160", "PYTHONPATH": str(REPO / "operator"), **extra}


def _mge(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mge.cli", *args], capture_output=True, text=True, env=_env(**env), timeout=120
    )


def test_replay_run_generates_a_project_whose_own_tests_pass(tmp_path, state):
    out = tmp_path / "out"

    result = _mge("run", str(HELLO), "--out", str(out), "--state-dir", str(state))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "REPLAY of recorded responses" in result.stdout
    assert "succeeded" in result.stdout
    assert "7 (1 rejected" in result.stdout
    # Piped (not a terminal), the live view's last line still ends before the report starts.
    assert any(line.lstrip().startswith("Report: Masterplan hello") for line in result.stdout.splitlines())
    report = " ".join(result.stdout.split())
    assert "Gate S │ passed: MUST 100%, SHOULD 100%" in report
    assert "Precision │ 100.0 (spec 100.0, integration 100.0, validation 100.0)" in report
    generated = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=out,
        capture_output=True,
        text=True,
    )
    assert generated.returncode == 0, generated.stdout
    assert "5 passed" in generated.stdout


def test_unknown_model_is_refused_before_anything_starts(state):
    result = _mge("run", str(HELLO), "--model", "gpt-99", "--state-dir", str(state))

    assert result.returncode == 2
    assert "no price for model 'gpt-99'" in result.stderr
    assert not state.exists()


def test_executor_with_unreachable_postgres_exits_naming_the_host():
    result = _mge(
        "executor", MGE_DATABASE_URL="postgresql://mge:secret@127.0.0.1:1/mge", MGE_LOG_FORMAT="text"
    )

    assert result.returncode == 2
    assert "cannot reach Postgres at 127.0.0.1:1" in result.stderr
    assert "secret" not in result.stderr


async def test_ctrl_c_stops_cleanly_and_resume_finishes_without_redoing_work(tmp_path, state):
    slow = FakeLLM(FakeLLMConfig(base_latency_s=0.6))
    slow.load_recording(HELLO / "responses.jsonl")
    await slow.start()
    out = tmp_path / "out"
    args = [
        "run",
        str(HELLO),
        "--llm",
        "openai",
        "--state-dir",
        str(state),
        "--out",
        str(out),
        "--executors",
        "1",
    ]
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mge.cli",
            *args,
            env=_env(OPENAI_BASE_URL=slow.url, OPENAI_API_KEY="k"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(60):
            while slow.stats.completed < 2:  # the first wave is done; later atoms are in flight or queued
                await asyncio.sleep(0.05)
        process.send_signal(signal.SIGINT)
        stdout, _ = await asyncio.wait_for(process.communicate(), 60)
        calls_before_resume = slow.stats.requests
        slow.config.base_latency_s = 0.0

        resumed = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mge.cli",
            *args,
            "--resume",
            env=_env(OPENAI_BASE_URL=slow.url, OPENAI_API_KEY="k"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        resumed_out, resumed_err = await asyncio.wait_for(resumed.communicate(), 60)
    finally:
        await slow.stop()

    assert process.returncode == 130
    assert "--resume" in stdout.decode()
    assert resumed.returncode == 0, resumed_out.decode() + resumed_err.decode()
    assert sorted(p.name for p in (out / "hello").iterdir()) == [
        "__init__.py",
        "__main__.py",
        "greet.py",
        "languages.py",
        "validation.py",
    ]
    # Every atom was generated once (greet twice: its recorded first answer is broken), across both runs.
    atom_calls = {a: n for a, n in slow.stats.calls_per_atom.items() if not a.startswith("acceptance/")}
    assert sum(atom_calls.values()) == 7
    assert calls_before_resume < 7 + 5  # 6 atoms (one repaired) + 5 acceptance tests


async def _state_query(state: Path, sql: str) -> object:
    """One value from the embedded Postgres of a running `mge run` (None while it is not up yet)."""
    import asyncpg

    pid_file = state / "postgres" / "postmaster.pid"
    # pid, data dir, start time, port, socket dir, host, shared memory, status ("ready" once it accepts)
    lines = pid_file.read_text().splitlines() if pid_file.exists() else []
    if len(lines) < 8 or lines[7].strip() != "ready":
        return None
    port, socket_dir = lines[3].strip(), lines[4].strip()
    try:
        connection = await asyncpg.connect(
            host=socket_dir or "127.0.0.1", port=int(port), user="postgres", timeout=5
        )
    except (OSError, asyncpg.PostgresError):
        return None
    try:
        return await connection.fetchval(sql)
    except asyncpg.UndefinedTableError:
        return None
    finally:
        await connection.close()


async def test_ctrl_c_while_acceptance_tests_run_resumes_to_a_passing_gate_without_paying_twice(
    tmp_path, state
):
    fake = FakeLLM(FakeLLMConfig(atom_latency_s={"tests": 60.0}))  # the last wave waits; wave 2's tests run
    fake.load_recording(HELLO / "responses.jsonl")
    await fake.start()
    args = ["run", str(HELLO), "--llm", "openai", "--state-dir", str(state), "--out", str(tmp_path / "out")]
    env = _env(OPENAI_BASE_URL=fake.url, OPENAI_API_KEY="k")
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mge.cli", *args, env=env, stdout=asyncio.subprocess.PIPE
        )
        async with asyncio.timeout(90):
            done = "SELECT count(*) FROM acceptance_wave_runs WHERE wave = 2 AND state = 'done'"
            while await _state_query(state, done) != 1:
                await asyncio.sleep(0.1)
        process.send_signal(signal.SIGINT)
        await asyncio.wait_for(process.communicate(), 60)
        fake.config.atom_latency_s.clear()

        resumed = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mge.cli",
            *args,
            "--resume",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        resumed_out, resumed_err = await asyncio.wait_for(resumed.communicate(), 90)
    finally:
        await fake.stop()

    assert process.returncode == 130
    report = " ".join(resumed_out.decode().split())
    assert resumed.returncode == 0, resumed_out.decode() + resumed_err.decode()
    assert "Gate S │ passed: MUST 100%, SHOULD 100%" in report
    acceptance_calls = {a: n for a, n in fake.stats.calls_per_atom.items() if a.startswith("acceptance/")}
    assert set(acceptance_calls.values()) == {1}, acceptance_calls  # each test was paid for once


def _tsc(project: Path) -> subprocess.CompletedProcess[str]:
    compiler = Path(sys.prefix) / "node" / "node_modules" / "typescript" / "bin" / "tsc"
    return subprocess.run(
        ["node", str(compiler), "-p", str(project)], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "example", ["inventory-api", "ts-utils", "mixed-shortener", "todo-api", "ts-toolkit", "mixed-notes"]
)
def test_every_example_replays_to_a_project_that_builds_and_passes_its_tests(example, tmp_path, state):
    out = tmp_path / "out"

    result = _mge("run", str(REPO / "examples" / example), "--out", str(out), "--state-dir", str(state))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "(2 rejected by validation" in result.stdout  # each recording repairs two broken answers
    # Every requirement of the example got a recorded acceptance test that passes against the generated code.
    assert "Gate S │ passed: MUST 100%, SHOULD 100%" in " ".join(result.stdout.split())
    if list(out.glob("tests/test_*.py")):
        tests = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
            cwd=out,
            capture_output=True,
            text=True,
        )
        assert tests.returncode == 0, tests.stdout
    for tsconfig in out.rglob("tsconfig.json"):
        compiled = _tsc(tsconfig.parent)
        assert compiled.returncode == 0, compiled.stdout


def test_a_project_that_misses_requirements_fails_gate_s_naming_them(tmp_path, state):
    broken = Path(__file__).parent / "fixtures" / "hello-broken"  # no Spanish, empty names accepted

    result = _mge("run", str(broken), "--out", str(tmp_path / "out"), "--state-dir", str(state))

    report = " ".join(result.stdout.split())
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Result │ FAILED" in report
    assert "6 succeeded, 0 failed" in report  # every atom validated: only the acceptance tests catch it
    assert "Gate S │ FAILED: MUST 67%, SHOULD 50% (failing: MUST-2, SHOULD-1)" in report
    assert "not passing: MUST-2 (failed), SHOULD-1 (failed)" in report
    assert "Precision │ 81.2 (spec 62.5, integration 100.0, validation 100.0)" in report


def test_hard_cap_stops_the_run_with_exit_3_and_a_raised_budget_resumes_it(tmp_path, state):
    plan = tmp_path / "masterplan.yaml"
    plan.write_text((HELLO / "masterplan.yaml").read_text().replace("limitUSD: 5", "limitUSD: 0.0005"))
    (tmp_path / "responses.jsonl").write_text((HELLO / "responses.jsonl").read_text())
    out = tmp_path / "out"

    held = _mge("run", str(plan), "--state-dir", str(state), "--out", str(out))
    plan.write_text(plan.read_text().replace("limitUSD: 0.0005", "limitUSD: 5"))
    resumed = _mge("run", str(plan), "--state-dir", str(state), "--out", str(out), "--resume")

    assert held.returncode == 3, held.stdout + held.stderr
    assert "stopped at the hard budget cap" in held.stdout
    assert "of $0.0005 budget" in " ".join(held.stdout.split())
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "6 succeeded" in resumed.stdout


def _without_llm_settings() -> dict[str, str]:
    return {k: v for k, v in _env().items() if not k.startswith("OPENAI_")}


def test_openai_without_a_key_or_an_endpoint_is_refused_at_once_naming_both(state):
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "mge.cli", "run", str(HELLO), "--llm", "openai", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        env=_without_llm_settings(),
        timeout=60,
    )

    assert result.returncode == 2, result.stdout + result.stderr
    assert "OPENAI_API_KEY" in result.stderr
    assert "OPENAI_BASE_URL" in result.stderr
    assert time.monotonic() - started < 30
    assert not state.exists()


def test_openai_with_an_unreachable_endpoint_is_refused_at_once_naming_it(state):
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "mge.cli", "run", str(HELLO), "--llm", "openai", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        env={
            **_without_llm_settings(),
            "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1",
            "OPENAI_API_KEY": "k",
        },
        timeout=60,
    )

    assert result.returncode == 2, result.stdout + result.stderr
    assert f"cannot reach the LLM endpoint: GET http://127.0.0.1:{port}/v1/models" in result.stderr
    assert "OPENAI_BASE_URL" in result.stderr
    assert time.monotonic() - started < 30
    assert not state.exists()


def test_requirements_without_must_or_should_fail_gate_s_locally_as_in_the_cluster(tmp_path, state):
    text = (HELLO / "masterplan.yaml").read_text()
    start, end = text.index("  requirements: |"), text.index("  atoms:")
    plan = tmp_path / "masterplan.yaml"
    plan.write_text(
        text[:start] + "  requirements: |\n    ## Requirements\n    - greets\n    - in Spanish\n" + text[end:]
    )
    (tmp_path / "responses.jsonl").write_text((HELLO / "responses.jsonl").read_text())

    result = _mge("run", str(plan), "--out", str(tmp_path / "out"), "--state-dir", str(state))

    report = " ".join(result.stdout.split())
    assert result.returncode == 1, result.stdout + result.stderr
    assert "6 succeeded, 0 failed" in report
    assert "Gate S │ FAILED: no requirement could be read" in report
    assert "Gate S failed: no MUST or SHOULD requirement could be read (line 1: no '### MUST' or" in report
