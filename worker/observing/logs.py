"""Logging for every component: the flow id on each line, JSON with LOG_FORMAT=json, secrets redacted."""

from __future__ import annotations

import ast
import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar

from worker.events import utc_timestamp
from worker.observing.redaction import install_log_redaction, redacting_filter
from worker.queueing.names import FLOW_TASKS  # tasks whose one argument is a flow id

current_flow: ContextVar[str] = ContextVar("current_flow", default="-")


@contextmanager
def flow_context(flow_id: str) -> Iterator[None]:
    """Everything logged inside names this flow."""
    token = current_flow.set(flow_id)
    try:
        yield
    finally:
        current_flow.reset(token)


class FlowContextFilter(logging.Filter):
    """Puts the flow being worked on into every record, as `record.flow_id`.

    Celery logs a task's "received" and "succeeded" lines outside the task's body, with the task's name
    and arguments in `record.data`: the flow tasks take the flow id alone, so it is read from there (a
    delivery task's one argument is a delivery id, not a flow's).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "flow_id"):
            flow_id = current_flow.get()
            record.flow_id = flow_id if flow_id != "-" else _task_flow_id(getattr(record, "data", None))
        return True


def _task_flow_id(data: object) -> str:
    if not isinstance(data, dict) or data.get("name") not in FLOW_TASKS:
        return "-"
    args = data.get("args")
    if isinstance(args, str):  # Celery passes the arguments' repr
        with suppress(ValueError, SyntaxError, MemoryError, RecursionError):
            args = ast.literal_eval(args)
    if isinstance(args, list | tuple) and len(args) == 1 and isinstance(args[0], str):
        return args[0]
    return "-"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "at": utc_timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "flow_id": getattr(record, "flow_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [flow %(flow_id)s] %(message)s"
# every control character (CR and LF among them) that a request could bring into a message
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _escaped(text: str) -> str:
    return _CONTROL.sub(lambda found: repr(found.group())[1:-1], text)


class TextFormatter(logging.Formatter):
    """One line per record, whatever the request put into it: control characters are escaped, so no
    request can end a line and forge the next one. A traceback keeps its own lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = _escaped(record.message)
        record.flow_id = _escaped(str(getattr(record, "flow_id", "-")))
        return super().formatMessage(record)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """One stderr handler on the root logger; redaction runs on the handler, so it sees every record."""
    install_log_redaction()
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(FlowContextFilter())
    handler.addFilter(redacting_filter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    # uvicorn's access log prints the query string, which holds okt: the shim logs its own access lines
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("uvicorn", "uvicorn.error", "celery", "kombu"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
