"""The gateway's side of instance scaling: count arrivals, follow the route.

Arrivals are counted locally and added to the shared counter every `sync_every_s`, so a
request costs no Redis call; the route is read back on the same beat, and new requests
go to the Triton model it names. If the channel cannot be reached, traffic stays on the
last route it read: scaling pauses, serving does not.
"""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

from slo_scoreboard.cancellation import raise_if_cancelled
from slo_scoreboard.scaling_channel import ScalingChannel

log = logging.getLogger(__name__)


class ScalingFollower:
    def __init__(
        self, channel: ScalingChannel, default_model: str, sync_every_s: float = 0.5
    ) -> None:
        self.model = default_model
        self.channel = channel
        self._sync_every_s = sync_every_s
        self._unsent_arrivals = 0
        self._failing = False

    def arrived(self) -> None:
        self._unsent_arrivals += 1

    async def run(self) -> None:
        while True:
            await self.sync()
            await asyncio.sleep(self._sync_every_s)

    async def sync(self) -> None:
        arrivals, self._unsent_arrivals = self._unsent_arrivals, 0
        try:
            await self.channel.add_arrivals(arrivals)
            route = await self.channel.route()
        except (RedisError, OSError) as error:
            raise_if_cancelled()
            self._unsent_arrivals += arrivals
            if not self._failing:
                log.warning("instance scaling: the channel is unreachable (%r); traffic stays "
                            "on %s", error, self.model)  # fmt: skip
            self._failing = True
            return
        self._failing = False
        if route and route != self.model:
            log.info("instance scaling: new requests go to %s (was %s)", route, self.model)
            self.model = route
