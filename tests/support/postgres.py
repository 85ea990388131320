"""DSN helpers for the test Postgres server."""


def with_database(dsn: str, database: str) -> str:
    """The same server, another database (DSNs here use a unix socket in the query string)."""
    base, _, query = dsn.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{database}" + (f"?{query}" if query else "")
