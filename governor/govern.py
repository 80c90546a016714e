"""The governor as a process of its own, next to the GPUs: lead, govern, beat.

`run_governor` is the child that governor/watchdog.py supervises (the composition root,
throttllem/govern.py, builds its parts from settings and runs both). It takes the
instance's leader lock before it touches a clock, and on losing it stops and resets the
clocks at once. Its decisions use wall-clock time, the scoreboard's. Every clock change
first checks the leader's fencing token, so a leader that was replaced but has not yet
noticed changes nothing. The leader also runs instance scaling, when it is given one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import start_http_server

from governor.energy_meter import EnergyMeter
from governor.gpu.base import GpuClock, GpuError
from governor.leadership import LeaderElection, RedisLeaderLock
from governor.loop import ClockGovernor, FrequencyPolicy, GovernorStatus
from governor.metrics import governor_registry
from governor.watchdog import Heartbeat, ParentWatch

log = logging.getLogger(__name__)

StillLeading = Callable[[], Awaitable[bool]]


@dataclass(frozen=True)
class GovernorProcess:
    """What the child needs, built by the composition root."""

    load_policy: Callable[[], FrequencyPolicy]  # blocking (loads model files): run in a thread
    open_gpus: Callable[[], list[GpuClock]]  # blocking for NVML
    lock: RedisLeaderLock
    window_s: float
    min_dwell_s: float
    switch_latency_s: float
    scale: Callable[[StillLeading], Awaitable[None]] | None = None  # the leader's scaling
    metrics_address: tuple[str, int] | None = None  # where to serve Prometheus metrics
    # The energy meter (blocking: loads the model), or None: no energy attribution.
    load_meter: Callable[[], EnergyMeter | None] | None = None


async def run_governor(process: GovernorProcess, heartbeat: Heartbeat) -> int:
    """Lead, govern, beat; reset and exit when told, on losing the lead, or when the
    supervisor is gone."""
    parent = ParentWatch()
    window_s = process.window_s
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _stopping, stop)

    async def ticks(until: asyncio.Future[object]) -> None:
        while not until.done():
            heartbeat.beat()
            await asyncio.sleep(window_s)

    def load() -> tuple[FrequencyPolicy, EnergyMeter | None]:
        return process.load_policy(), process.load_meter() if process.load_meter else None

    loading = asyncio.ensure_future(asyncio.to_thread(load))
    beating = asyncio.create_task(ticks(loading))  # loading takes seconds: stay alive meanwhile
    try:
        policy, meter = await loading
        gpus = await asyncio.to_thread(process.open_gpus)
    except GpuError as error:
        log.error("governor: cannot open the GPUs: %s", error)
        return 1
    finally:
        await beating
    lock = process.lock
    elected_token: int | None = None

    async def still_leading() -> bool:
        """The fencing check before any actuation: our token is still the newest."""
        return elected_token is not None and await lock.fence_is_current(elected_token)

    governor = ClockGovernor(
        gpus, policy, window_s, clock_s=time.time,
        min_dwell_s=process.min_dwell_s, switch_latency_s=process.switch_latency_s,
        on_decision=heartbeat.beat, may_actuate=still_leading, meter=meter,
    )  # fmt: skip
    if process.metrics_address is not None:
        serve_metrics(governor.status, *process.metrics_address)
    tasks: list[asyncio.Task[None]] = []

    async def on_elected(token: int) -> None:
        nonlocal elected_token
        elected_token = token
        heartbeat.leading = True
        heartbeat.beat()  # before any clock is locked: the supervisor knows to reset
        tasks.append(asyncio.create_task(governor.run()))
        if process.scale is not None:
            tasks.append(asyncio.create_task(process.scale(still_leading)))

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


def serve_metrics(status: GovernorStatus, host: str, port: int) -> None:
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
