"""Baseline `naive-celery`: a textbook Celery task (`autoretry_for=(Exception,)`, `retry_backoff=True`,
`max_retries=5`), with the token as a task argument, no shared budget and no deadline. Its callback
endpoint enqueues and answers.

    python -m bench.naive web --port 8124        the callback endpoint
    python -m bench.naive worker --concurrency 64   its Celery worker (threads pool)

Oktopost comes from the OKTOPOST_* settings, Redis (broker and outcomes) from BENCH_REDIS_URL. The one
thing a textbook task lacks is `on_failure` reporting the outcome: the benchmark needs to see it.
It sends Celery's task events (task-sent from the web, the rest from the worker): a textbook deployment
is watched in Flower, which shows only what these events say (ours sends the same events, its flow
tasks' from its own code).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from functools import cache
from typing import Any

import redis
from celery import Celery, Task

from bench.completion import (
    DONE_CHANNEL_ENV,
    QUEUE_ENV_NAME,
    REDIS_URL_ENV,
    Completion,
    outcome_of,
)
from worker.config.settings import load_settings
from worker.oktopost import OktopostClient

app = Celery("okc_bench_naive", broker=os.environ.get(REDIS_URL_ENV, "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_default_queue=os.environ.get(QUEUE_ENV_NAME, "naive"),
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_send_task_events=True,
    task_send_sent_event=True,
)


@cache
def _upstream() -> OktopostClient:
    return OktopostClient.from_settings(load_settings())


@cache
def _results() -> redis.Redis:
    return redis.Redis.from_url(os.environ[REDIS_URL_ENV])


def _report(flow_id: str, outcome: str, reason: str = "") -> None:
    _results().publish(os.environ[DONE_CHANNEL_ENV], Completion(flow_id, outcome, reason).to_json())


class _Reported(Task):
    def on_failure(self, exc: Exception, _task_id: str, args: Any, _kwargs: Any, _einfo: Any) -> None:
        _report(args[0], outcome_of(exc), type(exc).__name__)


@app.task(base=_Reported, autoretry_for=(Exception,), retry_backoff=True, max_retries=5)
def verify_callback(flow_id: str, token: str) -> None:
    _upstream().verify(token)
    _report(flow_id, "completed")


def create_web() -> Any:
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse

    web = FastAPI()

    @web.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @web.get("/callback/{flow_id}")
    def callback(flow_id: str, okt: str) -> HTMLResponse:
        verify_callback.delay(flow_id, okt)
        return HTMLResponse("<p>Your account is being connected.</p>")

    return web


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.naive")
    parser.add_argument("role", choices=["web", "worker"])
    parser.add_argument("--port", type=int, default=8124)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    if args.role == "web":
        import uvicorn

        uvicorn.run(create_web(), host="127.0.0.1", port=args.port, access_log=False, log_level="warning")
        return 0
    options = ["worker", "--pool", "threads", "--concurrency", str(args.concurrency)]
    app.worker_main([*options, "--loglevel", "WARNING", "--without-gossip", "--without-mingle"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
