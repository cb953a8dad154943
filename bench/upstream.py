"""The sandbox every system of the bench calls as its Oktopost, started with the flags a scenario needs."""

from __future__ import annotations

from dataclasses import dataclass

from cli.processes import Child, Children, free_port, wait_for_port
from sandbox.client import SandboxControl

SANDBOX_AUTH = ("demo-account", "demo-key")


@dataclass(frozen=True, slots=True)
class Upstream:
    """The sandbox a scenario runs against. Scenarios with equal ones share one sandbox, and every
    system is started once for them, told the sandbox's limit and block."""

    name: str
    token_ttl: int
    rate_limit: str | None = None  # e.g. "10/second"; None: no limit
    block_seconds: int = 900  # how long the sandbox blocks the account that goes past its limit
    access_log: bool = False  # every answer in the sandbox's log, in the order it was decided

    @property
    def rate(self) -> float | None:
        """Calls a second the sandbox allows; None without a limit."""
        if self.rate_limit is None:
            return None
        calls, unit = self.rate_limit.split("/")
        return int(calls) / {"second": 1, "minute": 60}[unit]


@dataclass
class SandboxServer(SandboxControl):
    """A sandbox process, its controls (reset, faults, stats) and the flags it was started with."""

    child: Child
    upstream: Upstream

    @property
    def token_ttl(self) -> int:
        return self.upstream.token_ttl

    @property
    def rate_limit(self) -> str | None:
        return self.upstream.rate_limit

    @property
    def rate(self) -> float | None:
        return self.upstream.rate

    def log_size(self) -> int:
        """Where the sandbox's log ends now: `log_since` reads what it writes from here on."""
        return self.child.log_path.stat().st_size if self.child.log_path is not None else 0

    def log_since(self, offset: int) -> list[str]:
        if self.child.log_path is None:
            return []
        with self.child.log_path.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace").splitlines()


def start_sandbox(children: Children, upstream: Upstream) -> SandboxServer:
    port = free_port()
    flags = ["--port", str(port), "--token-ttl", str(upstream.token_ttl)]
    if upstream.rate_limit is not None:
        flags += ["--rate-limit", upstream.rate_limit, "--block-seconds", str(upstream.block_seconds)]
    if upstream.access_log:
        flags.append("--access-log")
    child = children.start_cli(upstream.name, ["sandbox", *flags])
    wait_for_port(port, child)
    return SandboxServer(f"http://127.0.0.1:{port}", child, upstream)
