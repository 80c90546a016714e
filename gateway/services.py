"""What the gateway is given, and everything a request handler needs.

The composition root (throttllem/wiring.py) builds the gateway's collaborators — the
scoreboard, the admission planner, the backend, the predictors, and a handle to poke the
governor — and hands them over as `GatewayParts`; the gateway builds nothing of the
governor's or the scoreboard's from settings itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from gateway.backends.base import Backend
from gateway.metrics import GatewayMetrics
from gateway.scaling_follower import ScalingFollower
from gateway.settings import GatewaySettings
from predictor.loading import Predictions
from predictor.tokenizer import PromptTokenizer
from slo_planner.admission import AdmissionPlanner
from slo_planner.energy_forecast import EnergyForecast
from slo_scoreboard.energy_ledger import EnergyLedger
from slo_scoreboard.store import StateStore

if TYPE_CHECKING:
    from gateway.admission import Admission
    from gateway.chat_template import ChatTemplate


def _nothing() -> None:
    return None


def _no_clock() -> int | None:
    return None


@dataclass
class GatewayParts:
    """The gateway's collaborators, built by the composition root."""

    store: StateStore
    planner: AdmissionPlanner | None  # None: no predictors, everything admitted at once
    backend: Backend
    predictions: Predictions
    tokenizer: PromptTokenizer
    decision_window_s: float  # the governor's window: how often the board needs counts
    refresh_every_s: float  # how often this worker re-arms its entries' TTL
    instance: str = "default"  # the scoreboard's name, shown by /admin/scoreboard
    board_changed: Callable[[], None] = _nothing  # a request joined or left: poke the governor
    scaling: ScalingFollower | None = None  # instance scaling: arrivals and route
    ledger: EnergyLedger | None = None  # each answer's energy; None: not told (docs/energy.md)
    energy_forecast: EnergyForecast | None = None  # predicted energy at admission
    planned_clock_mhz: Callable[[], int | None] = _no_clock  # the governor's, if known here


# Builds the parts for one app's life (a worker's), given the gateway's metrics, and
# closes what it built on the way out.
Assemble = Callable[[GatewayMetrics], contextlib.AbstractAsyncContextManager[GatewayParts]]


@dataclass
class Services:
    settings: GatewaySettings
    parts: GatewayParts
    admission: Admission
    metrics: GatewayMetrics
    chat_template: ChatTemplate

    @property
    def backend(self) -> Backend:
        return self.parts.backend

    @property
    def store(self) -> StateStore:
        return self.parts.store

    @property
    def tokenizer(self) -> PromptTokenizer:
        return self.parts.tokenizer

    @property
    def predictions(self) -> Predictions:
        return self.parts.predictions

    @property
    def planner(self) -> AdmissionPlanner | None:
        return self.parts.planner

    @property
    def scaling(self) -> ScalingFollower | None:
        return self.parts.scaling

    def board_changed(self) -> None:
        """A request joined or left the engine: the governor decides now."""
        self.parts.board_changed()


async def _services(request: Request) -> Services:
    """Async on purpose: FastAPI runs a plain `def` dependency in a worker thread."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(_services)]
