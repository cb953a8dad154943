"""The shim's access log: method, route template, status and time, never the query string.

uvicorn's own access log prints the full query, which holds the okt token, so it is turned off and
this line takes its place. It also tags everything logged during a request with the flow id.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response

from worker.logs import current_flow

log = logging.getLogger("api_shim.access")


def install(app: FastAPI) -> None:
    @app.middleware("http")
    async def access_log(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        flow_id = (
            request.url.path.split("/")[3]
            if request.url.path.startswith(("/v1/callback/", "/v1/authorizations/"))
            else "-"
        )
        token = current_flow.set(flow_id[:64])
        try:
            response = await call_next(request)
            route = getattr(request.scope.get("route"), "path", "unmatched")
            log.info(
                "%s %s %d %.1fms",
                request.method,
                route,
                response.status_code,
                (time.perf_counter() - started) * 1000,
            )
            return response
        finally:
            current_flow.reset(token)
