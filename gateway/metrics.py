"""Prometheus metrics of one gateway, in a registry of its own (no module globals)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.predictions import Predictions
from governor.loop import GovernorStatus

_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5, 10, 30, 60, 120)
_TBT_BUCKETS_S = (0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.5, 1)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "throttllem_requests",
            "Completion requests answered, by endpoint and HTTP status.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "throttllem_tokens",
            "Tokens processed, by kind (prompt or completion).",
            ["kind"],
            registry=self.registry,
        )
        self.ttft_s = Histogram(
            "throttllem_time_to_first_token_seconds",
            "Time from arrival to the first token.",
            buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.tbt_s = Histogram(
            "throttllem_time_between_tokens_seconds",
            "Time between consecutive tokens of one answer.",
            buckets=_TBT_BUCKETS_S,
            registry=self.registry,
        )
        self.e2e_s = Histogram(
            "throttllem_end_to_end_seconds",
            "Time from arrival to the last token.",
            buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "throttllem_requests_in_flight",
            "Requests being served right now.",
            registry=self.registry,
        )
        self.queue_length = Gauge(
            "throttllem_queue_length",
            "Requests waiting for admission in this worker.",
            registry=self.registry,
        )
        self.queue_time_s = Histogram(
            "throttllem_queue_seconds",
            "Time from arrival to admission.",
            buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.admissions = Counter(
            "throttllem_admissions",
            "Admission outcomes: admitted, lost (served though it misses a promise even at "
            "the highest clock), queue_full (refused with 429).",
            ["outcome"],
            registry=self.registry,
        )
        self.slo_misses = Counter(
            "throttllem_slo_misses",
            "Finished requests that missed a promise, by promise (ttft, tpot, e2e).",
            ["slo"],
            registry=self.registry,
        )
        self.slo_requests = Counter(
            "throttllem_slo_requests",
            "Finished requests, by whether they kept every promise (met, missed).",
            ["outcome"],
            registry=self.registry,
        )
        self.cancelled = Counter(
            "throttllem_requests_cancelled",
            "Requests whose client left before the answer ended (upstream cancelled).",
            registry=self.registry,
        )

    def watch_predictions(self, predictions: Predictions) -> None:
        ready = Gauge(
            "throttllem_predictor_ready",
            "1 when the model loaded; 0 when it is missing or corrupt (served without it).",
            ["model"],
            registry=self.registry,
        )
        for name in ("length", "performance"):
            ready.labels(name).set(1 if predictions.ready(name) else 0)

    def watch_state_store(self, degraded: Callable[[], bool]) -> None:
        gauge = Gauge(
            "throttllem_state_store_degraded",
            "1 while the shared scoreboard (Redis) is unreachable and this worker serves on "
            "local state.",
            registry=self.registry,
        )
        gauge.set_function(lambda: float(degraded()))

    def watch_governor(self, status: GovernorStatus) -> None:
        """Export the governor's clock, power and energy, read fresh at every scrape."""
        self.registry.register(_GovernorCollector(status))


def governor_registry(status: GovernorStatus) -> CollectorRegistry:
    """The governor's gauges alone: what `throttllem govern` serves on its metrics port."""
    registry = CollectorRegistry()
    registry.register(_GovernorCollector(status))
    return registry


class _GovernorCollector(Collector):
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
        for name, documentation, value in gauges:
            if value is not None:
                yield GaugeMetricFamily(name, documentation, value=float(value))
