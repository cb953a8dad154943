"""The two flows `oktopost-connect demo` drives end to end over real HTTP, as a caller service and a
user's browser would, while a Redis subscriber per flow prints every event it receives.

Tokens and keys are never printed.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import IO, Any
from urllib.parse import urlsplit

import httpx
import redis

from cli.demo_browser import HostedBrowser, PageError
from cli.return_page import returning_flow_id, session_owns_flow
from cli.stack import Stack
from sandbox.client import SandboxControl
from worker.events import TERMINAL_TYPES
from worker.follow.subscribe import follow_flow

ENTITIES_TO_SELECT = 2


class DemoFailed(Exception):
    """The demo did not see both flows complete; the message is the one-line reason."""


@dataclass
class FlowRun:
    """One flow the demo drives, and what its subscriber has received so far."""

    label: str
    network: str
    entity_type: str
    ui: str  # hosted: the browser goes through the shim's pages; redirect: straight back to return_url
    flow_id: str = ""
    redirect_url: str = ""
    start_url: str = ""  # where the partner sends the browser: it binds the flow to it, then to Oktopost
    started_at: float = 0.0
    ended_at: float = 0.0
    events: list[dict[str, Any]] = field(default_factory=list)
    inbox: queue.Queue[dict[str, Any] | Exception | None] = field(default_factory=queue.Queue)

    @property
    def short_id(self) -> str:
        return self.flow_id[:8]

    @property
    def session_reference(self) -> str:
        """The user signed in to the partner's app in the browser that drives this flow."""
        return f"demo-{self.label}"

    @property
    def last_type(self) -> str:
        return self.events[-1]["type"] if self.events else "no event"


class Console:
    """One line per step or event, each with its offset from the demo's first request."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.origin = time.monotonic()
        self._lock = threading.Lock()

    def offset(self) -> float:
        return time.monotonic() - self.origin

    def line(self, flow: str, kind: str, text: str) -> None:
        with self._lock:
            offset = f"+{self.offset():.3f}s"
            print(f"  {offset:>8}  {flow:8}  {kind:22}  {text}", file=self.out, flush=True)

    def mute(self) -> None:
        """No more lines: what the subscribers still receive while the stack stops is not shown."""
        with self._lock:
            self.out.flush()
            self.out = open(os.devnull, "w")  # noqa: SIM115  (lives as long as the demo)


def describe_event(event: dict[str, Any]) -> str:
    """The key data of an event, on one line."""
    data = event.get("data") or {}
    kind = event["type"]
    if kind == "authorization.started":
        reference = f", reference {event['reference']}" if event.get("reference") else ""
        subject = f"{event['network']} {event['entity_type']}{reference}"
        return f"{subject}; callback awaited until {data.get('expires_at')}"
    if kind == "callback.received":
        return f"okt token claimed, verification queued; the token lives until {data.get('token_expires_at')}"
    if kind == "selection.required":
        entities = data.get("entities", [])
        names = ", ".join(f"{e['name']}{' (connected)' if e.get('is_connected') else ''}" for e in entities)
        return f"{len(entities)} offered: {names}"
    if kind == "selection.submitted":
        return f"ids {', '.join(data.get('ids', []))}"
    if kind == "connection.completed":
        credentials = data.get("credentials", [])
        return "; ".join(f"{c.get('name')} [{c.get('id')}] {c.get('status')}" for c in credentials)
    if kind == "authorization.failed":
        return f"{data.get('code')}: {data.get('message')} (retryable {data.get('retryable')})"
    if kind == "authorization.expired":
        return f"at stage {data.get('stage')}"
    return str(data)


def subscribe(
    client: redis.Redis, run: FlowRun, prefix: str, console: Console, timeout: float
) -> threading.Thread:
    """A subscriber thread: follows the flow's events (history, then live), prints and forwards each."""

    def follow() -> None:
        try:
            for event in follow_flow(client, run.flow_id, prefix, timeout=timeout):
                console.line(run.short_id, event["type"], describe_event(event))
                run.inbox.put(event)
        except redis.exceptions.RedisError as error:
            run.inbox.put(error)
        finally:
            run.inbox.put(None)

    thread = threading.Thread(target=follow, name=f"subscriber-{run.short_id}", daemon=True)
    thread.start()
    return thread


class Driver:
    """Speaks to the shim as a caller service, to the sandbox's consent page as a browser."""

    def __init__(
        self, stack: Stack, console: Console, deadline: float, interrupted: Callable[[], str | None]
    ) -> None:
        self.stack = stack
        self.console = console
        self.deadline = deadline
        self.interrupted = interrupted
        self.http = httpx.Client(timeout=10.0, follow_redirects=False)
        self.browser = HostedBrowser(stack.public_base_url)
        self.headers = {"Authorization": f"Bearer {stack.api_key}"}
        self.return_url = f"{stack.shim_url}/demo/done"

    def close(self) -> None:
        self.http.close()
        self.browser.close()

    def start(self, run: FlowRun) -> None:
        body = {
            "network": run.network,
            "type": run.entity_type,
            "return_url": self.return_url,
            "reference": run.session_reference,
            "ui": run.ui,
        }
        answer = self.http.post(f"{self.stack.shim_url}/v1/authorizations", json=body, headers=self.headers)
        if answer.status_code != 201:
            raise DemoFailed(f"POST /v1/authorizations answered {answer.status_code}: {_error_of(answer)}")
        created = answer.json()
        run.flow_id, run.redirect_url = created["flow_id"], created["redirect_url"]
        run.start_url = created["start_url"]
        run.started_at = self.console.offset()
        self.console.line(
            run.short_id, "caller", f"POST /v1/authorizations {run.network} {run.entity_type} {run.ui} -> 201"
        )

    def approve(self, run: FlowRun) -> None:
        """The browser opens the flow's start_url, the user approves on the consent page, and the browser
        follows it back to the shim's callback."""
        browser = self.browser.http if run.ui == "hosted" else self.http
        opened = browser.get(run.start_url)  # the flow's cookie, for its callback only
        if opened.status_code != 303 or opened.headers.get("location") != run.redirect_url:
            raise DemoFailed(f"the start_url answered {opened.status_code}, not 303 to Oktopost's consent")
        self.console.line(
            run.short_id, "browser", "GET /v1/start/… -> 303 to the consent page, with a cookie"
        )
        joiner = "&" if "?" in run.redirect_url else "?"
        consent = browser.get(f"{run.redirect_url}{joiner}decision=approve")
        callback_url = consent.headers.get("location", "")
        if consent.status_code != 303 or not callback_url.startswith(
            f"{self.stack.public_base_url}/v1/callback/"
        ):
            raise DemoFailed(
                f"the sandbox's consent page answered {consent.status_code}, not 303 to the callback"
            )
        self.console.line(
            run.short_id, "browser", "approves on the consent page -> 303 to the shim's callback"
        )
        if run.ui == "hosted":
            self._come_back_hosted(run, callback_url)
            return
        back = self.http.get(callback_url)  # carries the okt token: never printed
        location = back.headers.get("location", "")
        if back.status_code != 303 or not location.startswith(self.return_url):
            raise DemoFailed(f"the callback answered {back.status_code}: {_error_of(back)}")
        self.console.line(run.short_id, "browser", f"GET /v1/callback -> 303 to {urlsplit(location).path}?…")
        self.return_page(run, location)

    def return_page(self, run: FlowRun, location: str) -> None:
        """The partner's return page: it lets the browser in only when its session's user is the one the
        flow was started for (else someone else's flow was completed in this browser)."""
        flow_id = returning_flow_id(location)
        if flow_id != run.flow_id or not session_owns_flow(
            self.http, self.stack.shim_url, self.headers, flow_id, run.session_reference
        ):
            raise DemoFailed(f"the return page refused flow {flow_id[:8]}: not this session's user's flow")
        self.console.line(
            run.short_id, "return page", f"flow's reference {run.session_reference} is this session's user"
        )

    def _come_back_hosted(self, run: FlowRun, callback_url: str) -> None:
        try:
            self.browser.come_back(callback_url, run.flow_id)
        except PageError as error:
            raise DemoFailed(f"flow {run.short_id}: {error}") from None
        self.console.line(
            run.short_id, "browser", "GET /v1/callback -> 303 to its page, with the flow's cookie"
        )
        self.console.line(run.short_id, "page", self.browser.page_url(run.flow_id))

    def select_on_page(self, run: FlowRun) -> list[str]:
        """The user ticks the entities not yet connected on the flow's page and presses Connect."""
        try:
            page = self.browser.read(run.flow_id)
            if page.status != "awaiting_selection" or not page.choices:
                raise PageError(f"the page shows {page.status or 'no status'}, not the selection form")
            chosen = page.choices[:ENTITIES_TO_SELECT]
            self.console.line(
                run.short_id,
                "browser",
                f"GET /connect/… {len(page.choices)} to choose, {len(page.connected)} already connected",
            )
            self.browser.submit(run.flow_id, page, chosen)
        except PageError as error:
            raise DemoFailed(f"flow {run.short_id}: {error}") from None
        self.console.line(run.short_id, "browser", f"POST /connect/…/selection {len(chosen)} ticked -> 303")
        return chosen

    def look_at_page(self, run: FlowRun) -> None:
        """The finished page, as the user sees it before being sent back to return_url."""
        try:
            page = self.browser.read(run.flow_id)
        except PageError as error:
            raise DemoFailed(f"flow {run.short_id}: {error}") from None
        back = f", continue -> {urlsplit(page.continue_url).path}?…" if page.continue_url else ""
        self.console.line(run.short_id, "browser", f"GET /connect/… shows {page.status}{back}")
        if page.continue_url:  # the page sends the browser on to the partner's return page by itself
            self.return_page(run, page.continue_url)
        if page.status != run.last_type.removeprefix("connection.").removeprefix("authorization."):
            raise DemoFailed(f"flow {run.short_id}: its page shows {page.status} after {run.last_type}")

    def wait_for(self, run: FlowRun, types: Collection[str]) -> dict[str, Any]:
        """The flow's next event among `types` (or its terminal one); DemoFailed on timeout or dead child."""
        late = f"{run.label} flow {run.short_id} did not complete in time (last event: {run.last_type})"
        while True:
            reason = self.interrupted()
            if reason:
                raise DemoFailed(reason)
            left = self.deadline - time.monotonic()
            try:
                # what already arrived counts even when time is up
                item = run.inbox.get(timeout=min(0.2, left)) if left > 0 else run.inbox.get_nowait()
            except queue.Empty:
                if left > 0:
                    continue
                raise DemoFailed(late) from None
            if item is None:  # the subscriber ended without a terminal event
                if time.monotonic() >= self.deadline:
                    raise DemoFailed(late)
                raise DemoFailed(
                    f"{run.label} flow {run.short_id}: the subscriber stopped after {run.last_type}"
                )
            if isinstance(item, Exception):
                raise DemoFailed(f"the subscriber lost Redis: {item}")
            run.events.append(item)
            late = f"{run.label} flow {run.short_id} did not complete in time (last event: {run.last_type})"
            if item["type"] in types or item["type"] in TERMINAL_TYPES:
                return item


def _error_of(answer: httpx.Response) -> str:
    try:
        error = answer.json()["error"]
        return f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return answer.text[:120].replace("\n", " ")


def _ended(run: FlowRun, console: Console) -> None:
    run.ended_at = console.offset()
    if run.last_type != "connection.completed":
        event = run.events[-1]
        raise DemoFailed(f"{run.label} flow {run.short_id} ended as {event['type']}: {describe_event(event)}")


def drive(
    stack: Stack, console: Console, timeout: float, interrupted: Callable[[], str | None]
) -> list[FlowRun]:
    """Both flows, side by side; returns them once both completed, else raises DemoFailed."""
    profile = FlowRun("profile", "LinkedIn", "profile", "redirect")
    page = FlowRun("page", "Facebook", "page", "hosted")
    client = redis.Redis.from_url(stack.redis.url, socket_connect_timeout=3, socket_timeout=10)
    driver = Driver(stack, console, time.monotonic() + timeout, interrupted)
    subscribers: list[threading.Thread] = []
    try:
        for run in (profile, page):
            driver.start(run)
            # the subscriber outlives the demo's own deadline, so the demo is the one that reports time up
            subscribers.append(subscribe(client, run, stack.prefix, console, timeout + 2))
        for run in (profile, page):
            driver.approve(run)
        offer = driver.wait_for(page, {"selection.required"})
        if offer["type"] == "selection.required":
            driver.select_on_page(page)
        for run in (profile, page):
            if run.last_type not in TERMINAL_TYPES:
                driver.wait_for(run, TERMINAL_TYPES)
            _ended(run, console)
        driver.look_at_page(page)
    finally:
        driver.close()
        if not any(thread.is_alive() for thread in subscribers):
            client.close()  # else a subscriber still reads from it; it goes with the process
    return [profile, page]


def confirmed_upstream(stack: Stack, runs: list[FlowRun]) -> tuple[int, int]:
    """(credentials the flows reported, how many of them the sandbox lists as connected)."""
    reported = {c["id"] for run in runs for c in run.events[-1]["data"]["credentials"]}
    if not stack.sandbox_url:
        return len(reported), 0
    listed = SandboxControl(stack.sandbox_url, timeout=5).connections()
    return len(reported), len(reported & {str(c["Id"]) for c in listed})
