"""Errors the shim answers with: always `{"error": {"code", "message"}}`, never a 500 for bad input."""

from __future__ import annotations

import logging

import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    410: "gone",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    431: "headers_too_large",
}


def _describe_validation(error: RequestValidationError) -> str:
    first = error.errors()[0] if error.errors() else {}
    location = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "body"
    return f"{location}: {first.get('msg', 'invalid')}"


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at the request's path. The router's own 405 names only the
    methods of the first route whose path matched (`GET /v1/webhooks` and `POST /v1/webhooks` are two)."""
    routes = request.app.router.routes
    return [
        method
        for method in _METHODS
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes)
    ]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, error: ApiError) -> JSONResponse:
        return error_response(error.status, error.code, error.message, error.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        if any(problem.get("type") == "json_invalid" for problem in error.errors()):
            return error_response(400, "bad_request", "the body is not valid JSON")
        return error_response(422, "invalid_request", _describe_validation(error))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(error.status_code, "error")
        message = error.detail if isinstance(error.detail, str) else code.replace("_", " ")
        headers = dict(error.headers or {})
        if error.status_code == 405 and (allowed := allowed_methods(request)):
            headers["Allow"] = ", ".join(allowed)
        return error_response(error.status_code, code, message, headers)

    @app.exception_handler(redis.exceptions.ConnectionError)
    @app.exception_handler(redis.exceptions.TimeoutError)
    @app.exception_handler(OperationalError)
    async def _unavailable(_: Request, error: Exception) -> JSONResponse:
        log.warning("storage unavailable: %s", type(error).__name__)
        return _storage_unavailable()

    @app.exception_handler(redis.exceptions.ResponseError)
    async def _refused(_: Request, error: redis.exceptions.ResponseError) -> JSONResponse:
        if not refused_by_redis(error):
            raise error  # a command this code got wrong: a 500 for the operator to see
        log.warning("storage refused a write: %s", str(error).split(" ", 1)[0][:32])
        return _storage_unavailable()


# The first word of an error by which Redis refuses a command that is right, for the time being: full
# (maxmemory with noeviction), a read-only replica (after a failover), a failing disk, a replica that is
# loading, a script running long, too few replicas for min-replicas-to-write. A Lua script's error carries
# its command's error after "ERR Error running script ...", so the words are looked for anywhere.
REFUSALS = ("OOM", "READONLY", "MISCONF", "LOADING", "BUSY", "NOREPLICAS", "MASTERDOWN", "TRYAGAIN")


def refused_by_redis(error: redis.exceptions.ResponseError) -> bool:
    """Whether Redis refused a write that may succeed later (so: 503), rather than a wrong command."""
    if isinstance(
        error,
        redis.exceptions.OutOfMemoryError
        | redis.exceptions.ReadOnlyError
        | redis.exceptions.BusyLoadingError
        | redis.exceptions.MasterDownError
        | redis.exceptions.TryAgainError,
    ):
        return True
    words = str(error).replace(":", " ").split()
    return any(word in REFUSALS for word in words)


def _storage_unavailable() -> JSONResponse:
    return error_response(
        503, "unavailable", "storage is unavailable, try again shortly", {"Retry-After": "2"}
    )
