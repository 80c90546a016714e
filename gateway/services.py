"""Everything a request handler needs, built once per app and reached through `Depends`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from gateway.backends.base import Backend
from gateway.metrics import GatewayMetrics
from gateway.predictions import Predictions
from gateway.settings import Settings
from gateway.state import StateStore
from governor.loop import ClockGovernor
from predictor.tokenizer import PromptTokenizer


@dataclass
class Services:
    settings: Settings
    backend: Backend
    store: StateStore
    metrics: GatewayMetrics
    tokenizer: PromptTokenizer
    predictions: Predictions
    governor: ClockGovernor | None = None

    def request_finished(self) -> None:
        if self.governor is not None:
            self.governor.poke()


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(_services)]
