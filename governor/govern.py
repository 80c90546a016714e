"""`throttllem govern`: the governor alone, next to the GPUs, reading the scoreboard from
Redis. Two processes (see governor/watchdog.py): this module's `govern()` is the
supervisor; it runs `python -m governor.govern --heartbeat-fd N` as the governor.

The governor takes the instance's leader lock in Redis before it touches a clock, and
on losing it stops and resets the clocks at once. Its policy is the SLO planner over
the performance model (`THROTTLLEM_PERFORMANCE_MODEL_PATH`); without one it holds the
highest clock. Its decisions use wall-clock time, the scoreboard's. Every clock change
first checks the leader's fencing token, so a leader that was replaced but has not yet
noticed changes nothing. With `THROTTLLEM_AUTOSCALE`, the leader also runs the instance
scaler (governor/scaler.py) over the arrivals and route the gateways share in Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence

from prometheus_client import start_http_server
from pydantic import ValidationError

from gateway.metrics import governor_registry
from gateway.planning import AdmissionPlanner, EngineShape
from gateway.predictions import load_predictions
from gateway.settings import GpuBackendKind, Settings
from gateway.state import RequestEntry
from gateway.state_redis import RedisStateStore
from governor.gpu.base import GpuClock, GpuError
from governor.iteration_times import TableIterationTimes
from governor.leadership import LeaderElection, RedisLeaderLock, default_holder_id
from governor.loop import ClockGovernor, GovernorStatus
from governor.policy import PlannerPolicy, store_reader
from governor.scaler import InstanceScaler
from governor.scaling_redis import RedisScalingChannel
from governor.watchdog import CONFIG_ERROR_EXIT_CODE, Heartbeat, ParentWatch, supervise
from predictor.board import Board

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
        from governor.gpu.simulated import SimulatedGpu

        return [SimulatedGpu.connect(settings.gpu_control_url, i) for i in settings.gpu_indices]
    from governor.gpu.observe import open_nvml_instance

    mode = "observe" if settings.gpu_backend is GpuBackendKind.observe else "control"
    return open_nvml_instance(settings.gpu_indices, mode)


def reset_clocks(settings: Settings) -> None:
    """The supervisor's reset: open the GPUs afresh, hand each back to its default clock."""

    async def reset() -> None:
        gpus = open_gpus(settings)
        try:
            for gpu in gpus:
                try:
                    await gpu.reset_clock()
                except GpuError as error:
                    log.error("watchdog: could not reset a clock: %s", error)
        finally:
            for gpu in gpus:
                await gpu.aclose()

    asyncio.run(reset())
    log.info("watchdog: clocks reset to default")


def govern(log_level: str = "INFO") -> int:
    """The supervisor: validate, then run and watch the governor process."""
    try:
        settings = load_settings()
    except GovernConfigError as error:
        print(f"throttllem govern: {error}", file=sys.stderr)
        return CONFIG_ERROR_EXIT_CODE

    def child_command(heartbeat_fd: int) -> list[str]:
        return [sys.executable, "-m", "governor.govern", "--heartbeat-fd", str(heartbeat_fd),
                "--log-level", log_level]  # fmt: skip

    return supervise(child_command, lambda: reset_clocks(settings))


def _policy(settings: Settings) -> PlannerPolicy:
    predictions = load_predictions(settings.model_copy(update={"length_model_path": None}))
    table = predictions.performance
    if table is None:
        log.warning("governor: no performance model: holding the highest clock")
    prefill_s = settings.prefill_us_per_token / 1e6
    model = TableIterationTimes(table, prefill_s_per_token=prefill_s) if table is not None else None
    shape = EngineShape(
        max_batch=settings.engine_max_batch,
        kv_capacity_blocks=settings.engine_kv_capacity_blocks,
        tokens_per_block=settings.engine_tokens_per_block,
    )
    assert settings.redis_url is not None  # checked by load_settings
    store = RedisStateStore.connect(
        settings.redis_url, settings.instance, settings.state_entry_ttl_s
    )
    planner = AdmissionPlanner(model, shape) if model is not None else None
    board_of = planner.board if planner is not None else _no_board
    return PlannerPolicy(store_reader(store), board_of, model, margin=settings.governor_margin)


def _no_board(entries: Sequence[RequestEntry], now_s: float) -> Board:
    raise AssertionError("no model, no board")  # PlannerPolicy never plans without a model


async def run_governor(settings: Settings, heartbeat: Heartbeat) -> int:
    """The child: lead, govern, beat; reset and exit when told, on losing the lead, or
    when the supervisor is gone."""
    parent = ParentWatch()
    window_s = settings.governor_window_ms / 1000
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _stopping, stop)

    async def ticks(until: asyncio.Future[object]) -> None:
        while not until.done():
            heartbeat.beat()
            await asyncio.sleep(window_s)

    loading = asyncio.ensure_future(asyncio.to_thread(_policy, settings))
    beating = asyncio.create_task(ticks(loading))  # loading takes seconds: stay alive meanwhile
    try:
        policy = await loading
        gpus = await asyncio.to_thread(open_gpus, settings)
    except GpuError as error:
        log.error("governor: cannot open the GPUs: %s", error)
        return 1
    finally:
        await beating
    assert settings.redis_url is not None
    lock = RedisLeaderLock(settings.redis_url, settings.instance, default_holder_id())
    elected_token: int | None = None

    async def still_leading() -> bool:
        """The fencing check before any actuation: our token is still the newest."""
        return elected_token is not None and await lock.fence_is_current(elected_token)

    governor = ClockGovernor(
        gpus, policy, window_s, clock_s=time.time,
        min_dwell_s=settings.governor_min_dwell_ms / 1000,
        switch_latency_s=settings.gpu_switch_latency_ms / 1000,
        on_decision=heartbeat.beat, may_actuate=still_leading,
    )  # fmt: skip
    if settings.governor_metrics_port is not None:
        _serve_metrics(governor.status, settings.host, settings.governor_metrics_port)
    tasks: list[asyncio.Task[None]] = []

    async def on_elected(token: int) -> None:
        nonlocal elected_token
        elected_token = token
        heartbeat.leading = True
        heartbeat.beat()  # before any clock is locked: the supervisor knows to reset
        tasks.append(asyncio.create_task(governor.run()))
        if settings.autoscale:
            tasks.append(asyncio.create_task(_scaler(settings, still_leading)))

    async def on_lost() -> None:
        nonlocal elected_token
        elected_token = None
        while tasks:
            task = tasks.pop()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task  # the clock loop resets the clocks on its way out
        heartbeat.leading = False
        heartbeat.beat()

    election = asyncio.create_task(
        LeaderElection(lock, on_elected=on_elected, on_lost=on_lost).run()
    )
    try:
        while not stop.is_set():
            if heartbeat.parent_gone or not parent.parent_alive():
                log.error("governor: the watchdog is gone: resetting clocks and exiting")
                break
            if not heartbeat.leading:
                heartbeat.beat()  # a follower decides nothing, but is alive
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(window_s):
                    await stop.wait()
    finally:
        log.info("governor: stepping down")
        election.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await election  # steps down: on_lost resets the clocks
        await on_lost()
        await lock.aclose()
        await governor.aclose()
    return 0


async def _scaler(settings: Settings, still_leading: Callable[[], Awaitable[bool]]) -> None:
    """Instance scaling, run by the leader only: one scaler acts per instance."""
    assert settings.redis_url is not None
    channel = RedisScalingChannel.connect(settings.redis_url, settings.instance)
    try:
        scaler = InstanceScaler.from_settings(settings, channel, may_act=still_leading)
        await scaler.run(settings.triton_model)
    finally:
        await channel.aclose()


def _serve_metrics(status: GovernorStatus, host: str, port: int) -> None:
    """Prometheus metrics from a thread; a port that cannot be bound costs the metrics,
    never the governing."""
    try:
        start_http_server(port, addr=host, registry=governor_registry(status))
    except OSError as error:
        log.error("governor: no metrics endpoint on %s:%d: %s", host, port, error)
        return
    log.info("governor: metrics on http://%s:%d/metrics", host, port)


def _stopping(stop: asyncio.Event) -> None:
    log.info("governor: stopping")
    stop.set()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m governor.govern")
    parser.add_argument("--heartbeat-fd", type=int, required=True)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = load_settings()
    except GovernConfigError as error:
        log.error("governor: %s", error)
        return CONFIG_ERROR_EXIT_CODE
    return asyncio.run(run_governor(settings, Heartbeat(args.heartbeat_fd)))


if __name__ == "__main__":
    sys.exit(main())
