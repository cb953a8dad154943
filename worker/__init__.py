"""oktopost-connect's worker side: the Celery app and tasks, the Oktopost client, the flow store, events.

`celery -A worker worker` finds the Celery app here; it is imported on first use, so that modules such
as `worker.config.settings` or `worker.oktopost` can be used without loading Celery.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from worker.tasks.celery_app import app

        return app
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
