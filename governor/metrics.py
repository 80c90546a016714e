"""The governor's own Prometheus gauges: clock, power, energy and its decisions, read
from its status at every scrape."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from governor.loop import GovernorStatus


def governor_registry(status: GovernorStatus) -> CollectorRegistry:
    """The governor's gauges alone: what `throttllem govern` serves on its metrics port."""
    registry = CollectorRegistry()
    registry.register(GovernorCollector(status))
    return registry


class GovernorCollector(Collector):
    def __init__(self, status: GovernorStatus) -> None:
        self._status = status

    def collect(self) -> Iterator[GaugeMetricFamily]:
        status = self._status
        gauges = [
            ("throttllem_gpu_clock_mhz", "Graphics clock in force, MHz.", status.current_clock_mhz),
            (
                "throttllem_gpu_target_clock_mhz",
                "Clock the governor asked for, MHz.",
                status.target_clock_mhz,
            ),
            ("throttllem_gpu_power_watts", "Power of the instance's GPUs, W.", status.power_w),
            (
                "throttllem_gpu_energy_joules",
                "Energy of the instance's GPUs since their counters' origin, J.",
                None if status.energy_mj is None else status.energy_mj / 1000,
            ),
            ("throttllem_governor_decisions", "Clock decisions taken so far.", status.decisions),
            (
                "throttllem_governor_clock_changes",
                "Clock changes applied so far.",
                status.clock_changes,
            ),
            (
                "throttllem_governor_held_changes",
                "Lower clocks held back by the minimum dwell so far.",
                status.held_changes,
            ),
            (
                "throttllem_governor_decision_ms",
                "Time the last decision took, ms.",
                status.last_decision_ms,
            ),
        ]
        meter = status.meter
        if meter is not None:
            gauges += [
                ("throttllem_energy_attributed_joules",
                 "GPU energy billed to requests so far, J.", meter.totals.attributed_j),
                ("throttllem_energy_unattributed_joules",
                 "GPU energy of windows in which the engine held no request, J.",
                 meter.totals.unattributed_j),
                ("throttllem_energy_meter_gaps",
                 "Windows the energy meter could not bill (counter or board unreadable).",
                 meter.totals.gaps),
                ("throttllem_energy_prefill_weight",
                 "Work units of a prefilled prompt token against a generated one.",
                 meter.prefill_weight),
                ("throttllem_energy_idle_power_watts",
                 "Idle power of the instance's GPUs the energy is split by, W.",
                 meter.idle_power_w),
            ]  # fmt: skip
        for name, documentation, value in gauges:
            if value is not None:
                yield GaugeMetricFamily(name, documentation, value=float(value))
