"""What the bench adds to cli.processes: its Redis (64 databases, one per system), waiting for the machine
to go quiet between scenarios, and SIGTERM unwinding like Ctrl-C so every child is stopped."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Iterator, Sequence
from types import FrameType

import redis

from cli.processes import Child, Children, StartupError, start_redis_server


@contextlib.contextmanager
def interrupted_by_sigterm() -> Iterator[None]:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so every `finally` (and so every child's stop) runs. So does
    Ctrl-C itself, by a handler of ours: the default one would let asyncio.run turn it into a cancellation
    of its main task, which a task may swallow (the bench then ran on to its end), and a parent that
    ignores SIGINT would hand that on to the bench."""

    def interrupt(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, interrupt) for signum in stops}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def wait_until_idle(children: Sequence[Child], timeout: float, busy: float = 0.1, step: float = 0.5) -> float:
    """Waits until `children` together use less than `busy` of a core (work left over from the last
    scenario, such as an overloaded app's backlog, must not run into the next); returns seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = sum(child.cpu_seconds() for child in children)
        time.sleep(step)
        if sum(child.cpu_seconds() for child in children) - before < busy * step:
            break
    return time.monotonic() - started


def start_redis(children: Children) -> tuple[str, Child | None]:
    """A private redis-server on a free port (no persistence), one of `children`; REDIS_URL when there is
    no redis-server."""
    if shutil.which("redis-server") is None:
        url = os.environ.get("REDIS_URL")
        if not url:
            raise StartupError("neither redis-server on PATH nor REDIS_URL in the environment")
        return url, None
    data_dir = children.log_dir / "redis"
    data_dir.mkdir(exist_ok=True)
    server = start_redis_server(
        "--databases", "64", directory=data_dir, log_path=children.log_dir / "redis.log", name="redis"
    )
    assert server.child is not None  # started here
    return server.url, children.adopt(server.child)


def start_replicas(children: Children, primary_url: str, count: int) -> list[Child]:
    """`count` private redis-servers replicating the bench's Redis (asynchronously, as Redis does), each
    one of `children`, once each has synced with it."""
    host_port = primary_url.split("://", 1)[1].split("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    started = []
    for index in range(count):
        data_dir = children.log_dir / f"redis-replica{index}"
        data_dir.mkdir(exist_ok=True)
        server = start_redis_server(
            "--databases",
            "64",
            "--replicaof",
            host,
            port,
            directory=data_dir,
            log_path=children.log_dir / f"redis-replica{index}.log",
            name=f"redis-replica{index}",
        )
        assert server.child is not None  # started here
        started.append(children.adopt(server.child))
        client = redis.Redis.from_url(server.url)
        try:
            deadline = time.monotonic() + 30
            while _link_status(client) != "up":
                if time.monotonic() > deadline:
                    raise StartupError(f"redis-replica{index} did not sync with the bench's Redis in 30 s")
                time.sleep(0.05)
        finally:
            client.close()
    return started


def _link_status(client: redis.Redis) -> str:
    replication: dict[str, object] = client.info("replication")  # type: ignore[assignment]
    return str(replication.get("master_link_status", ""))
