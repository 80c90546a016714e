"""Everything a request handler needs, built once per app and reached through `Depends`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from gateway.backends.base import Backend
from gateway.metrics import GatewayMetrics
from gateway.predictions import Predictions
from gateway.scaling_follower import ScalingFollower
from gateway.settings import Settings
from gateway.state import StateStore
from governor.loop import ClockGovernor
from predictor.tokenizer import PromptTokenizer

if TYPE_CHECKING:
    from gateway.admission import Admission
    from gateway.chat_template import ChatTemplate


@dataclass
class Services:
    settings: Settings
    backend: Backend
    store: StateStore
    admission: Admission
    metrics: GatewayMetrics
    tokenizer: PromptTokenizer
    predictions: Predictions
    chat_template: ChatTemplate
    governor: ClockGovernor | None = None
    scaling: ScalingFollower | None = None  # instance scaling: arrivals and route

    def board_changed(self) -> None:
        """A request joined or left the engine: the governor decides now."""
        if self.governor is not None:
            self.governor.poke()


async def _services(request: Request) -> Services:
    """Async on purpose: FastAPI runs a plain `def` dependency in a worker thread."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(_services)]
