"""The governor's pass without I/O: when to decide, and whether a chosen clock is applied.

The live clock loop (governor/loop.py) drives it on the wall clock, the replay on the
virtual clock. Two guards keep the clock from flapping and the plan honest:

- Minimum dwell: a lower clock is applied only once `min_dwell_s` has passed since the
  last change. A higher clock is always applied at once: raising protects the SLOs.
- Switch latency: a new clock takes `switch_latency_s` to come into force, so the policy
  plans from `planning_time_s(now_s)`. This is conservative either way: it assumes no
  token is produced during the switch, while the deadlines keep approaching.

A pass is due a window after the previous one, or at once when poked (a request joined
or left the board).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class ClockCounts:
    """What the passes decided so far (the governor's metrics read them)."""

    target_clock_mhz: int | None = None
    applied_clock_mhz: int | None = None
    decisions: int = 0
    clock_changes: int = 0
    held_changes: int = 0  # lower clocks not applied (yet) because of the minimum dwell


class ClockSteps:
    def __init__(self, window_s: float, min_dwell_s: float = 0.0, switch_latency_s: float = 0.0):
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        if min_dwell_s < 0 or switch_latency_s < 0:
            raise ValueError("min_dwell_s and switch_latency_s must not be negative")
        self.window_s = window_s
        self.min_dwell_s = min_dwell_s
        self.switch_latency_s = switch_latency_s
        self.counts = ClockCounts()
        self.next_pass_s = -math.inf  # the first pass is due at once
        self._poked = False
        self._last_change_s: float | None = None

    def poke(self) -> None:
        self._poked = True

    def due(self, now_s: float) -> bool:
        return self._poked or now_s >= self.next_pass_s

    def planning_time_s(self, now_s: float) -> float:
        """When a clock chosen now comes into force: the policy plans from there."""
        return now_s + self.switch_latency_s

    def decide(self, target_mhz: int, now_s: float) -> int | None:
        """A pass chose `target_mhz` at `now_s`: the clock to apply now, or None (it is in
        force already, or a lowering the dwell holds back). The next pass is due a window
        from now. Call `applied` once the clock is in place."""
        self._poked = False
        self.next_pass_s = now_s + self.window_s
        counts = self.counts
        counts.target_clock_mhz = target_mhz
        counts.decisions += 1
        applied_mhz = counts.applied_clock_mhz
        if target_mhz == applied_mhz:
            return None
        lowering = applied_mhz is not None and target_mhz < applied_mhz
        if (
            lowering
            and self._last_change_s is not None
            and now_s - self._last_change_s < self.min_dwell_s
        ):
            counts.held_changes += 1
            return None
        return target_mhz

    def failed(self, now_s: float) -> None:
        """A pass that could not decide (the GPUs unreachable) is tried again a window on."""
        self.next_pass_s = now_s + self.window_s

    def applied(self, clock_mhz: int, now_s: float) -> None:
        self.counts.applied_clock_mhz = clock_mhz
        self.counts.clock_changes += 1
        self._last_change_s = now_s

    def reset(self) -> None:
        """The GPUs are back at their default clocks: nothing is applied any more."""
        self.counts.applied_clock_mhz = None
        self._last_change_s = None
