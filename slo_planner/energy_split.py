"""Who used the energy of a window: the attribution rule (docs/energy.md).

A window's energy is split in two:

- the energy above idle, in proportion to each request's work in the window: its
  generated tokens, plus its prefilled prompt tokens weighted by their relative cost
  (`prefill_weight`, a prefill token's engine time over a decode token's);
- the idle share (idle power x the window's length), in proportion to the time the
  engine held each request (queued in the engine or running).

So a request's full cost is both, and its marginal cost the first alone. A window's
prices (joules per work unit, joules per held second) apply to any work in it, which is
how a request that ends between two windows prices its last moments (`tail_share`).

Pure arithmetic, shared by the live governor, the gateway workers, the replay and the
twin's exact per-iteration attribution, so all of them follow the one rule.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Work:
    """What one request did in one window."""

    tokens: float  # generated in the window (the meter's may be an estimate's part)
    prefill_tokens: int  # prompt tokens prefilled in the window
    held_s: float  # how long the engine held it during the window

    def units(self, prefill_weight: float) -> float:
        return self.tokens + prefill_weight * self.prefill_tokens


@dataclass(frozen=True)
class Share:
    """Joules of one request: above idle (its marginal cost) and its share of idle."""

    active_j: float = 0.0
    idle_j: float = 0.0

    @property
    def total_j(self) -> float:
        return self.active_j + self.idle_j

    def __add__(self, other: Share) -> Share:
        return Share(self.active_j + other.active_j, self.idle_j + other.idle_j)


@dataclass(frozen=True)
class WindowPrices:
    """One window's prices. `carried_active_j`: energy above idle spent on work that no
    token has shown yet (a prefill spanning windows), billed to the next window's work."""

    end_s: float
    active_j_per_unit: float
    idle_j_per_held_s: float
    prefill_weight: float
    carried_active_j: float = 0.0
    unattributed_j: float = 0.0  # idle energy while the engine held nobody

    def share(self, work: Work) -> Share:
        return Share(
            self.active_j_per_unit * work.units(self.prefill_weight),
            self.idle_j_per_held_s * work.held_s,
        )


def price_window(
    energy_j: float,
    duration_s: float,
    idle_power_w: float,
    total_units: float,
    total_held_s: float,
    *,
    end_s: float,
    prefill_weight: float,
    carried_active_j: float = 0.0,
) -> WindowPrices:
    """The prices that split `energy_j` (plus the active energy carried from earlier
    windows) over the work of every request in the window, `total_units` and
    `total_held_s` in all. Energy below the idle estimate is all idle."""
    idle_j = min(max(energy_j, 0.0), max(idle_power_w, 0.0) * max(duration_s, 0.0))
    active_j = max(energy_j, 0.0) - idle_j + carried_active_j
    carried = 0.0
    if total_units > 0:
        per_unit = active_j / total_units
    else:
        per_unit, carried = 0.0, active_j
    unattributed = 0.0
    if total_held_s > 0:
        per_held = idle_j / total_held_s
    else:
        per_held, unattributed = 0.0, idle_j
        if total_units <= 0:  # an empty engine's energy belongs to nobody
            unattributed, carried = unattributed + carried, 0.0
    return WindowPrices(end_s, per_unit, per_held, prefill_weight, carried, unattributed)
