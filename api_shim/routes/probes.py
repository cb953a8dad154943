"""Probes for orchestrators and Prometheus: liveness, readiness (Redis answers), metrics."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api_shim.deps import ShimDeps

router = APIRouter(include_in_schema=False)


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
def readyz(shim: ShimDeps) -> Response:
    try:
        shim.store.redis.ping()
    except Exception as error:
        return JSONResponse(
            {"error": {"code": "unavailable", "message": f"Redis does not answer ({type(error).__name__})"}},
            status_code=503,
        )
    return JSONResponse({"status": "ready"})


@router.get("/metrics")
def prometheus(shim: ShimDeps, authorization: Annotated[str | None, Header()] = None) -> Response:
    """With METRICS_TOKEN set, only a scrape that presents it as a Bearer token: the metrics name every
    tenant's Oktopost account and show its daily usage."""
    expected = shim.settings.metrics_token
    if expected is not None:
        presented = (authorization or "").encode()
        if not hmac.compare_digest(presented, f"Bearer {expected.get_secret_value()}".encode()):
            return JSONResponse(
                {"error": {"code": "unauthorized", "message": "the metrics token is required"}},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
