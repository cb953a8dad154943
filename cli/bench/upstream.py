"""The sandbox every system of the bench calls as its Oktopost, started with the flags a scenario needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from cli.processes import Child, Children, free_port, wait_for_port

SANDBOX_AUTH = ("demo-account", "demo-key")


@dataclass
class SandboxServer:
    """A sandbox process, with its start flags remembered for the report."""

    url: str
    child: Child
    token_ttl: int
    rate_limit: str | None = None  # e.g. "10/second"; None: no limit

    def reset(self) -> None:
        httpx.post(f"{self.url}/_sandbox/reset", timeout=10).raise_for_status()

    def set_faults(self, faults: dict[str, Any]) -> None:
        httpx.post(f"{self.url}/_sandbox/faults", json=faults, timeout=10).raise_for_status()

    def stats(self) -> dict[str, Any]:
        answer = httpx.get(f"{self.url}/_sandbox/stats", timeout=10)
        answer.raise_for_status()
        return dict(answer.json())

    @property
    def rate(self) -> float | None:
        """Calls a second the sandbox allows; None without a limit."""
        if self.rate_limit is None:
            return None
        calls, unit = self.rate_limit.split("/")
        return int(calls) / {"second": 1, "minute": 60}[unit]


def start_sandbox(
    children: Children, name: str, token_ttl: int, rate_limit: str | None, block_seconds: int = 900
) -> SandboxServer:
    port = free_port()
    flags = ["--port", str(port), "--token-ttl", str(token_ttl)]
    if rate_limit is not None:
        flags += ["--rate-limit", rate_limit, "--block-seconds", str(block_seconds)]
    child = children.start_cli(name, ["sandbox", *flags])
    wait_for_port(port, child)
    return SandboxServer(f"http://127.0.0.1:{port}", child, token_ttl, rate_limit)
