"""`/admin/*`: the operator's view, behind its own token (off unless one is set)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from fastapi import APIRouter, Depends

from gateway.auth import require_admin_token
from gateway.services import ServicesDep

router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin_token)])


@router.get("/scoreboard")
async def scoreboard(services: ServicesDep) -> dict[str, Any]:
    """The requests on the engine's board (no prompts: the board never holds text)."""
    snapshot = await services.store.snapshot()
    entries = [
        {k: (None if isinstance(v, float) and math.isinf(v) else v)
         for k, v in dataclasses.asdict(entry).items()}
        for entry in snapshot.entries
    ]  # fmt: skip
    return {
        "version": snapshot.version,
        "instance": services.parts.instance,
        "waiting_here": services.admission.waiting,
        "requests": entries,
    }
