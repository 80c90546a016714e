"""The twin's Prometheus metrics, under the names and labels Triton exposes for
TensorRT-LLM and for its GPUs, so tools read the twin exactly as they read the real stack.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from simulator.engine import Engine
from simulator.gpu import SimulatedGpu
from simulator.realtime import RealtimeEngine


@dataclass(frozen=True)
class _Snapshot:
    active: int
    max_batch: int
    scheduled: int
    context: int
    waiting: int
    kv_max: int
    kv_used: int
    tokens_per_block: int
    prefill_tokens: int
    generation_requests: int
    paused: int
    iterations: int
    timestamp_us: int
    power_w: list[float]
    energy_j: list[float]
    power_limit_w: list[float]
    mean_drift_s: float


def twin_registry(
    runner: RealtimeEngine, model: str = "ensemble", version: str = "1"
) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(_TwinCollector(runner, model, version))
    return registry


class _TwinCollector(Collector):
    def __init__(self, runner: RealtimeEngine, model: str, version: str) -> None:
        self._runner = runner
        self._labels = {"model": model, "version": version}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        pacing = self._runner.pacing
        s = self._runner.locked(lambda engine, now_s: _snapshot(engine, pacing.mean_drift_s))
        yield self._family(
            "nv_trt_llm_request_metrics", "TRT-LLM request metrics", "request_type",
            {"active": s.active, "max": s.max_batch, "scheduled": s.scheduled,
             "context": s.context, "waiting": s.waiting},
        )  # fmt: skip
        yield self._family(
            "nv_trt_llm_kv_cache_block_metrics", "TRT-LLM KV cache block metrics",
            "kv_cache_block_type",
            {"max": s.kv_max, "free": s.kv_max - s.kv_used, "used": s.kv_used,
             "tokens_per": s.tokens_per_block},
        )  # fmt: skip
        yield self._family(
            "nv_trt_llm_inflight_batcher_metrics", "TRT-LLM inflight batcher metrics",
            "inflight_batcher_specific_metric",
            {"total_context_tokens": s.prefill_tokens,
             "generation_requests": s.generation_requests, "micro_batch_id": 0,
             "paused_requests": s.paused},
        )  # fmt: skip
        yield self._family(
            "nv_trt_llm_general_metrics", "General TRT-LLM metrics", "general_type",
            {"iteration_counter": s.iterations, "timestamp": s.timestamp_us},
        )  # fmt: skip
        power = GaugeMetricFamily(
            "nv_gpu_power_usage", "GPU power usage in watts", labels=["gpu_uuid"]
        )
        limit = GaugeMetricFamily(
            "nv_gpu_power_limit", "GPU power management limit in watts", labels=["gpu_uuid"]
        )
        energy = GaugeMetricFamily(
            "nv_energy_consumption", "GPU energy consumption in joules since the twin started",
            labels=["gpu_uuid"],
        )  # fmt: skip
        per_gpu = zip(s.power_w, s.power_limit_w, s.energy_j, strict=True)
        for index, (power_w, limit_w, energy_j) in enumerate(per_gpu):
            uuid = f"GPU-twin-{index}"
            power.add_metric([uuid], power_w)
            limit.add_metric([uuid], limit_w)
            energy.add_metric([uuid], energy_j)
        yield power
        yield limit
        yield energy
        yield GaugeMetricFamily(
            "throttllem_twin_pacing_drift_seconds",
            "Mean lateness of an iteration's tokens against the twin's wall-clock schedule.",
            value=s.mean_drift_s,
        )

    def _family(
        self, name: str, documentation: str, label: str, values: dict[str, float]
    ) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, documentation, labels=[label, "model", "version"])
        for key, value in values.items():
            family.add_metric([key, self._labels["model"], self._labels["version"]], float(value))
        return family


def _snapshot(engine: Engine, mean_drift_s: float) -> _Snapshot:
    last = engine.last_step
    return _Snapshot(
        active=engine.running + engine.waiting,
        max_batch=engine.profile.max_batch_size,
        scheduled=last.batch_size if last else 0,
        context=last.prefill_requests if last else 0,
        waiting=engine.waiting,
        kv_max=engine.kv_capacity_blocks,
        kv_used=engine.kv_used_blocks,
        tokens_per_block=engine.profile.tokens_per_block,
        prefill_tokens=last.prefill_tokens if last else 0,
        generation_requests=(last.batch_size - last.prefill_requests) if last else 0,
        paused=len(last.paused) if last else 0,
        iterations=engine.iterations,
        timestamp_us=int(time.time() * 1e6),
        power_w=[gpu.power_w() for gpu in engine.gpus],
        energy_j=[gpu.energy_mj() / 1000 for gpu in engine.gpus],
        power_limit_w=[_limit_w(gpu) for gpu in engine.gpus],
        mean_drift_s=mean_drift_s,
    )


def _limit_w(gpu: SimulatedGpu) -> float:
    """The limit in force, as NVML reports it: the one set, else the board's default (TDP)."""
    return gpu.spec.tdp_w if gpu.power_limit_w is None else gpu.power_limit_w
