"""The instance scaler's loop: the scaling rounds (slo_planner/scaling.py) on the wall
clock, applied to Triton.

Every `interval_s` (the paper: 10 s) it reads the arrivals counter the gateways add to,
and the rounds pick a size. A new size is started in the shadow — loaded through
Triton's repository API while the current engine keeps serving — and traffic moves (the
route changes) only once it answers ready. The engine left behind keeps its running
requests and is unloaded after `drain_s`; if the rate comes back first, it is reused
instead. A load that fails or never becomes ready leaves traffic where it was.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from governor.triton_repository import RepositoryError, TritonRepository
from slo_planner.scaling import EngineSize, ScalingPolicy, ScalingSteps
from slo_scoreboard.cancellation import raise_if_cancelled
from slo_scoreboard.scaling_channel import ScalingChannel

log = logging.getLogger(__name__)

READY_POLL_S = 0.5


class InstanceScaler:
    def __init__(
        self,
        policy: ScalingPolicy,
        channel: ScalingChannel,
        repository: TritonRepository,
        interval_s: float = 10.0,
        drain_s: float = 60.0,
        ready_timeout_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        may_act: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        """`may_act`, asked before every move, is the leader's fencing check."""
        self.policy = policy
        self.steps = ScalingSteps(policy, policy.sizes[0], drain_s)
        self._channel = channel
        self._repository = repository
        self._interval_s = interval_s
        self._ready_timeout_s = ready_timeout_s
        self._clock = clock
        self._unloads: dict[str, asyncio.Task[None]] = {}
        self._may_act = may_act

    @property
    def current(self) -> EngineSize:
        return self.steps.current

    @property
    def rate_rps(self) -> float | None:
        return self.steps.rate_rps

    async def start(self, default_model: str) -> None:
        """Take up the route a previous scaler left, else the size serving `default_model`;
        the rate is measured from here."""
        by_model = {size.triton_model: size for size in self.policy.sizes}
        route = await self._channel.route()
        self.steps.current = by_model.get(route or default_model, self.policy.sizes[0])
        if route != self.current.triton_model:
            await self._channel.set_route(self.current.triton_model)
        self.steps.count(await self._channel.arrivals(), self._clock())
        log.info("instance scaling: serving on %s (%s)", self.current.label,
                 self.current.triton_model)  # fmt: skip

    async def run(self, default_model: str) -> None:
        await self.start(default_model)
        try:
            while True:
                await asyncio.sleep(self._interval_s)
                try:
                    await self.step()
                except Exception:  # scaling must never stop serving
                    raise_if_cancelled()
                    log.exception("instance scaling: this round failed; traffic stays on %s",
                                  self.current.label)  # fmt: skip
        finally:
            for task in self._unloads.values():
                task.cancel()
            await self._repository.aclose()

    async def step(self) -> EngineSize:
        """One round: the rate since the last round, and a move if the policy wants one."""
        target = self.steps.round(await self._channel.arrivals(), self._clock())
        if target is not None:
            await self.move_to(target)
        return self.current

    async def move_to(self, target: EngineSize) -> bool:
        """Load `target` in the shadow, route traffic to it once ready, drain the old one."""
        if self._may_act is not None and not await self._may_act():
            log.warning("instance scaling: a newer leader holds the instance; not moving")
            return False
        draining = self._unloads.pop(target.triton_model, None)
        if draining is not None:
            draining.cancel()  # still loaded: take it back
        if not await self._repository.ready(target.triton_model):
            log.warning("instance scaling: %.2f req/s, starting %s (%s) in the shadow",
                        self.rate_rps or 0.0, target.label, target.triton_model)  # fmt: skip
            if not await self._load(target):
                return False
        previous, _ = self.steps.moved(target, self._clock())
        await self._channel.set_route(target.triton_model)
        log.warning("instance scaling: traffic moved from %s to %s; %s unloads in %g s",
                    previous.label, target.label, previous.label, self.steps.drain_s)  # fmt: skip
        self._unloads[previous.triton_model] = asyncio.create_task(self._unload_later(previous))
        return True

    async def _load(self, target: EngineSize) -> bool:
        try:
            async with asyncio.timeout(self._ready_timeout_s):
                await self._repository.load(target.triton_model)
                while True:  # Triton's load returns once loaded; some servers lag in ready
                    if await self._repository.ready(target.triton_model):
                        break
                    await asyncio.sleep(READY_POLL_S)
        except (RepositoryError, TimeoutError) as error:
            log.error("instance scaling: %s did not become ready (%s); traffic stays on %s",
                      target.label, error or "timed out", self.current.label)  # fmt: skip
            return False
        return True

    async def _unload_later(self, size: EngineSize) -> None:
        try:
            await asyncio.sleep(self.steps.drain_s)
            await self._repository.unload(size.triton_model)
            self.steps.unloaded(size)
            log.warning("instance scaling: unloaded %s (%s)", size.label, size.triton_model)
        except RepositoryError as error:
            log.error("instance scaling: %s stays loaded: %s", size.label, error)
        finally:
            if self._unloads.get(size.triton_model) is asyncio.current_task():
                del self._unloads[size.triton_model]

    async def drained(self) -> None:
        """Wait for the pending unloads (tests)."""
        await asyncio.gather(*self._unloads.values(), return_exceptions=True)
