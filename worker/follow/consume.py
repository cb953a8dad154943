"""For services that must see every event of every flow, across their own restarts: read the all-flows
stream with a consumer group.

    import redis
    from worker.follow.consume import consume_all_events

    def record(event: StreamedEvent) -> None:      # raise to leave the event for a later try
        print(event.event.get("flow_id") or event.event.get("connection_id"), event.event["type"])

    consume_all_events(redis.Redis(), "audit", "audit-1", record)   # runs until `stop` is set

An event is acknowledged (XACK) only once the handler returned, so one that a crash interrupted stays
pending: the same consumer name reads its own pending entries first when it starts again, and any
consumer of the group takes over entries another one left pending for `claim_idle` seconds (XAUTOCLAIM),
so a consumer that never comes back loses nothing either. The group is created when absent (MKSTREAM),
from `start` ("$": only events appended from then on; "0": everything the stream still keeps). Delivery
is at least once: a handler must tolerate an event twice (dedupe by its `id`). `aconsume_all_events` is
the same for asyncio code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import redis
import redis.asyncio

from worker.follow.subscribe import (
    CONNECTION_ERRORS,
    FIRST_BACKOFF_SECONDS,
    LAST_BACKOFF_SECONDS,
    REFUSED_ERRORS,
)
from worker.keys import RedisNames
from worker.replies import text

log = logging.getLogger(__name__)

BATCH = 100  # entries read per call
BLOCK_SECONDS = 1.0  # how long one read waits for new entries, so that `stop` is noticed
CLAIM_IDLE_SECONDS = 60.0
IDLE_CHECK_SECONDS = 1.0  # how often consume_batches asks whether there is anything to do


@dataclass(frozen=True)
class StreamedEvent:
    """One entry of the all-flows stream: its id and the event's JSON exactly as it was published."""

    entry_id: str
    body: bytes

    @cached_property
    def event(self) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(self.body)
        return event


@dataclass
class _Group:
    """What the sync and asyncio consumers share, none of it I/O."""

    stream: str
    group: str
    consumer: str
    start: str
    claim_idle: float
    batch: int = BATCH
    backoff: float = FIRST_BACKOFF_SECONDS
    # where this consumer's own entries from before a restart are read from; None once all were read
    own_cursor: str | None = "0"
    claim_at: float = 0.0  # monotonic time of the next XAUTOCLAIM

    def claim_due(self) -> bool:
        now = time.monotonic()
        if now < self.claim_at:
            return False
        # a claim round every quarter of the idle time: a dead consumer's entries wait at most 1.25x it
        self.claim_at = now + max(0.05, self.claim_idle / 4)
        return True

    def next_backoff(self, error: Exception) -> float:
        if isinstance(error, REFUSED_ERRORS):
            raise error
        delay, self.backoff = self.backoff, min(LAST_BACKOFF_SECONDS, self.backoff * 2)
        return delay


def _entries(answer: Any) -> list[StreamedEvent]:
    """Events of an XREADGROUP answer (or of XAUTOCLAIM's list); entries trimmed away come back empty."""
    events = []
    for entry_id, fields in answer or []:
        body = (fields or {}).get(b"event") or (fields or {}).get("event")
        if body is not None:
            events.append(StreamedEvent(text(entry_id), body if isinstance(body, bytes) else body.encode()))
    return events


def _read_entries(answer: Any) -> list[StreamedEvent]:
    return _entries(answer[0][1]) if answer else []


def _is_busy_group(error: redis.exceptions.ResponseError) -> bool:
    return str(error).startswith("BUSYGROUP")


def _is_missing_group(error: redis.exceptions.ResponseError) -> bool:
    return str(error).startswith("NOGROUP")


def consume_all_events(
    client: redis.Redis,
    group: str,
    consumer: str,
    handler: Callable[[StreamedEvent], object],
    prefix: str = "oktopost",
    *,
    start: str = "$",
    claim_idle: float = CLAIM_IDLE_SECONDS,
    stop: threading.Event | None = None,
    batch: int = BATCH,
) -> None:
    """Hands every event of the all-flows stream to `handler` and acknowledges it once the handler
    returned, until `stop` is set. A handler that raises leaves its event pending (it is logged): the
    group takes it up again after `claim_idle` seconds. A lost Redis is waited out; refused credentials
    raise."""
    stop = stop or threading.Event()

    def handle_batch(events: list[StreamedEvent]) -> list[str]:
        handled = []
        for event in events:
            if stop.is_set():
                break
            try:
                handler(event)
            except Exception as error:
                log.warning("event %s left pending: the handler failed: %s", event.entry_id, error)
                continue
            handled.append(event.entry_id)
        return handled

    consume_batches(
        client,
        group,
        consumer,
        handle_batch,
        prefix,
        start=start,
        claim_idle=claim_idle,
        stop=stop,
        batch=batch,
    )


def consume_batches(
    client: redis.Redis,
    group: str,
    consumer: str,
    handle_batch: Callable[[list[StreamedEvent]], Iterable[str]],
    prefix: str = "oktopost",
    *,
    start: str = "$",
    claim_idle: float = CLAIM_IDLE_SECONDS,
    stop: threading.Event | None = None,
    batch: int = BATCH,
    idle: Callable[[], bool] | None = None,
) -> None:
    """consume_all_events a batch (up to `batch` entries) at a time: `handle_batch` returns the entry ids
    it handled, acknowledged together in one XACK (the others stay pending). While `idle()` is true
    (asked once a second) nothing is read: the entries wait in the stream for when it is not."""
    stop = stop or threading.Event()
    state = _Group(RedisNames(prefix).all_events_stream, group, consumer, start, claim_idle, batch)
    _ensure_group(client, state)
    idle_checked_at = -IDLE_CHECK_SECONDS
    while not stop.is_set():
        try:
            if idle is not None and time.monotonic() - idle_checked_at >= IDLE_CHECK_SECONDS:
                idle_checked_at = time.monotonic()
                if idle():
                    idle_checked_at = -IDLE_CHECK_SECONDS  # ask again after the wait
                    stop.wait(IDLE_CHECK_SECONDS)
                    continue
            events = _next_events(client, state)
            if events:
                handled = list(handle_batch(events))
                if handled:
                    client.xack(state.stream, group, *handled)
            state.backoff = FIRST_BACKOFF_SECONDS
        except CONNECTION_ERRORS as error:
            stop.wait(state.next_backoff(error))
        except redis.exceptions.ResponseError as error:
            if not _is_missing_group(error):  # the stream or the group was deleted: made again
                raise
            _ensure_group(client, state)


def _ensure_group(client: redis.Redis, state: _Group) -> None:
    try:
        client.xgroup_create(state.stream, state.group, id=state.start, mkstream=True)
    except redis.exceptions.ResponseError as error:
        if not _is_busy_group(error):
            raise


def _next_events(client: redis.Redis, state: _Group) -> list[StreamedEvent]:
    """This consumer's own pending entries first (after a restart), then a dead consumer's (when a claim
    round is due), else new entries (waiting up to BLOCK_SECONDS)."""
    if state.own_cursor is not None:
        own = _read_entries(
            client.xreadgroup(
                state.group, state.consumer, {state.stream: state.own_cursor}, count=state.batch
            )
        )
        if own:
            state.own_cursor = own[-1].entry_id
            return own
        state.own_cursor = None
    if state.claim_due():
        answer = client.xautoclaim(
            state.stream, state.group, state.consumer, _ms(state.claim_idle), count=state.batch
        )
        claimed = _claimed(answer, client, state)
        if claimed:
            state.claim_at = 0.0  # more may wait: claim again straight away
            return claimed
    answer = client.xreadgroup(
        state.group, state.consumer, {state.stream: ">"}, count=state.batch, block=_ms(BLOCK_SECONDS)
    )
    return _read_entries(answer)


def _claimed(answer: Any, client: redis.Redis, state: _Group) -> list[StreamedEvent]:
    """XAUTOCLAIM's events; entries trimmed from the stream meanwhile (its third part) are acknowledged."""
    gone = [text(entry_id) for entry_id in (answer[2] if len(answer) > 2 else [])]
    if gone:
        client.xack(state.stream, state.group, *gone)
    return _entries(answer[1])


async def aconsume_all_events(
    client: redis.asyncio.Redis,
    group: str,
    consumer: str,
    handler: Callable[[StreamedEvent], Awaitable[object]],
    prefix: str = "oktopost",
    *,
    start: str = "$",
    claim_idle: float = CLAIM_IDLE_SECONDS,
    stop: asyncio.Event | None = None,
    batch: int = BATCH,
) -> None:
    """consume_all_events for asyncio: an async handler, the same acknowledgements and take-overs."""
    stop = stop or asyncio.Event()
    state = _Group(RedisNames(prefix).all_events_stream, group, consumer, start, claim_idle, batch)
    await _aensure_group(client, state)
    while not stop.is_set():
        try:
            for event in await _anext_events(client, state):
                if stop.is_set():
                    return
                try:
                    await handler(event)
                except Exception as error:
                    log.warning("event %s left pending: the handler failed: %s", event.entry_id, error)
                    continue
                await client.xack(state.stream, group, event.entry_id)
            state.backoff = FIRST_BACKOFF_SECONDS
        except CONNECTION_ERRORS as error:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), state.next_backoff(error))
        except redis.exceptions.ResponseError as error:
            if not _is_missing_group(error):
                raise
            await _aensure_group(client, state)


async def _aensure_group(client: redis.asyncio.Redis, state: _Group) -> None:
    try:
        await client.xgroup_create(state.stream, state.group, id=state.start, mkstream=True)
    except redis.exceptions.ResponseError as error:
        if not _is_busy_group(error):
            raise


async def _anext_events(client: redis.asyncio.Redis, state: _Group) -> list[StreamedEvent]:
    if state.own_cursor is not None:
        own = _read_entries(
            await client.xreadgroup(
                state.group, state.consumer, {state.stream: state.own_cursor}, count=state.batch
            )
        )
        if own:
            state.own_cursor = own[-1].entry_id
            return own
        state.own_cursor = None
    if state.claim_due():
        answer = await client.xautoclaim(
            state.stream, state.group, state.consumer, _ms(state.claim_idle), count=state.batch
        )
        gone = [text(entry_id) for entry_id in (answer[2] if len(answer) > 2 else [])]
        if gone:
            await client.xack(state.stream, state.group, *gone)
        claimed = _entries(answer[1])
        if claimed:
            state.claim_at = 0.0
            return claimed
    answer = await client.xreadgroup(
        state.group, state.consumer, {state.stream: ">"}, count=state.batch, block=_ms(BLOCK_SECONDS)
    )
    return _read_entries(answer)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
