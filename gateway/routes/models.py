"""`GET /v1/models`: the one model this gateway serves."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gateway.services import ServicesDep

router = APIRouter()


@router.get("/v1/models")
async def list_models(services: ServicesDep) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {
                "id": services.settings.served_model_name,
                "object": "model",
                "created": 0,
                "owned_by": "throttllem",
            }
        ],
    }
