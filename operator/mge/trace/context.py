"""The trace_id of the work in progress, carried by a context variable into logs and outgoing calls."""

import json
import logging
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Final

current_trace_id: ContextVar[str | None] = ContextVar("current_trace_id", default=None)

_RECORD_FIELDS: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)))
# kopf's per-object logger puts its whole OperatorSettings (~2 KB as text) and a posting flag on every record.
_NOT_LOGGED: Final = frozenset({"settings", "k8s_skip"})
_PLAIN: Final = (str, int, float, bool, type(None), list, tuple, dict)


def new_trace_id() -> str:
    return str(uuid.uuid4())


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line, always with trace_id (null outside a Masterplan's work)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "trace_id": getattr(record, "trace_id", None) or current_trace_id.get(),
        }
        # Extras are kept when they are plain data: kopf's object reference (`k8s_ref`), an atom id. Objects
        # (settings, clients) would be dumped by their repr on every line.
        for key, value in vars(record).items():
            if key in _RECORD_FIELDS or key in line or key in _NOT_LOGGED or key.startswith("_"):
                continue
            if isinstance(value, _PLAIN):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
