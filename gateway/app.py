"""The app factory: the HTTP service around the parts it is given, and nothing else."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI

from gateway.admission import Admission
from gateway.auth import require_api_key
from gateway.chat_template import ChatTemplate
from gateway.errors import install_error_handlers
from gateway.metrics import GatewayMetrics
from gateway.middleware import BodyLimit, CountResponses, RequestId
from gateway.routes import admin, chat, completions, health, models
from gateway.services import Assemble, Services
from gateway.settings import GatewaySettings


def create_app(settings: GatewaySettings, assemble: Assemble) -> FastAPI:
    """`assemble` builds the collaborators when the app starts (throttllem/wiring.py)."""
    chat_template = (
        ChatTemplate.from_file(settings.chat_template_path)
        if settings.chat_template_path is not None
        else ChatTemplate.llama3()
    )  # a broken template fails here, at start, not at the first request

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics = GatewayMetrics()
        async with assemble(metrics) as parts:
            metrics.watch_predictions(parts.predictions)
            admission = Admission(
                parts.store,
                parts.planner,
                metrics,
                max_queue=settings.max_queue,
                retry_after_s=settings.retry_after_s,
                window_s=parts.decision_window_s,
                refresh_every_s=parts.refresh_every_s,
            )
            app.state.services = Services(settings, parts, admission, metrics, chat_template)
            tasks = [asyncio.create_task(admission.run(), name="admission")]
            if parts.scaling is not None:
                tasks.append(asyncio.create_task(parts.scaling.run(), name="scaling-follower"))
            try:
                yield
            finally:
                for task in tasks:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    app = FastAPI(title="throttllem", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    for router in (completions.router, chat.router, models.router):
        app.include_router(router, dependencies=[Depends(require_api_key)])
    app.include_router(health.router)
    app.include_router(admin.router)
    app.add_middleware(CountResponses)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestId)  # outermost: every answer has an id, 413s included
    return app
