"""Logging for every component: the flow id on each line, JSON with LOG_FORMAT=json, secrets redacted."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime

from worker.redaction import install_log_redaction, redacting_filter

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
    """Puts the flow being worked on into every record, as `record.flow_id`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "flow_id"):
            record.flow_id = current_flow.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "at": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "flow_id": getattr(record, "flow_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [flow %(flow_id)s] %(message)s"


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """One stderr handler on the root logger; redaction runs on the handler, so it sees every record."""
    install_log_redaction()
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(FlowContextFilter())
    handler.addFilter(redacting_filter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
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
