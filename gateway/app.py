"""The app factory: builds the gateway from settings, wires it, and nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.backends.triton import TritonBackend
from gateway.errors import install_error_handlers
from gateway.metrics import GatewayMetrics
from gateway.predictions import Predictions, load_predictions
from gateway.routes import completions, health, models
from gateway.services import Services
from gateway.settings import GpuBackendKind, Settings
from gateway.state import MemoryStateStore
from governor.gpu.simulated import SimulatedGpu
from governor.loop import ClockGovernor, HighestClock
from predictor.tokenizer import PromptTokenizer

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = _build_services(settings, await asyncio.to_thread(load_predictions, settings))
        app.state.services = services
        governor_task = None
        if services.governor is not None:
            governor_task = asyncio.create_task(services.governor.run(), name="clock-governor")
        try:
            yield
        finally:
            if services.governor is not None and governor_task is not None:
                governor_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await governor_task
                await services.governor.aclose()
            await services.backend.aclose()

    app = FastAPI(title="throttllem", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    for router in (completions.router, models.router, health.router):
        app.include_router(router)
    app.add_middleware(_CountResponses)
    return app


def _build_services(settings: Settings, predictions: Predictions) -> Services:
    metrics = GatewayMetrics()
    metrics.watch_predictions(predictions)
    backend = TritonBackend.connect(
        settings.backend_url,
        settings.triton_model,
        timeout_s=settings.backend_timeout_s,
        connect_timeout_s=settings.backend_connect_timeout_s,
    )
    governor = None
    if settings.gpu_backend is GpuBackendKind.simulated:
        gpus = [
            SimulatedGpu.connect(settings.gpu_control_url, index) for index in settings.gpu_indices
        ]
        governor = ClockGovernor(gpus, HighestClock(), window_s=settings.governor_window_ms / 1000)
        metrics.watch_governor(governor.status)
    return Services(
        settings=settings,
        backend=backend,
        store=MemoryStateStore(),
        metrics=metrics,
        tokenizer=PromptTokenizer.from_file(settings.tokenizer_path),
        predictions=predictions,
        governor=governor,
    )


class _CountResponses:
    """Counts every `/v1/*` answer by endpoint and status, errors included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/v1/"):
            await self.app(scope, receive, send)
            return

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                services: Services | None = getattr(scope["app"].state, "services", None)
                if services is not None:
                    services.metrics.requests.labels(
                        path.removeprefix("/v1/"), str(message["status"])
                    ).inc()
            await send(message)

        await self.app(scope, receive, send=counting_send)
