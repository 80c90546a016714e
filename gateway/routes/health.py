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
    """503 only for what stops traffic (the backend, the shared scoreboard). A predictor
    that did not load stops only the planning: the gateway serves, at default clocks,
    and says so under `planning` with the reason."""
    checks = {
        "backend": await services.backend.ready(),
        "state_store": await services.store.ping(),
    }
    status_code = 200 if all(checks.values()) else 503
    predictions = services.predictions
    body = {
        "status": "ready" if status_code == 200 else "not ready",
        "checks": checks,
        "planning": {
            "active": services.planner is not None,
            "length_model": predictions.ready("length"),
            "performance_model": predictions.ready("performance"),
            "power_model": predictions.ready("power"),
            "problems": dict(predictions.problems),
        },
    }
    return JSONResponse(body, status_code=status_code)


@router.get("/metrics")
async def metrics(services: ServicesDep) -> Response:
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)
