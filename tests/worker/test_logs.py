"""Log records carry the flow they are about: inside a task's body, and on Celery's own task lines."""

from __future__ import annotations

import logging

from worker.observing.logs import FlowContextFilter, flow_context


def record(data: object = None) -> logging.LogRecord:
    entry = logging.LogRecord("celery.app.trace", logging.INFO, __file__, 1, "Task %(name)s done", None, None)
    if data is not None:
        entry.data = data
    return entry


def flow_of(entry: logging.LogRecord) -> str:
    assert FlowContextFilter().filter(entry)
    return str(entry.flow_id)  # type: ignore[attr-defined]


def test_a_line_inside_a_task_names_its_flow() -> None:
    with flow_context("f" * 40):
        assert flow_of(record()) == "f" * 40
    assert flow_of(record()) == "-"


def test_celerys_received_and_succeeded_lines_name_the_flow_of_our_tasks() -> None:
    assert (
        flow_of(record({"name": "oktopost.verify", "args": "['abc123abc123abc123']"})) == "abc123abc123abc123"
    )
    assert flow_of(record({"name": "oktopost.complete", "args": ["a1b2c3d4e5f60718"]})) == "a1b2c3d4e5f60718"


def test_other_tasks_and_odd_arguments_name_no_flow() -> None:
    assert flow_of(record({"name": "other.task", "args": "['x']"})) == "-"
    assert flow_of(record({"name": "oktopost.deliver", "args": "['wh_delivery_id']"})) == "-"
    assert flow_of(record({"name": "oktopost.verify", "args": "not python"})) == "-"
    assert flow_of(record({"name": "oktopost.verify", "args": "['a', 'b']"})) == "-"
    assert flow_of(record("not a dict")) == "-"


def test_no_request_text_can_end_a_line_and_forge_the_next() -> None:
    import io

    from worker.observing.logs import TEXT_FORMAT, TextFormatter

    written = io.StringIO()
    handler = logging.StreamHandler(written)
    handler.setFormatter(TextFormatter(TEXT_FORMAT))
    handler.addFilter(FlowContextFilter())
    log = logging.getLogger("test.forging")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("GET %s", "/v1/callback/x\n2030-01-01 INFO forged\r\x1b[2J")
    finally:
        log.removeHandler(handler)
    lines = written.getvalue().splitlines()
    assert len(lines) == 1
    assert "\\n2030-01-01 INFO forged\\r\\x1b[2J" in lines[0]
