"""The load generator, in the benchmark's own process: the users' consent, their callbacks fired at a
fixed offered rate (or all at once), and a Redis subscriber noting when each flow ends.

Every time is `time.perf_counter()` of this process, so callback and end-to-end times share one clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx
import redis.asyncio as aioredis

from bench.report import percentile
from bench.systems import StartedFlow

CONSENT_CONCURRENCY = 16
CALLBACK_TIMEOUT = 30.0  # a browser gives up on a callback answered later than this


@dataclass(slots=True)
class Shot:
    """One callback: when it was due, sent and answered, and how."""

    flow_id: str
    url: str
    due: float = math.nan
    sent: float = math.nan
    sent_wall: float = math.nan  # time.time() at sending, to compare with the `at` of ours' events
    answered: float = math.nan
    status: int = 0
    error: str = ""

    @property
    def seconds(self) -> float:
        return self.answered - self.sent

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 400


async def consent(flows: list[StartedFlow]) -> list[Shot]:
    """Each user approves on the sandbox's consent page; returns the callbacks their browsers would make."""
    gate = asyncio.Semaphore(CONSENT_CONCURRENCY)

    async def approve(http: httpx.AsyncClient, flow: StartedFlow) -> Shot:
        joiner = "&" if "?" in flow.redirect_url else "?"
        async with gate:
            answer = await http.get(f"{flow.redirect_url}{joiner}decision=approve")
        if answer.status_code != 303:
            raise RuntimeError(f"consent answered {answer.status_code}: {answer.text[:200]}")
        return Shot(flow.flow_id, answer.headers["location"])

    async with httpx.AsyncClient(timeout=30, follow_redirects=False) as http:
        return list(await asyncio.gather(*(approve(http, flow) for flow in flows)))


class Browsers:
    """Keep-alive HTTP/1.1 GETs on plain asyncio streams, for the timed callbacks only.

    httpx costs this process about 2 ms of its own per request (p50 2.7 ms against 0.7 ms for the same
    GET on a bare stream, 2.8 ms of CPU per flow): on a small machine that would be a large share of
    the 5 ms being measured, and CPU taken from the systems under test. Answers are read by
    Content-Length or chunks; a connection that says `close` is not reused.
    """

    # servers close idle keep-alive connections (uvicorn after 5 s): older ones are not reused
    MAX_IDLE_SECONDS = 2.0

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[tuple[float, asyncio.StreamReader, asyncio.StreamWriter]]] = {}
        self._open: list[asyncio.StreamWriter] = []

    async def get(self, url: str) -> int:
        parts = urlsplit(url)
        origin = (parts.hostname or "127.0.0.1", parts.port or 80)
        request = f"GET {parts.path}{'?' + parts.query if parts.query else ''} HTTP/1.1\r\n"
        request += f"Host: {origin[0]}:{origin[1]}\r\n\r\n"
        reused = self._reuse(origin)
        if reused is not None:
            try:
                return await self._exchange(origin, *reused, request.encode())
            except (ConnectionError, asyncio.IncompleteReadError) as error:
                if getattr(error, "partial", b""):  # the server had begun answering: no replay
                    raise
                # closed by the server while idle, before our request: a browser sends it again
        reader, writer = await asyncio.open_connection(*origin)
        self._open.append(writer)
        return await self._exchange(origin, reader, writer, request.encode())

    def _reuse(self, origin: tuple[str, int]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        idle = self._idle.setdefault(origin, [])
        while idle:
            since, reader, writer = idle.pop()
            if time.monotonic() - since < self.MAX_IDLE_SECONDS and not reader.at_eof():
                return reader, writer
            writer.close()
        return None

    async def _exchange(
        self,
        origin: tuple[str, int],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: bytes,
    ) -> int:
        writer.write(request)
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = {
            name.strip().lower(): value.strip() for name, _, value in (h.partition(":") for h in head[1:])
        }
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                await reader.readexactly(size + 2)
            await reader.readuntil(b"\r\n")
        else:
            await reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            writer.close()
        else:
            self._idle[origin].append((time.monotonic(), reader, writer))
        return int(head[0].split()[1])

    async def close(self) -> None:
        for writer in self._open:
            writer.close()
        for writer in self._open:
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def fire(shots: list[Shot], rate: float | None) -> None:
    """Sends every callback at `rate` a second (None: all at once) and records each answer."""
    browsers = Browsers()

    async def send(shot: Shot) -> None:
        shot.sent, shot.sent_wall = time.perf_counter(), time.time()
        try:
            shot.status = await asyncio.wait_for(browsers.get(shot.url), CALLBACK_TIMEOUT)
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError, TimeoutError) as error:
            shot.error = type(error).__name__
        shot.answered = time.perf_counter()

    try:
        start = time.perf_counter() + 0.02
        sending = []
        for index, shot in enumerate(shots):
            shot.due = start + (index / rate if rate else 0.0)
            delay = shot.due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sending.append(asyncio.create_task(send(shot)))
        await asyncio.gather(*sending)
    finally:
        await browsers.close()


async def generator_floor(url: str, requests: int = 200, rate: float = 100.0) -> tuple[float, float]:
    """p50 and p99 (ms) of GETs to a trivial endpoint: what the load generator itself adds to each time."""
    shots = [Shot(str(index), url) for index in range(requests)]
    await fire(shots, rate)
    answered = [shot.seconds * 1000 for shot in shots if shot.status]
    return percentile(answered, 50), percentile(answered, 99)


@dataclass
class Endings:
    """What the subscriber saw: each flow's first ending (outcome, time), and endings seen more than once."""

    expected: set[str]
    first: dict[str, tuple[str, float]] = field(default_factory=dict)
    repeated: int = 0
    complete: asyncio.Event = field(default_factory=asyncio.Event)

    def note(self, flow_id: str, outcome: str, at: float) -> None:
        if flow_id not in self.expected:
            return
        if flow_id in self.first:
            self.repeated += 1
            return
        self.first[flow_id] = (outcome, at)
        if len(self.first) == len(self.expected):
            self.complete.set()


class EndingListener:
    """Subscribes to a system's ending channel before the first callback; `wait()` until all ended."""

    def __init__(
        self,
        redis_url: str,
        channel: str,
        ended: Callable[[bytes], tuple[str, str] | None],
        flow_ids: set[str],
    ) -> None:
        self.endings = Endings(set(flow_ids))
        self._redis = aioredis.Redis.from_url(redis_url)
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        self._channel = channel
        self._ended = ended
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EndingListener:
        await self._pubsub.subscribe(self._channel)
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        async for message in self._pubsub.listen():
            if message.get("type") != "message":
                continue
            at = time.perf_counter()
            ending = self._ended(message["data"])
            if ending is not None:
                self.endings.note(ending[0], ending[1], at)

    async def wait(self, timeout: float) -> bool:
        """True when every expected flow ended within `timeout` seconds."""
        if not self.endings.expected:
            return True
        try:
            await asyncio.wait_for(self.endings.complete.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await ended_quietly(self._reader)
        await self._pubsub.aclose()
        await self._redis.aclose()


async def ended_quietly(task: asyncio.Task[Any]) -> None:
    """Awaits a task just cancelled, whose end is of no interest; but a cancellation of the task awaiting
    it (Ctrl-C: asyncio.run cancels the main task) goes on, or the interrupt would be swallowed here."""
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    except Exception:  # noqa: S110 - its end is of no interest
        pass
