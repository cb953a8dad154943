"""A Redis primary, its replica and three sentinels watching them, each a real redis-server on a free
loopback port, for the failover tests. `stop()` ends every one of them, on every path."""

from __future__ import annotations

import contextlib
import functools
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import redis.sentinel

from cli.processes import RedisService, start_redis_server
from cli.processes.children import Child, stop_children
from cli.processes.readiness import start_on_free_port

MASTER = "okc"
DOWN_AFTER_MS = 1000  # how long the primary must not answer before the sentinels call it down


@dataclass
class SentinelCluster:
    primary: RedisService
    replica: RedisService
    sentinel_ports: list[int] = field(default_factory=list)
    sentinel_children: list[Child] = field(default_factory=list)
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="okc-sentinels-")))

    @property
    def sentinels(self) -> str:
        """REDIS_SENTINELS for these sentinels."""
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def master_client(self) -> Any:
        """A client of whichever server the sentinels call the primary now."""
        sentinel = redis.sentinel.Sentinel(
            [("127.0.0.1", port) for port in self.sentinel_ports], sentinel_kwargs={"socket_timeout": 1}
        )
        return sentinel.master_for(MASTER, socket_timeout=2, socket_connect_timeout=1)

    def master_port(self) -> int | None:
        """The primary's port as a majority of the sentinels see it."""
        seen: dict[int, int] = {}
        for port in self.sentinel_ports:
            with contextlib.suppress(redis.RedisError), redis.Redis(port=port, socket_timeout=1) as client:
                _, master_port = client.execute_command("SENTINEL", "get-master-addr-by-name", MASTER)
                seen[int(master_port)] = seen.get(int(master_port), 0) + 1
        return next((port for port, votes in seen.items() if votes >= 2), None)

    def wait_until_watched(self, timeout: float = 20) -> None:
        """Until every sentinel knows the primary's replica and the two other sentinels."""
        deadline = time.monotonic() + timeout
        while not self._watched():
            assert time.monotonic() < deadline, "the sentinels did not find each other and the replica"
            time.sleep(0.2)

    def _watched(self) -> bool:
        with contextlib.suppress(redis.RedisError), redis.Redis(port=self.replica.port) as replica:
            if replica.info("replication").get("master_link_status") != "up":
                return False
        for port in self.sentinel_ports:
            try:
                with redis.Redis(port=port, socket_timeout=1) as client:
                    replicas = client.execute_command("SENTINEL", "replicas", MASTER)
                    others = client.execute_command("SENTINEL", "sentinels", MASTER)
            except redis.RedisError:
                return False
            if len(replicas) < 1 or len(others) < 2:
                return False
        return True

    def stop(self) -> None:
        stop_children(self.sentinel_children, timeout=5)
        self.replica.stop(timeout=5)
        self.primary.stop(timeout=5)
        shutil.rmtree(self.directory, ignore_errors=True)


def start_cluster() -> SentinelCluster:
    primary = start_redis_server("--repl-diskless-sync-delay", "0")  # the replica syncs at once
    try:
        replica = start_redis_server("--replicaof", "127.0.0.1", str(primary.port))
    except BaseException:
        primary.stop()
        raise
    cluster = SentinelCluster(primary, replica)
    try:
        for index in range(3):
            child, port = start_on_free_port(functools.partial(_sentinel, cluster, index))
            cluster.sentinel_children.append(child)
            cluster.sentinel_ports.append(port)
        cluster.wait_until_watched()
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _sentinel(cluster: SentinelCluster, index: int, port: int) -> Child:
    home = cluster.directory / f"sentinel-{index}"
    home.mkdir(exist_ok=True)
    config = home / "sentinel.conf"  # a sentinel rewrites its own file: one each, writable
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {home}\n"
        f"sentinel monitor {MASTER} 127.0.0.1 {cluster.primary.port} 2\n"
        f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
        f"sentinel failover-timeout {MASTER} 5000\n"
        f"sentinel parallel-syncs {MASTER} 1\n"
    )
    return Child(f"sentinel-{index}", ["redis-server", str(config), "--sentinel"], log_path=home / "log")
