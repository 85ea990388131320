"""Applies the ordered SQL files in migrations/ once each, recorded in schema_migrations."""

from importlib import resources
from typing import Final

import asyncpg

# Any fixed key: serialises migrations when several operators/executors start at once.
_MIGRATION_LOCK: Final = 0x6D6765  # "mge"


def migration_files() -> list[tuple[str, str]]:
    """(version, sql) in order; the version is the file name without `.sql`."""
    folder = resources.files("mge.adapters.store") / "migrations"
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return [(f.name.removesuffix(".sql"), f.read_text()) for f in files]


async def migrate(
    connection: "asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]",
) -> list[str]:
    """Bring the schema up to date; returns the versions applied now (empty when already current)."""
    applied_now = []
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await connection.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version text PRIMARY KEY,
                   applied_at timestamptz NOT NULL DEFAULT now()
               )"""
        )
        done = {row["version"] for row in await connection.fetch("SELECT version FROM schema_migrations")}
        for version, sql in migration_files():
            if version in done:
                continue
            await connection.execute(sql)
            await connection.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            applied_now.append(version)
    return applied_now
