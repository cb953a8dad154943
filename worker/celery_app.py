"""The Celery app: configured from celeryconfig.py, tasks in worker.tasks, the sweeper started with it."""

from __future__ import annotations

from celery import Celery

app = Celery("oktopost_connect", include=["worker.tasks"])
app.config_from_object("celeryconfig")
