"""The app factory: builds the gateway from settings, wires it, and nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI

from gateway.admission import Admission
from gateway.auth import require_api_key
from gateway.backends import connect_backend
from gateway.chat_template import ChatTemplate
from gateway.errors import install_error_handlers
from gateway.metrics import GatewayMetrics
from gateway.middleware import BodyLimit, CountResponses, RequestId
from gateway.planning import AdmissionPlanner, EngineShape
from gateway.predictions import Predictions, load_predictions
from gateway.routes import admin, chat, completions, health, models
from gateway.scaling_follower import ScalingFollower
from gateway.services import Services
from gateway.settings import GpuBackendKind, Settings
from gateway.state import MemoryStateStore, StateStore
from gateway.state_failover import FailoverStateStore
from gateway.state_redis import RedisStateStore
from governor.gpu.simulated import SimulatedGpu
from governor.iteration_times import TableIterationTimes
from governor.loop import ClockGovernor, FrequencyPolicy, HighestClock
from governor.policy import PlannerPolicy, store_reader
from governor.scaler import InstanceScaler
from governor.scaling import MemoryScalingChannel, ScalingChannel
from governor.scaling_redis import RedisScalingChannel
from predictor.tokenizer import PromptTokenizer

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    chat_template = (
        ChatTemplate.from_file(settings.chat_template_path)
        if settings.chat_template_path is not None
        else ChatTemplate.llama3()
    )  # a broken template fails here, at start, not at the first request

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        predictions = await asyncio.to_thread(load_predictions, settings)
        services = _build_services(settings, predictions, chat_template)
        app.state.services = services
        tasks = [asyncio.create_task(services.admission.run(), name="admission")]
        if services.governor is not None:
            tasks.append(asyncio.create_task(services.governor.run(), name="clock-governor"))
        if services.scaling is not None:
            tasks.append(asyncio.create_task(services.scaling.run(), name="scaling-follower"))
        scaler = _embedded_scaler(settings, services.scaling)
        if scaler is not None:
            tasks.append(asyncio.create_task(scaler.run(settings.triton_model), name="scaler"))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if services.governor is not None:
                await services.governor.aclose()
            await services.backend.aclose()
            await services.store.aclose()
            if services.scaling is not None:
                await services.scaling.channel.aclose()

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


def _build_services(
    settings: Settings, predictions: Predictions, chat_template: ChatTemplate
) -> Services:
    metrics = GatewayMetrics()
    metrics.watch_predictions(predictions)
    store = _state_store(settings, metrics)
    planner = _planner(settings, predictions)
    governor = None
    if settings.gpu_backend is GpuBackendKind.simulated:
        governor = _embedded_governor(settings, store, planner)
        metrics.watch_governor(governor.status)
    admission = Admission(
        store,
        planner,
        metrics,
        max_queue=settings.max_queue,
        retry_after_s=settings.retry_after_s,
        window_s=settings.governor_window_ms / 1000,
        refresh_every_s=settings.state_entry_ttl_s / 3,
    )
    scaling = _scaling_follower(settings)
    route = (lambda: scaling.model) if scaling is not None else None
    return Services(
        settings=settings,
        backend=connect_backend(settings, route),
        store=store,
        admission=admission,
        metrics=metrics,
        tokenizer=PromptTokenizer.from_file(settings.tokenizer_path),
        predictions=predictions,
        chat_template=chat_template,
        governor=governor,
        scaling=scaling,
    )


def _scaling_follower(settings: Settings) -> ScalingFollower | None:
    """With instance scaling: the channel in Redis when workers share one, else in memory
    (then this process also runs the scaler)."""
    if not settings.autoscale:
        return None
    channel: ScalingChannel = MemoryScalingChannel()
    if settings.redis_url is not None:
        channel = RedisScalingChannel.connect(settings.redis_url, settings.instance)
    return ScalingFollower(channel, settings.triton_model)


def _embedded_scaler(settings: Settings, follower: ScalingFollower | None) -> InstanceScaler | None:
    """The scaler runs here only for a single process; with Redis, `throttllem govern`'s
    leader runs it, so that one scaler acts per instance."""
    if follower is None or settings.redis_url is not None:
        return None
    return InstanceScaler.from_settings(settings, follower.channel)


def _embedded_governor(
    settings: Settings, store: StateStore, planner: AdmissionPlanner | None
) -> ClockGovernor:
    """The clock loop in this process, on the twin's GPUs: the SLO planner over this
    worker's board, or the highest clock without predictors."""
    gpus = [SimulatedGpu.connect(settings.gpu_control_url, index) for index in settings.gpu_indices]
    policy: FrequencyPolicy = HighestClock()
    if planner is not None:
        policy = PlannerPolicy(store_reader(store), planner.board, planner.model,
                               margin=settings.governor_margin)  # fmt: skip
    return ClockGovernor(
        gpus,
        policy,
        window_s=settings.governor_window_ms / 1000,
        clock_s=time.time,  # the scoreboard's clock
        min_dwell_s=settings.governor_min_dwell_ms / 1000,
        switch_latency_s=settings.gpu_switch_latency_ms / 1000,
    )


def _state_store(settings: Settings, metrics: GatewayMetrics) -> StateStore:
    if settings.redis_url is None:
        return MemoryStateStore()
    redis = RedisStateStore.connect(
        settings.redis_url, settings.instance, settings.state_entry_ttl_s
    )
    return FailoverStateStore(redis, on_degraded=metrics.watch_state_store())


def _planner(settings: Settings, predictions: Predictions) -> AdmissionPlanner | None:
    """Admission needs both predictors; without either, everything is admitted at once."""
    if predictions.length is None or predictions.performance is None:
        return None
    engine = EngineShape(
        max_batch=settings.engine_max_batch,
        kv_capacity_blocks=settings.engine_kv_capacity_blocks,
        tokens_per_block=settings.engine_tokens_per_block,
    )
    model = TableIterationTimes(
        predictions.performance, prefill_s_per_token=settings.prefill_us_per_token / 1e6
    )
    return AdmissionPlanner(model, engine)
