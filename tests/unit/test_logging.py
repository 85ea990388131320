"""Log lines: one short JSON object per line with the trace_id, whatever kopf attaches to the record."""

import io
import json
import logging

import kopf
from kopf._core.actions.loggers import ObjectLogger

from mge.trace.context import JsonLogFormatter, configure_logging, current_trace_id


def _line(emit) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    try:
        emit()
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    (line,) = stream.getvalue().splitlines()
    return line


def test_a_kopf_handler_line_is_short_and_carries_no_operator_settings():
    """kopf's per-object logger puts the whole OperatorSettings on every record (to post Events)."""
    body = kopf.Body(
        {
            "apiVersion": "mge.devmatrix.io/v1alpha1",
            "kind": "Masterplan",
            "metadata": {"name": "hello", "namespace": "team-a", "uid": "u-1"},
        }
    )
    logger = ObjectLogger(body=body, settings=kopf.OperatorSettings())
    token = current_trace_id.set("00000000-0000-4000-8000-000000000001")
    try:
        line = _line(lambda: logger.info("planned 6 atoms in 3 waves"))
    finally:
        current_trace_id.reset(token)

    assert len(line) < 400, line
    assert "OperatorSettings" not in line
    record = json.loads(line)
    assert record["message"] == "planned 6 atoms in 3 waves"
    assert record["trace_id"] == "00000000-0000-4000-8000-000000000001"
    assert record["k8s_ref"]["name"] == "hello"
    assert "settings" not in record


def test_extras_that_are_not_plain_data_are_left_out():
    line = _line(lambda: logging.getLogger("mge.x").info("hi", extra={"atom": "a1", "blob": object()}))

    record = json.loads(line)
    assert record["atom"] == "a1"
    assert "blob" not in record


def test_log_format_text_is_one_plain_line():
    stream = io.StringIO()
    configure_logging("INFO", "text")
    root = logging.getLogger()
    root.handlers[0].setStream(stream)
    try:
        logging.getLogger("mge.x").info("hello")
    finally:
        root.handlers[:] = []
    assert stream.getvalue().rstrip().endswith("INFO mge.x hello")
