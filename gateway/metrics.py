"""Prometheus metrics of one gateway, in a registry of its own (no module globals).

One process: the metrics live in `registry`, which `/metrics` serves. Several uvicorn
workers (`throttllem serve --workers N`): the parent sets PROMETHEUS_MULTIPROC_DIR before
it spawns them, so prometheus_client (which reads the variable when it is imported) has
each worker write its values to files there, and `registry` reads every worker's files:
whichever worker answers a scrape, it answers with the gateway's totals. Counters and
histograms add up; each gauge says how its workers' values combine (`multiprocess_mode`,
ignored in one process).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from contextlib import suppress
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from predictor.loading import Predictions

_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5, 10, 30, 60, 120)
_ENERGY_BUCKETS_J = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
_ENERGY_PER_TOKEN_BUCKETS_J = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20)
_TBT_BUCKETS_S = (0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.5, 1)


MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_directory() -> Path | None:
    """Where this gateway's workers write their values, when there are several."""
    directory = os.environ.get(MULTIPROC_DIR_VARIABLE)
    return Path(directory) if directory else None


class GatewayMetrics:
    def __init__(self) -> None:
        shared = multiprocess_directory()
        if shared is not None:  # live gauges left by an earlier process with this pid
            multiprocess.mark_process_dead(os.getpid(), str(shared))
        self._values = CollectorRegistry()  # the metrics this process updates
        self.registry = self._values if shared is None else _all_workers_registry(shared)
        self.requests = Counter(
            "throttllem_requests",
            "Completion requests answered, by endpoint and HTTP status.",
            ["endpoint", "status"],
            registry=self._values,
        )
        self.tokens = Counter(
            "throttllem_tokens",
            "Tokens processed, by kind (prompt or completion).",
            ["kind"],
            registry=self._values,
        )
        self.ttft_s = Histogram(
            "throttllem_time_to_first_token_seconds",
            "Time from arrival to the first token.",
            buckets=_LATENCY_BUCKETS_S,
            registry=self._values,
        )
        self.tbt_s = Histogram(
            "throttllem_time_between_tokens_seconds",
            "Time between consecutive tokens of one answer.",
            buckets=_TBT_BUCKETS_S,
            registry=self._values,
        )
        self.e2e_s = Histogram(
            "throttllem_end_to_end_seconds",
            "Time from arrival to the last token.",
            buckets=_LATENCY_BUCKETS_S,
            registry=self._values,
        )
        self.in_flight = Gauge(
            "throttllem_requests_in_flight",
            "Requests being served right now (summed over the gateway's workers).",
            multiprocess_mode="livesum",
            registry=self._values,
        )
        self.queue_length = Gauge(
            "throttllem_queue_length",
            "Requests waiting for admission (summed over the gateway's workers).",
            multiprocess_mode="livesum",
            registry=self._values,
        )
        self.queue_time_s = Histogram(
            "throttllem_queue_seconds",
            "Time from arrival to admission.",
            buckets=_LATENCY_BUCKETS_S,
            registry=self._values,
        )
        self.admissions = Counter(
            "throttllem_admissions",
            "Admission outcomes: admitted, lost (served though it misses a promise even at "
            "the highest clock), queue_full (refused with 429).",
            ["outcome"],
            registry=self._values,
        )
        self.slo_misses = Counter(
            "throttllem_slo_misses",
            "Finished requests that missed a promise, by promise (ttft, tpot, e2e).",
            ["slo"],
            registry=self._values,
        )
        self.slo_requests = Counter(
            "throttllem_slo_requests",
            "Finished requests, by whether they kept every promise (met, missed).",
            ["outcome"],
            registry=self._values,
        )
        self.energy_j = Histogram(
            "throttllem_request_energy_joules",
            "GPU energy attributed to each finished request, idle share included "
            "(docs/energy.md), by served model.",
            ["model"],
            buckets=_ENERGY_BUCKETS_J,
            registry=self._values,
        )
        self.energy_per_token_j = Histogram(
            "throttllem_energy_per_output_token_joules",
            "GPU energy attributed to each finished request over its output tokens, by "
            "served model.",
            ["model"],
            buckets=_ENERGY_PER_TOKEN_BUCKETS_J,
            registry=self._values,
        )
        self.energy_prediction_error = Histogram(
            "throttllem_energy_prediction_error_ratio",
            "Each finished request's predicted energy over its attributed energy, minus 1, "
            "by served model.",
            ["model"],
            buckets=(-0.5, -0.25, -0.1, -0.05, 0, 0.05, 0.1, 0.25, 0.5, 1, 2),
            registry=self._values,
        )
        self.cancelled = Counter(
            "throttllem_requests_cancelled",
            "Requests whose client left before the answer ended (upstream cancelled).",
            registry=self._values,
        )

    def watch_predictions(self, predictions: Predictions) -> None:
        ready = Gauge(
            "throttllem_predictor_ready",
            "1 when the model loaded; 0 when it is missing or corrupt (served without it); "
            "with several workers, 0 if any of them lacks it.",
            ["model"],
            multiprocess_mode="livemin",
            registry=self._values,
        )
        for name in ("length", "performance", "power"):
            ready.labels(name).set(1 if predictions.ready(name) else 0)

    def watch_state_store(self) -> Callable[[bool], None]:
        """The gauge's setter, for the store to call when it degrades or recovers: set on
        change rather than read at scrape, so that every worker's value is in its file."""
        gauge = Gauge(
            "throttllem_state_store_degraded",
            "1 while the shared scoreboard (Redis) is unreachable and a worker serves on "
            "local state; with several workers, 1 if any of them does.",
            multiprocess_mode="livemax",
            registry=self._values,
        )
        gauge.set(0)
        return lambda degraded: gauge.set(1 if degraded else 0)

    def watch(self, collector: Collector) -> None:
        """Export another part's values, read fresh at every scrape (the embedded
        governor's clock, power and energy); with several workers, those of the worker
        that answers the scrape."""
        self.registry.register(collector)


def _all_workers_registry(shared: Path) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(_AllWorkersCollector(shared))
    return registry


class _AllWorkersCollector(Collector):
    """Every worker's values from their files, once the gone workers' live gauges are
    dropped: uvicorn offers no hook on a worker's exit, so each scrape looks for them."""

    def __init__(self, shared: Path) -> None:
        self._shared = shared
        self._files = multiprocess.MultiProcessCollector(None, str(shared))

    def collect(self) -> Iterable[Metric]:
        _forget_dead_workers(self._shared)
        return self._files.collect()


def _forget_dead_workers(shared: Path) -> None:
    """Remove the live gauges (in flight, queue, readiness, degraded) of workers that are
    no longer running; their counters and histograms stay in the totals."""
    for pid in _pids_with_live_gauges(shared):
        if not _is_running(pid):
            with suppress(FileNotFoundError):  # another worker's scrape removed it first
                multiprocess.mark_process_dead(pid, str(shared))


def _pids_with_live_gauges(shared: Path) -> set[int]:
    """Live gauges are in files named gauge_live<mode>_<pid>.db."""
    pids = set()
    for path in shared.glob("gauge_live*_*.db"):
        with suppress(ValueError):
            pids.add(int(path.stem.rsplit("_", 1)[1]))
    return pids


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it runs, as another user
    return True
