"""The composition root of the gateway: builds its collaborators from `Settings`.

The gateway (gateway/) is the HTTP service only; here its scoreboard, admission planner,
backend and predictors are built, and, in one process on the twin, the embedded governor
and instance scaler it pokes. uvicorn's workers call `create_gateway_app` (a factory).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import FastAPI

from gateway.app import create_app
from gateway.backends import connect_backend
from gateway.metrics import GatewayMetrics
from gateway.scaling_follower import ScalingFollower
from gateway.services import GatewayParts
from governor.energy_meter import EnergyMeter
from governor.gpu.twin_client import TwinGpu
from governor.loop import ClockGovernor, FrequencyPolicy, HighestClock
from governor.metrics import GovernorCollector
from governor.policy import PlannerPolicy, store_reader
from governor.scaler import InstanceScaler
from governor.settings import GpuBackendKind
from governor.triton_repository import TritonRepository
from predictor.loading import Predictions, load_predictions
from predictor.tokenizer import PromptTokenizer
from slo_planner.admission import AdmissionPlanner
from slo_planner.energy_forecast import EnergyForecast
from slo_planner.feasibility import IterationTimes
from slo_planner.iteration_times import TableIterationTimes, planned_iteration_times, prefill_weight
from slo_planner.scaling import ScalingPolicy
from slo_scoreboard.energy_ledger import EnergyLedger, MemoryEnergyLedger
from slo_scoreboard.energy_redis import RedisEnergyLedger
from slo_scoreboard.failover import FailoverStateStore
from slo_scoreboard.redis_store import RedisStateStore
from slo_scoreboard.roster import BoardTrust
from slo_scoreboard.scaling_channel import MemoryScalingChannel, ScalingChannel
from slo_scoreboard.scaling_redis import RedisScalingChannel
from slo_scoreboard.store import MemoryStateStore, RequestEntry, StateStore
from throttllem.orphan import master_pid, remove_own_metrics, stop_when_orphaned
from throttllem.settings import Settings

log = logging.getLogger(__name__)


def create_gateway_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def assemble(metrics: GatewayMetrics) -> AsyncIterator[GatewayParts]:
        async with gateway_parts(settings, metrics) as parts:
            yield parts

    return create_app(settings, assemble)


@contextlib.asynccontextmanager
async def gateway_parts(settings: Settings, metrics: GatewayMetrics) -> AsyncIterator[GatewayParts]:
    """The parts for one worker's life; the embedded governor and scaler run meanwhile."""
    predictions = await asyncio.to_thread(load_predictions, settings)
    store = state_store(settings, metrics)
    ledger = energy_ledger(settings)
    planner = admission_planner(settings, predictions)
    governor = None
    if settings.gpu_backend is GpuBackendKind.simulated:
        governor = embedded_governor(settings, store, planner)
        metrics.watch(GovernorCollector(governor.status))
        if ledger is not None and settings.redis_url is None:
            model = planner.model if planner is not None else None
            governor.meter = energy_meter(settings, store, ledger, model)
    forecast = energy_forecast(settings, planner, predictions)
    scaling = scaling_follower(settings)
    route = (lambda: scaling.model) if scaling is not None else None
    parts = GatewayParts(
        store=store,
        planner=planner,
        backend=connect_backend(settings, route),
        predictions=predictions,
        tokenizer=PromptTokenizer.from_file(settings.tokenizer_path),
        decision_window_s=settings.governor_window_ms / 1000,
        refresh_every_s=settings.state_entry_ttl_s / 3,
        instance=settings.instance,
        board_changed=governor.poke if governor is not None else _no_governor,
        scaling=scaling,
        ledger=ledger,
        energy_forecast=forecast if ledger is not None else None,
        planned_clock_mhz=(lambda: governor.status.target_clock_mhz) if governor else _no_clock,
    )
    tasks = []
    master = master_pid()
    if master is not None:
        tasks.append(asyncio.create_task(stop_when_orphaned(master), name="orphan-watch"))
    if governor is not None:
        tasks.append(asyncio.create_task(governor.run(), name="clock-governor"))
    scaler = embedded_scaler(settings, scaling)
    if scaler is not None:
        tasks.append(asyncio.create_task(scaler.run(settings.triton_model), name="scaler"))
    try:
        yield parts
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if governor is not None:
            await governor.aclose()
        await parts.backend.aclose()
        await store.aclose()
        if ledger is not None:
            await ledger.aclose()
        if scaling is not None:
            await scaling.channel.aclose()
        if master is not None and os.getppid() != master:
            remove_own_metrics()


def _no_clock() -> int | None:
    """No governor runs here: the clock is not known (the forecast takes the highest)."""
    return None


def _no_governor() -> None:
    """Nothing to poke: no governor runs in this process."""


def scaling_follower(settings: Settings) -> ScalingFollower | None:
    """With instance scaling: the channel in Redis when workers share one, else in memory
    (then this process also runs the scaler)."""
    if not settings.autoscale:
        return None
    channel: ScalingChannel = MemoryScalingChannel()
    if settings.redis_url is not None:
        channel = RedisScalingChannel.connect(settings.redis_url, settings.instance)
    return ScalingFollower(channel, settings.triton_model)


def instance_scaler(
    settings: Settings,
    channel: ScalingChannel,
    may_act: Callable[[], Awaitable[bool]] | None = None,
) -> InstanceScaler:
    """`may_act`: the leader's fencing check, asked before every move."""
    token = settings.triton_repository_token
    repository = TritonRepository(
        settings.backend_url, access_header=("triton-access-token", token) if token else None
    )
    policy = ScalingPolicy(settings.engine_sizes, settings.scale_headroom, settings.scale_grace_s)
    return InstanceScaler(
        policy,
        channel,
        repository,
        interval_s=settings.scale_interval_s,
        drain_s=settings.scale_drain_s,
        may_act=may_act,
    )


def embedded_scaler(settings: Settings, follower: ScalingFollower | None) -> InstanceScaler | None:
    """The scaler runs here only for a single process; with Redis, `throttllem govern`'s
    leader runs it, so that one scaler acts per instance."""
    if follower is None or settings.redis_url is not None:
        return None
    return instance_scaler(settings, follower.channel)


def embedded_governor(
    settings: Settings, store: StateStore, planner: AdmissionPlanner | None
) -> ClockGovernor:
    """The clock loop in this process, on the twin's GPUs: the SLO planner over this
    worker's board, or the highest clock without predictors."""
    gpus = [TwinGpu.connect(settings.gpu_control_url, index) for index in settings.gpu_indices]
    policy: FrequencyPolicy = HighestClock()
    if planner is not None:
        shared = settings.redis_url is not None  # other workers may feed the engine too
        trust = BoardTrust(forget_after_s=settings.state_entry_ttl_s) if shared else None
        policy = PlannerPolicy(store_reader(store, trust), planner.model, planner.engine,
                               margin=settings.governor_margin,
                               arrivals=settings.arrival_model(),
                               length_risk=settings.length_risk())  # fmt: skip
    return ClockGovernor(
        gpus,
        policy,
        window_s=settings.governor_window_ms / 1000,
        clock_s=time.time,  # the scoreboard's clock
        min_dwell_s=settings.governor_min_dwell_ms / 1000,
        switch_latency_s=settings.gpu_switch_latency_ms / 1000,
    )


def energy_ledger(settings: Settings) -> EnergyLedger | None:
    """Where answers' energy is billed: beside the scoreboard (Redis, or this process's
    memory); None with energy attribution off."""
    if not settings.energy_attribution:
        return None
    if settings.redis_url is None:
        return MemoryEnergyLedger()
    return RedisEnergyLedger.connect(
        settings.redis_url, settings.instance, settings.state_entry_ttl_s
    )


def energy_meter(
    settings: Settings,
    store: StateStore,
    ledger: EnergyLedger,
    model: IterationTimes | None,
) -> EnergyMeter:
    """The governor's meter over the whole board. One meter per instance bills each
    window: the embedded governor of a lone process, or `throttllem govern`'s leader."""
    weight = settings.energy_prefill_weight
    if weight is None:
        weight = 0.0
        if isinstance(model, TableIterationTimes):
            weight = prefill_weight(model)

    async def read_board() -> list[RequestEntry]:
        return (await store.snapshot()).entries

    return EnergyMeter(ledger, read_board, weight, len(settings.gpu_indices),
                       settings.energy_idle_power_w)  # fmt: skip


def energy_forecast(
    settings: Settings, planner: AdmissionPlanner | None, predictions: Predictions
) -> EnergyForecast | None:
    """Predicted energy at admission needs the planner's model and the power model."""
    model = planner.model if planner is not None else None
    if predictions.power is None or not isinstance(model, TableIterationTimes):
        return None
    weight = settings.energy_prefill_weight
    return EnergyForecast(model, predictions.power, len(settings.gpu_indices),
                          prefill_weight(model) if weight is None else weight)  # fmt: skip


def state_store(settings: Settings, metrics: GatewayMetrics) -> StateStore:
    if settings.redis_url is None:
        return MemoryStateStore()
    redis = RedisStateStore.connect(
        settings.redis_url, settings.instance, settings.state_entry_ttl_s
    )
    return FailoverStateStore(redis, on_degraded=metrics.watch_state_store())


def admission_planner(settings: Settings, predictions: Predictions) -> AdmissionPlanner | None:
    """Admission needs both predictors; without either, everything is admitted at once."""
    if predictions.length is None or predictions.performance is None:
        return None
    model = planned_iteration_times(predictions.performance, settings)
    return AdmissionPlanner(
        model, settings.engine_shape, retry_s=settings.governor_window_ms / 1000
    )
