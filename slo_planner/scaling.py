"""Instance scaling, the paper's autoscaler: which engine size the request rate needs.

Each engine size (TP1, TP2, TP4, ...) has a profiled capacity: the requests per second
it sustains at the highest clock. Every interval the scaler measures the arrival rate
and picks the smallest size whose capacity, less a headroom, covers it. Growing happens
at once (a request rate past capacity breaks promises); shrinking only after the rate
has fitted the smaller size for a whole grace period, so a lull between bursts does not
tear down the engine the next burst needs.

The gateway and the scaler share the arrivals and the route through the scoreboard's
`ScalingChannel` (slo_scoreboard/scaling_channel.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_HEADROOM = 0.85  # run an engine at up to 85 % of its profiled capacity


@dataclass(frozen=True)
class EngineSize:
    label: str  # "tp2"
    triton_model: str  # the model that serves it: "ensemble-tp2"
    capacity_rps: float

    def __post_init__(self) -> None:
        if self.capacity_rps <= 0:
            raise ValueError(f"engine size {self.label!r}: capacity_rps must be positive")


def parse_engine_sizes(text: str) -> list[EngineSize]:
    """`[{"label": "tp1", "triton_model": "ensemble-tp1", "capacity_rps": 1.9}, ...]`."""
    try:
        rows = json.loads(text)
        sizes = [EngineSize(str(r["label"]), str(r["triton_model"]), float(r["capacity_rps"]))
                 for r in rows]  # fmt: skip
    except (json.JSONDecodeError, TypeError, KeyError) as error:
        raise ValueError(
            "engine sizes must be a JSON list of objects with label, triton_model and "
            f"capacity_rps: {error}"
        ) from error
    if len({size.label for size in sizes}) != len(sizes):
        raise ValueError("engine sizes must have distinct labels")
    return sorted(sizes, key=lambda size: size.capacity_rps)


class ScalingPolicy:
    """The engine size for a request rate, with a grace period before shrinking."""

    def __init__(
        self, sizes: Sequence[EngineSize], headroom: float = DEFAULT_HEADROOM, grace_s: float = 60.0
    ) -> None:
        if not sizes:
            raise ValueError("instance scaling needs at least one engine size")
        if not 0 < headroom <= 1:
            raise ValueError(f"headroom must be in (0, 1], got {headroom}")
        self.sizes = sorted(sizes, key=lambda size: size.capacity_rps)
        self.headroom = headroom
        self.grace_s = grace_s
        self._fits_smaller_since_s: float | None = None

    def needed(self, rate_rps: float) -> EngineSize:
        """The smallest size that carries `rate_rps` within its headroom (else the largest)."""
        for size in self.sizes:
            if rate_rps <= size.capacity_rps * self.headroom:
                return size
        return self.sizes[-1]

    def target(self, rate_rps: float, current: EngineSize, now_s: float) -> EngineSize:
        needed = self.needed(rate_rps)
        if needed.capacity_rps > current.capacity_rps:
            self._fits_smaller_since_s = None
            return needed
        if needed.capacity_rps == current.capacity_rps:
            self._fits_smaller_since_s = None
            return current
        if self._fits_smaller_since_s is None:
            self._fits_smaller_since_s = now_s
        if now_s - self._fits_smaller_since_s >= self.grace_s:
            self._fits_smaller_since_s = None
            return needed
        return current


class ScalingSteps:
    """The instance scaler's rounds without I/O: measure the arrival rate, pick a size,
    and keep the books of the move — which size serves, and which sizes left behind are
    still loaded, draining (`moved` says when each is to be unloaded; a size still
    draining is taken back without a load). The governor's scaler (governor/scaler.py) drives it on the wall
    clock against Triton; the replay on the virtual clock against the twin's engines."""

    def __init__(self, policy: ScalingPolicy, current: EngineSize, drain_s: float) -> None:
        self.policy = policy
        self.current = current
        self.drain_s = drain_s
        self.rate_rps: float | None = None
        self.draining: set[str] = set()  # Triton models left behind, still loaded
        self._last_count: tuple[int, float] | None = None

    def count(self, arrivals: int, now_s: float) -> None:
        """Where the rate is measured from: the arrivals counter at `now_s`."""
        self._last_count = (arrivals, now_s)

    def round(self, arrivals: int, now_s: float) -> EngineSize | None:
        """One round: the rate since the last count, and the size to move to (None: stay).
        The first round only counts."""
        last, self._last_count = self._last_count, (arrivals, now_s)
        if last is None or now_s <= last[1]:
            return None
        self.rate_rps = (arrivals - last[0]) / (now_s - last[1])
        target = self.policy.target(self.rate_rps, self.current, now_s)
        return None if target == self.current else target

    def still_loaded(self, size: EngineSize) -> bool:
        """`size` was left behind and is draining: moving back needs no load."""
        return size.triton_model in self.draining

    def moved(self, target: EngineSize, now_s: float) -> tuple[EngineSize, float]:
        """Traffic now goes to `target`: the size left behind, and when to unload it."""
        previous, self.current = self.current, target
        self.draining.discard(target.triton_model)
        self.draining.add(previous.triton_model)
        return previous, now_s + self.drain_s

    def unloaded(self, size: EngineSize) -> None:
        self.draining.discard(size.triton_model)
