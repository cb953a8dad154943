"""How the two baselines tell the benchmark a flow has ended: one JSON message on a Redis channel.

Ours needs no such thing: its terminal events on `{prefix}:events` are what the benchmark listens to.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from worker.oktopost.errors import TokenInvalidError

OUTCOMES = ("completed", "failed", "expired")
DONE_CHANNEL_ENV = "BENCH_DONE_CHANNEL"
REDIS_URL_ENV = "BENCH_REDIS_URL"
QUEUE_ENV_NAME = "BENCH_QUEUE"  # the naive baseline's Celery queue, one per run


@dataclass(frozen=True, slots=True)
class Completion:
    flow_id: str
    outcome: str  # one of OUTCOMES
    reason: str = ""  # for an outcome other than completed: the error's class, e.g. ServerError

    def to_json(self) -> str:
        return json.dumps({"flow_id": self.flow_id, "outcome": self.outcome, "reason": self.reason})

    @classmethod
    def from_json(cls, raw: bytes | str) -> Completion | None:
        try:
            message = json.loads(raw)
            completion = cls(str(message["flow_id"]), str(message["outcome"]), str(message.get("reason", "")))
        except (ValueError, KeyError, TypeError):
            return None
        return completion if completion.outcome in OUTCOMES else None


def outcome_of(error: BaseException) -> str:
    """A refusal because the token is dead counts as expired (as ours would report it), else failed."""
    return "expired" if isinstance(error, TokenInvalidError) else "failed"
