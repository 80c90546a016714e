"""The reference `throttllem bench gateway` holds the gateway against: a bare pass-through
proxy, FastAPI and httpx as their documentation shows them, with nothing of its own.

Every POST goes to the same path upstream with its body, and the answer streams back as
it comes. It is what a user could put in front of Triton in an afternoon, so what the
gateway costs beyond it is the price of predicting, admitting and accounting.

    THROTTLLEM_BENCH_UPSTREAM=http://127.0.0.1:8010 \\
        uvicorn --factory throttllem.bench.bare_proxy:create_app --workers 2
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

UPSTREAM_ENV = "THROTTLLEM_BENCH_UPSTREAM"


def create_app(upstream_url: str | None = None) -> FastAPI:
    upstream_url = upstream_url or os.environ[UPSTREAM_ENV]
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with httpx.AsyncClient(base_url=upstream_url, limits=limits, timeout=60) as client:
            app.state.client = client
            yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/{path:path}")
    async def forward(path: str, request: Request) -> StreamingResponse:
        client: httpx.AsyncClient = request.app.state.client
        headers = {"content-type": request.headers.get("content-type", "application/json")}
        sent = client.build_request(
            "POST", f"/{path}", content=await request.body(), headers=headers
        )
        answer = await client.send(sent, stream=True)
        return StreamingResponse(
            answer.aiter_raw(),
            status_code=answer.status_code,
            media_type=answer.headers.get("content-type"),
            background=BackgroundTask(answer.aclose),
        )

    return app
