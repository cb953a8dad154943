"""Following events from a partner's own service: the public API for reading what the pipeline publishes.

    follow_flow / afollow_flow   one flow's events, its stored history then live ones, no gap or
                                 duplicate across reconnections (subscribe.py)
    consume_all_events / aconsume_all_events / consume_batches
                                 every flow's events from the all-flows stream through a consumer group,
                                 acknowledged only after the handler returns (consume.py)

May import: worker.keys, worker.replies, worker.events. Nothing here depends on Celery or the Oktopost client.
"""

from worker.follow.consume import StreamedEvent, aconsume_all_events, consume_all_events, consume_batches
from worker.follow.subscribe import afollow_flow, follow_flow

__all__ = [
    "StreamedEvent",
    "aconsume_all_events",
    "afollow_flow",
    "consume_all_events",
    "consume_batches",
    "follow_flow",
]
