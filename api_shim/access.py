"""Every request observed once: the access log line, the request metrics, the flow id for its logs.

uvicorn's own access log prints the full query, which holds the okt token, so it is turned off and
this line takes its place: method, route template, status and time, never the query string. It is
plain ASGI middleware (Starlette's `@app.middleware("http")` costs a task and a stream per request,
which showed up on the callback's hot path).
"""

from __future__ import annotations

import logging
import time

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api_shim.metrics import REQUEST_SECONDS, REQUESTS
from worker.flows.flow import is_flow_id
from worker.observing.logs import current_flow

log = logging.getLogger("api_shim.access")
_FLOW_ROUTES = ("/v1/callback/", "/v1/authorizations/", "/connect/")
# Label values come from fixed sets only: h11 accepts any token as a method, and every new label value
# would be a series kept for the process's life. Anything else is counted as "other".
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER = "other"


class Observed:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        flow_id = _flow_id_of(scope["path"])
        status = 500

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        token = current_flow.set(flow_id)
        try:
            await self.app(scope, receive, observed_send)
        finally:
            # the route's template, never the raw path: flow ids would explode the label set
            route = getattr(scope.get("route"), "path", OTHER)
            method = scope["method"] if scope["method"] in METHODS else OTHER
            elapsed = time.perf_counter() - started
            REQUESTS.labels(route=route, method=method, status=str(status)).inc()
            REQUEST_SECONDS.labels(route=route).observe(elapsed)
            log.info("%s %s %d %.1fms", method, route, status, elapsed * 1000)
            current_flow.reset(token)


def _flow_id_of(path: str) -> str:
    """The flow a request is about, for its log lines; only a well-formed flow id is ever logged."""
    if not path.startswith(_FLOW_ROUTES):
        return "-"
    parts = path.split("/")
    candidate = parts[3] if path.startswith(("/v1/",)) and len(parts) > 3 else parts[2]
    return candidate if is_flow_id(candidate) else "-"


def install(app: FastAPI) -> None:
    app.add_middleware(Observed)
