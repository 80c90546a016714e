"""The energy ledger: the governor credits each window's energy to the requests on the
board, and each gateway worker settles its own requests when they end.

The governor, every window (governor/energy_meter.py), prices the window and credits
every request it saw with its share (`credit`). A request that ends between two windows
is settled by its worker (`settle`): what was credited, plus its last moments since the
latest window, priced at that window's prices (`slo_planner.energy_split`). Those last
moments' work is then added to the departed work (`departed_work`), which the governor
counts into the next window's totals, so that no joule is billed twice.

A settlement is refused (None), never guessed, when the ledger cannot vouch for it: no
window was ever priced, the latest is stale (the governor stopped metering), or the
credited windows do not cover the time the engine held the request (a gap: the
governor restarted, or could not read the energy counter or the board for a while).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from slo_planner.energy_split import Share, WindowPrices, Work

# How far behind the latest window may be when a request ends, and how much of the time
# the engine held a request may go uncredited (a request admitted just after the board
# was read: up to a window), before its energy is not vouched for.
STALE_AFTER_S = 1.0
COVERAGE_SLACK_S = 0.15


@dataclass(frozen=True)
class Credit:
    """One request's share of one window, and how far the governor has seen it."""

    request_id: str
    share: Share
    held_s: float
    seen_tokens: float  # estimated where the board's count lags (governor/energy_meter.py)
    prefilled: bool


@dataclass(frozen=True)
class Account:
    """What the ledger holds for one request: its credited windows, summed."""

    active_j: float = 0.0
    idle_j: float = 0.0
    held_s: float = 0.0
    seen_tokens: float = 0.0
    prefilled: bool = False


@dataclass(frozen=True)
class Settlement:
    """What the worker knows when its request ends (wall-clock seconds)."""

    request_id: str
    generated_tokens: int
    prompt_tokens: int
    admitted_s: float
    ended_s: float


@dataclass(frozen=True)
class RequestEnergy:
    """A request's attributed energy: above idle (marginal) and its idle share."""

    active_j: float
    idle_j: float

    @property
    def total_j(self) -> float:
        return self.active_j + self.idle_j


@dataclass(frozen=True)
class Tail:
    """A request's last moments, after the latest window: its work and what it cost."""

    units: float
    held_s: float
    share: Share


def settle_account(
    account: Account | None, prices: WindowPrices | None, settlement: Settlement
) -> tuple[RequestEnergy | None, Tail | None]:
    """The request's energy (None when the ledger cannot vouch for it), and its tail's
    work, for the departed work (None when there is no priced window to bill it by)."""
    if prices is None:
        return None, None
    account = account or Account()
    work = Work(
        tokens=max(0, settlement.generated_tokens - account.seen_tokens),
        prefill_tokens=0 if account.prefilled else settlement.prompt_tokens,
        held_s=max(0.0, settlement.ended_s - max(prices.end_s, settlement.admitted_s)),
    )
    share = prices.share(work)
    tail = Tail(work.units(prices.prefill_weight), work.held_s, share)
    held_in_engine_s = max(0.0, settlement.ended_s - settlement.admitted_s)
    stale = settlement.ended_s - prices.end_s > STALE_AFTER_S
    gap = account.held_s + work.held_s < held_in_engine_s - COVERAGE_SLACK_S
    if stale or gap or not math.isfinite(share.total_j):
        return None, tail
    return RequestEnergy(account.active_j + share.active_j, account.idle_j + share.idle_j), tail


class EnergyLedger(Protocol):
    async def departed_work(self) -> tuple[float, float]:
        """Work units and held seconds settled by workers since the ledger began (their
        tails): the governor counts what grew since its last window into the next."""
        ...

    async def credit(self, prices: WindowPrices, credits: Sequence[Credit]) -> None:
        """Add each request's share of a window (a request no longer on the board is
        skipped: its worker settled it already), and publish the window's prices."""
        ...

    async def settle(self, settlement: Settlement) -> RequestEnergy | None:
        """Close a request's account, after it left the board: its energy, or None."""
        ...

    async def aclose(self) -> None: ...


class MemoryEnergyLedger:
    """One process's ledger, beside `MemoryStateStore`. `on_board` says whether a
    request is still on the board (credited only then)."""

    def __init__(self) -> None:
        self._accounts: dict[str, Account] = {}
        self._prices: WindowPrices | None = None
        self._departed_units = 0.0
        self._departed_held_s = 0.0
        self._settled: set[str] = set()

    async def departed_work(self) -> tuple[float, float]:
        return self._departed_units, self._departed_held_s

    async def credit(self, prices: WindowPrices, credits: Sequence[Credit]) -> None:
        for credit in credits:
            if credit.request_id in self._settled:
                continue
            account = self._accounts.get(credit.request_id, Account())
            self._accounts[credit.request_id] = Account(
                account.active_j + credit.share.active_j,
                account.idle_j + credit.share.idle_j,
                account.held_s + credit.held_s,
                credit.seen_tokens,
                credit.prefilled,
            )
        self._prices = prices
        self._settled.clear()  # a settled request is off the board for every later window

    async def settle(self, settlement: Settlement) -> RequestEnergy | None:
        account = self._accounts.pop(settlement.request_id, None)
        self._settled.add(settlement.request_id)
        energy, tail = settle_account(account, self._prices, settlement)
        if tail is not None:
            self._departed_units += tail.units
            self._departed_held_s += tail.held_s
        return energy

    async def aclose(self) -> None:
        return None

    def __len__(self) -> int:
        """Open accounts (a leak check for tests)."""
        return len(self._accounts)
