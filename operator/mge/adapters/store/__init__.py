"""Postgres store: migrations, the atom queue, progress aggregates (asyncpg)."""
