"""`throttllem govern`: the governor alone, next to the GPUs, reading the scoreboard from
Redis. Two processes (see governor/watchdog.py): `govern()` is the supervisor; it runs
`python -m throttllem.govern --heartbeat-fd N` as the governor (governor/govern.py).

Its policy is the SLO planner over the performance model
(`THROTTLLEM_PERFORMANCE_MODEL_PATH`); without one it holds the highest clock. With
`THROTTLLEM_AUTOSCALE`, the leader also runs the instance scaler (governor/scaler.py)
over the arrivals and route the gateways share in Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from governor.energy_meter import EnergyMeter
from governor.govern import GovernorProcess, StillLeading, run_governor
from governor.gpu.base import GpuClock, GpuError
from governor.leadership import RedisLeaderLock, default_holder_id
from governor.loop import FrequencyPolicy
from governor.policy import PlannerPolicy, store_reader
from governor.settings import GpuBackendKind
from governor.watchdog import CONFIG_ERROR_EXIT_CODE, Heartbeat, stall_limit_s, supervise
from predictor.loading import load_predictions
from slo_planner.iteration_times import planned_iteration_times
from slo_scoreboard.redis_store import RedisStateStore
from slo_scoreboard.roster import BoardTrust
from slo_scoreboard.scaling_redis import RedisScalingChannel
from throttllem.logs import configure_logging
from throttllem.settings import Settings
from throttllem.wiring import energy_ledger, energy_meter, instance_scaler

log = logging.getLogger(__name__)


class GovernConfigError(ValueError):
    """Settings `throttllem govern` cannot run with; the message says which."""


def load_settings() -> Settings:
    try:
        settings = Settings()
    except ValidationError as error:
        raise GovernConfigError(str(error)) from error
    if not settings.redis_url:
        raise GovernConfigError(
            "THROTTLLEM_REDIS_URL is required: the governor reads the scoreboard and takes "
            "the instance's leader lock there"
        )
    if settings.gpu_backend is GpuBackendKind.none:
        raise GovernConfigError(
            "THROTTLLEM_GPU_BACKEND is `none`: set `simulated`, `nvml` or `observe`"
        )
    return settings


def open_gpus(settings: Settings) -> list[GpuClock]:
    """The instance's GPUs through the configured backend. Blocking for NVML."""
    if settings.gpu_backend is GpuBackendKind.simulated:
        from governor.gpu.twin_client import TwinGpu

        return [TwinGpu.connect(settings.gpu_control_url, i) for i in settings.gpu_indices]
    from governor.gpu.observe import open_nvml_instance

    mode = "observe" if settings.gpu_backend is GpuBackendKind.observe else "control"
    return open_nvml_instance(settings.gpu_indices, mode)


class ClockResetter:
    """The supervisor's reset: hand each GPU back to its default clock.

    The GPUs are opened once, ahead of need, on an event loop kept for all resets: a
    stalled governor's reset is on the clock (`RESET_WITHIN_S`), and opening them afresh
    (an HTTP client's TLS setup, NVML's start) costs a good part of it. A reset that
    fails opens them afresh and tries once more. Blocking; the supervisor's thread only.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._runner = asyncio.Runner()
        self._gpus: list[GpuClock] | None = None

    def prepare(self) -> None:
        """Open the GPUs now; if they cannot be opened yet, the first reset tries."""
        try:
            self._open()
        except GpuError as error:
            log.warning("watchdog: GPUs not opened ahead of a reset: %s", error)

    def __call__(self) -> None:
        try:
            self._runner.run(self._reset(self._open()))
        except GpuError as error:
            log.warning("watchdog: reset failed (%s): opening the GPUs afresh", error)
            self._close_gpus()
            self._runner.run(self._reset(self._open()))
        log.info("watchdog: clocks reset to default")

    def close(self) -> None:
        self._close_gpus()
        self._runner.close()

    def _open(self) -> list[GpuClock]:
        if self._gpus is None:
            self._gpus = open_gpus(self._settings)
        return self._gpus

    def _close_gpus(self) -> None:
        gpus, self._gpus = self._gpus, None
        for gpu in gpus or []:
            with contextlib.suppress(GpuError):
                self._runner.run(gpu.aclose())

    @staticmethod
    async def _reset(gpus: list[GpuClock]) -> None:
        failed: GpuError | None = None
        for gpu in gpus:  # every GPU, even after one fails
            try:
                await gpu.reset_clock()
            except GpuError as error:
                log.error("watchdog: could not reset a clock: %s", error)
                failed = error
        if failed is not None:
            raise failed


def govern(log_level: str = "INFO") -> int:
    """The supervisor: validate, then run and watch the governor process."""
    try:
        settings = load_settings()
    except GovernConfigError as error:
        print(f"throttllem govern: {error}", file=sys.stderr)
        return CONFIG_ERROR_EXIT_CODE

    def child_command(heartbeat_fd: int) -> list[str]:
        return [sys.executable, "-m", "throttllem.govern", "--heartbeat-fd", str(heartbeat_fd),
                "--log-level", log_level]  # fmt: skip

    stall_s = stall_limit_s(settings.gpu_switch_latency_ms / 1000)
    reset_clocks = ClockResetter(settings)
    reset_clocks.prepare()
    try:
        return supervise(child_command, reset_clocks, stall_s=stall_s)
    finally:
        reset_clocks.close()


def planner_policy(settings: Settings) -> FrequencyPolicy:
    """The SLO planner over the scoreboard in Redis (blocking: it loads the model)."""
    predictions = load_predictions(settings.model_copy(update={"length_model_path": None}))
    table = predictions.performance
    if table is None:
        log.warning("governor: no performance model: holding the highest clock")
    model = planned_iteration_times(table, settings) if table is not None else None
    assert settings.redis_url is not None  # checked by load_settings
    store = RedisStateStore.connect(
        settings.redis_url, settings.instance, settings.state_entry_ttl_s
    )
    trust = BoardTrust(forget_after_s=settings.state_entry_ttl_s)
    return PlannerPolicy(store_reader(store, trust), model, settings.engine_shape,
                         margin=settings.governor_margin,
                         arrivals=settings.arrival_model(),
                         length_risk=settings.length_risk())  # fmt: skip


def governor_meter(settings: Settings) -> EnergyMeter | None:
    """The leader's energy meter over the scoreboard in Redis (blocking: it loads the
    performance model for the prefill weight); None with energy attribution off."""
    ledger = energy_ledger(settings)
    if ledger is None:
        return None
    assert settings.redis_url is not None  # checked by load_settings
    predictions = load_predictions(settings.model_copy(update={"length_model_path": None}))
    table = predictions.performance
    model = planned_iteration_times(table, settings) if table is not None else None
    store = RedisStateStore.connect(
        settings.redis_url, settings.instance, settings.state_entry_ttl_s
    )
    return energy_meter(settings, store, ledger, model)


def governor_process(settings: Settings) -> GovernorProcess:
    assert settings.redis_url is not None  # checked by load_settings
    redis_url = settings.redis_url

    async def scale(still_leading: StillLeading) -> None:
        """Instance scaling, run by the leader only: one scaler acts per instance."""
        channel = RedisScalingChannel.connect(redis_url, settings.instance)
        try:
            scaler = instance_scaler(settings, channel, may_act=still_leading)
            await scaler.run(settings.triton_model)
        finally:
            await channel.aclose()

    port = settings.governor_metrics_port
    return GovernorProcess(
        load_policy=lambda: planner_policy(settings),
        open_gpus=lambda: open_gpus(settings),
        lock=RedisLeaderLock(redis_url, settings.instance, default_holder_id()),
        window_s=settings.governor_window_ms / 1000,
        min_dwell_s=settings.governor_min_dwell_ms / 1000,
        switch_latency_s=settings.gpu_switch_latency_ms / 1000,
        scale=scale if settings.autoscale else None,
        metrics_address=(settings.host, port) if port is not None else None,
        load_meter=lambda: governor_meter(settings),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m throttllem.govern")
    parser.add_argument("--heartbeat-fd", type=int, required=True)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        settings = load_settings()
    except GovernConfigError as error:
        log.error("governor: %s", error)
        return CONFIG_ERROR_EXIT_CODE
    return asyncio.run(run_governor(governor_process(settings), Heartbeat(args.heartbeat_fd)))


if __name__ == "__main__":
    sys.exit(main())
