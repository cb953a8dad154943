"""Sandbox processes on free ports for the sandbox's own tests, and what a script does on its consent page."""

from __future__ import annotations

from typing import Any

import httpx

from sandbox.client import SandboxControl
from tests.support.processes import Process, free_port, start_cli, wait_for_port

ACCOUNT = ("demo-account", "demo-key")
CALLBACK = "https://yourapp.com/callback"


def decide(redirect_url: str, decision: str) -> httpx.Response:
    """What the consent page's Approve or Deny button does (the script form: one GET, answered 303)."""
    return httpx.get(f"{redirect_url}&decision={decision}")


class RunningSandbox(SandboxControl):
    """A sandbox process, its controls (reset, faults, stats, connections) and the calls tests make to it."""

    def __init__(self, *flags: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        super().__init__(f"http://127.0.0.1:{self.port}")
        self.process: Process = start_cli(
            ["sandbox", "--port", str(self.port), *flags], env=env, name="sandbox"
        )
        try:
            wait_for_port(self.port, self.process)
        except BaseException:
            self.process.stop()
            raise

    def client(self, auth: tuple[str, str] | None = ACCOUNT, **options: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, auth=auth, **options)

    def authorize(self, client: httpx.Client, network: str = "LinkedIn", entity_type: str = "profile") -> str:
        """Steps 1 and 2 for a script: get the RedirectUrl, approve, and answer the okt token."""
        started = client.post(
            "/v2/social-authorization", data={"network": network, "url": CALLBACK, "type": entity_type}
        )
        assert started.status_code == 200, started.text
        consent = decide(started.json()["RedirectUrl"], "approve")
        assert consent.status_code == 303, consent.text
        return str(httpx.URL(consent.headers["location"]).params["okt"])

    def stop(self) -> None:
        self.process.stop()
        output = self.process.log_path.read_text(errors="replace")
        assert "Traceback" not in output, output
