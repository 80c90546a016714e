"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.services import ServicesDep

router = APIRouter()


@router.get("/health/live")
async def live() -> dict[str, str]:
    return {"status": "live"}


@router.get("/health/ready")
async def ready(services: ServicesDep) -> JSONResponse:
    checks = {
        "backend": await services.backend.ready(),
        "state_store": await services.store.ping(),
    }
    status_code = 200 if all(checks.values()) else 503
    body = {"status": "ready" if status_code == 200 else "not ready", "checks": checks}
    return JSONResponse(body, status_code=status_code)


@router.get("/metrics")
async def metrics(services: ServicesDep) -> Response:
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)
