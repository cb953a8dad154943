"""The client of the sandbox's own controls under `/_sandbox/` (sandbox/control.py serves them), for the
demo, the bench and the tests: reset, faults, stats, the connections made, health."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

CONTROL_ROOT = "/_sandbox"


@dataclass
class SandboxControl:
    """A running sandbox's controls at `url` (its root, e.g. http://127.0.0.1:8090). Each call raises
    httpx.HTTPStatusError when the sandbox refuses it (a bad fault setting: 400 with the field named)."""

    url: str
    timeout: float = field(default=10.0, kw_only=True)

    def control_url(self, route: str) -> str:
        """`route`'s URL: faults, connections, stats, reset or health."""
        return f"{self.url}{CONTROL_ROOT}/{route}"

    @property
    def health_url(self) -> str:
        return self.control_url("health")

    @property
    def connections_url(self) -> str:
        return self.control_url("connections")

    def reset(self) -> None:
        """Forgets every flow, connection, count and fault setting, as at start."""
        self._call("POST", "reset")

    def set_faults(self, **faults: Any) -> dict[str, Any]:
        """Changes the named fault settings (the others stay); answers every setting as it is now."""
        answer: dict[str, Any] = self._call("POST", "faults", json=faults)
        return answer

    def faults(self) -> dict[str, Any]:
        answer: dict[str, Any] = self._call("GET", "faults")
        return answer

    def stats(self) -> dict[str, Any]:
        """What the sandbox answered on /v2/: calls, faults injected, blocks, per account."""
        answer: dict[str, Any] = self._call("GET", "stats")
        return answer

    def connections(self) -> list[dict[str, Any]]:
        """Every connection made through the sandbox, with the calls made with it."""
        answer: list[dict[str, Any]] = self._call("GET", "connections")
        return answer

    def _call(self, method: str, route: str, json: dict[str, Any] | None = None) -> Any:
        answer = httpx.request(method, self.control_url(route), json=json, timeout=self.timeout)
        answer.raise_for_status()
        return answer.json()
