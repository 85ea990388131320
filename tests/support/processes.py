"""Every process the test suite starts ends with it: what is still alive at the end of the run is a failure."""

import contextlib
import os
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from mge.adapters.watchdog import start_time, stop_process

SESSION_VARIABLE = "MGE_TEST_SESSION"


@dataclass(frozen=True)
class Session:
    """The suite's processes carry a marker in their environment (children inherit it); those started with
    an environment of their own (sandboxed tests) are recognised while they are still the suite's children."""

    token: str

    @classmethod
    def mark(cls) -> "Session":
        token = uuid.uuid4().hex
        os.environ[SESSION_VARIABLE] = token
        return cls(token)

    def _carries_marker(self, pid: int) -> bool:
        marker = f"{SESSION_VARIABLE}={self.token}".encode()
        with contextlib.suppress(OSError):
            return marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        return False

    def leftovers(self) -> dict[int, str]:
        """pid -> command line of the suite's processes still running (this process and its watchdog aside)."""
        found = {}
        for entry in Path("/proc").iterdir():
            if (
                not entry.name.isdigit()
                or int(entry.name) == os.getpid()
                or start_time(int(entry.name)) is None
            ):
                continue
            pid = int(entry.name)
            try:
                command = (
                    (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                )
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            # The suite's own watchdog ends when the suite does: it stops what the suite failed to.
            if parent == os.getpid() and "mge.adapters.watchdog" in command:
                continue
            if parent == os.getpid() or self._carries_marker(pid):
                found[pid] = command
        return found

    def wait_for_leftovers(self, seconds: float) -> dict[int, str]:
        """Leftovers once servers that are shutting down had `seconds` to finish."""
        deadline = time.monotonic() + seconds
        while (found := self.leftovers()) and time.monotonic() < deadline:
            time.sleep(0.1)
        return found

    @staticmethod
    def stop(pids: dict[int, str]) -> None:
        for pid in pids:
            with contextlib.suppress(OSError):
                stop_process(pid, start_time(pid), grace_s=2.0)
                os.kill(pid, signal.SIGKILL)
