"""Probes for orchestrators and Prometheus: liveness, readiness (Redis answers), metrics."""

from __future__ import annotations

from fastapi import APIRouter
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
def prometheus() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
