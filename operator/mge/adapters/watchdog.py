"""Stops the embedded servers of a process that died without stopping them (kill -9, OOM killer, crash).

Postgres and redis-server daemonise, so they outlive the process that started it unless someone stops them.
The watchdog is a small child that reads "+<pid> <start time>" (watch) and "-<pid>" (forget) lines on its stdin;
its stdin reaches end of file only when the parent is gone, however it died, and then it stops what is left.
"""

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

_STOP_GRACE_S = 10.0


def start_time(pid: int) -> str | None:
    """The start time (clock ticks since boot) of a running process; None once it is gone or a zombie.

    With the pid, it names one process for good: a pid reused later has another start time.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count fields after its closing ')'.
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def stop_process(pid: int, started: str | None, grace_s: float = _STOP_GRACE_S) -> None:
    """SIGINT (a fast, clean shutdown for postgres and redis-server), SIGKILL if it lingers; never a reused pid."""
    if started is None or start_time(pid) != started:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + grace_s
        while start_time(pid) == started and time.monotonic() < deadline:
            time.sleep(0.05)
        if start_time(pid) == started:
            os.kill(pid, signal.SIGKILL)


class Watchdog:
    """The parent's side: one watchdog process per process, started on first use."""

    _lock = threading.Lock()
    _process: "subprocess.Popen[str] | None" = None
    _owner = 0

    @classmethod
    def _stdin(cls) -> IO[str]:
        if cls._process is None or cls._owner != os.getpid() or cls._process.poll() is not None:
            cls._process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mge.adapters.watchdog",
                    str(os.getpid()),
                    str(start_time(os.getpid())),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                text=True,
                # Its own session: Ctrl-C in the terminal is for the parent, which then stops its servers itself.
                start_new_session=True,
            )
            cls._owner = os.getpid()
        assert cls._process.stdin is not None
        return cls._process.stdin

    @classmethod
    def watch(cls, pid: int) -> None:
        with cls._lock:
            stdin = cls._stdin()
            stdin.write(f"+{pid} {start_time(pid)}\n")
            stdin.flush()

    @classmethod
    def forget(cls, pid: int) -> None:
        with cls._lock:
            if cls._process is not None and cls._owner == os.getpid() and cls._process.poll() is None:
                assert cls._process.stdin is not None
                with contextlib.suppress(BrokenPipeError):
                    cls._process.stdin.write(f"-{pid}\n")
                    cls._process.stdin.flush()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent, parent_started = int(sys.argv[1]), sys.argv[2]
    watched: dict[int, str | None] = {}
    for line in sys.stdin:
        head, _, started = line.strip().partition(" ")
        if head.startswith("+") and head[1:].isdigit():
            watched[int(head[1:])] = started or None
        elif head.startswith("-") and head[1:].isdigit():
            watched.pop(int(head[1:]), None)
    # End of file normally means the parent is gone; should its end of the pipe close while it lives on,
    # keep watching the parent itself (the start-time check makes stopping an already stopped server a no-op).
    while start_time(parent) == parent_started:
        time.sleep(0.2)
    for pid, started in watched.items():
        stop_process(pid, started)


if __name__ == "__main__":
    main()
