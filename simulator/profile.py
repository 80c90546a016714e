"""Twin profiles: a GPU, a model and an engine build, read from the JSON files in
`simulator/profiles/`. Every number there names its source or says it is an assumption.

A profile is named `<gpu>/<model>/tp<N>`, e.g. `a100-40gb/llama-2-13b/tp2`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources
from typing import Any

DEFAULT_PROFILE = "a100-40gb/llama-2-13b/tp1"
GIB = 1024**3


class UnknownProfileError(ValueError):
    """No profile of that name; the message lists the ones that exist."""


@dataclass(frozen=True)
class GpuProfile:
    name: str
    memory_bytes: float
    memory_bandwidth_bytes_s: float
    dense_bf16_flops: float
    nvlink_bytes_s: float
    tdp_w: float
    min_clock_mhz: int
    max_clock_mhz: int
    clock_step_mhz: int
    clock_switch_latency_s: float
    idle_power_w: float
    dynamic_power_w: float
    voltage_at_min_clock: float
    memory_efficiency: float
    tensor_efficiency: float
    tensor_half_tokens: float
    sm_overhead_per_layer_s: float
    allreduce_latency_s: float
    power_limit_min_w: float  # the range nvmlDeviceSetPowerManagementLimit accepts
    power_limit_max_w: float

    def supported_clocks_mhz(self) -> list[int]:
        """Supported graphics clocks, highest first, as NVML lists them."""
        return list(range(self.max_clock_mhz, self.min_clock_mhz - 1, -self.clock_step_mhz))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GpuProfile:
        clocks, power, kernels = data["clocks_mhz"], data["power"], data["kernels"]
        # A board without a published range takes no limit but its TDP.
        limits_w = data.get("power_limit_w", {"min": data["tdp_w"], "max": data["tdp_w"]})
        return cls(
            name=data["name"],
            memory_bytes=data["memory_gib"] * GIB,
            memory_bandwidth_bytes_s=data["memory_bandwidth_gbs"] * 1e9,
            dense_bf16_flops=data["dense_bf16_tflops"] * 1e12,
            nvlink_bytes_s=data["nvlink_gbs"] * 1e9,
            tdp_w=data["tdp_w"],
            min_clock_mhz=clocks["min"],
            max_clock_mhz=clocks["max"],
            clock_step_mhz=clocks["step"],
            clock_switch_latency_s=data["clock_switch_latency_ms"] / 1000,
            idle_power_w=power["idle_w"],
            dynamic_power_w=power["dynamic_w"],
            voltage_at_min_clock=power["voltage_at_min_clock"],
            memory_efficiency=kernels["memory_efficiency"],
            tensor_efficiency=kernels["tensor_efficiency"],
            tensor_half_tokens=kernels["tensor_half_tokens"],
            sm_overhead_per_layer_s=kernels["sm_overhead_per_layer_us"] / 1e6,
            allreduce_latency_s=kernels["allreduce_latency_us"] / 1e6,
            power_limit_min_w=limits_w["min"],
            power_limit_max_w=limits_w["max"],
        )


@dataclass(frozen=True)
class ModelProfile:
    name: str
    parameters: float
    layers: int
    hidden_size: int
    kv_heads: int
    head_dim: int
    context_window_tokens: int
    bytes_per_parameter: int
    recorded_responses: str
    output_length_quantiles: tuple[tuple[float, int], ...]

    @property
    def weight_bytes(self) -> float:
        return self.parameters * self.bytes_per_parameter

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V, every layer, every KV head, fp16."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.bytes_per_parameter

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelProfile:
        quantiles = sorted((float(q), int(v)) for q, v in data["output_length_quantiles"].items())
        return cls(
            name=data["name"],
            parameters=float(data["parameters"]),
            layers=data["layers"],
            hidden_size=data["hidden_size"],
            kv_heads=data["kv_heads"],
            head_dim=data["head_dim"],
            context_window_tokens=data["context_window_tokens"],
            bytes_per_parameter=data["bytes_per_parameter"],
            recorded_responses=data["recorded_responses"],
            output_length_quantiles=tuple(quantiles),
        )


@dataclass(frozen=True)
class EngineProfile:
    name: str
    gpu: GpuProfile
    model: ModelProfile
    tensor_parallel: int
    max_batch_size: int
    tokens_per_block: int
    kv_cache_free_gpu_mem_fraction: float
    runtime_reserved_bytes: float
    scheduler_policy: str
    iteration_noise: float

    @property
    def kv_capacity_blocks(self) -> int:
        """KV blocks that fit: what is left of each GPU after its weight shard and runtime
        buffers, times the fraction TensorRT-LLM gives the cache, over one block's bytes."""
        tp = self.tensor_parallel
        free_per_gpu = (
            self.gpu.memory_bytes - self.model.weight_bytes / tp - self.runtime_reserved_bytes
        )
        cache_per_gpu = max(0.0, free_per_gpu) * self.kv_cache_free_gpu_mem_fraction
        block_bytes_per_gpu = self.tokens_per_block * self.model.kv_bytes_per_token / tp
        return math.floor(cache_per_gpu / block_bytes_per_gpu)

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.tokens_per_block)


def available_profiles() -> list[str]:
    root = resources.files("simulator") / "profiles"
    names = []
    for gpu_dir in root.iterdir():
        if gpu_dir.name in ("gpus", "models") or not gpu_dir.is_dir():
            continue
        for model_dir in gpu_dir.iterdir():
            if model_dir.is_dir():
                names += [
                    f"{gpu_dir.name}/{model_dir.name}/{f.name[:-5]}"
                    for f in model_dir.iterdir()
                    if f.name.endswith(".json")
                ]
    return sorted(names)


def load_profile(name: str = DEFAULT_PROFILE) -> EngineProfile:
    known = available_profiles()
    if name not in known:
        raise UnknownProfileError(
            f"unknown twin profile {name!r}; known profiles: {', '.join(known)}"
        )
    engine = _read(f"{name}.json")
    return EngineProfile(
        name=name,
        gpu=GpuProfile.from_json(_read(f"gpus/{engine['gpu']}.json")),
        model=ModelProfile.from_json(_read(f"models/{engine['model']}.json")),
        tensor_parallel=engine["tensor_parallel"],
        max_batch_size=engine["max_batch_size"],
        tokens_per_block=engine["tokens_per_block"],
        kv_cache_free_gpu_mem_fraction=engine["kv_cache_free_gpu_mem_fraction"],
        runtime_reserved_bytes=engine["runtime_reserved_gib"] * GIB,
        scheduler_policy=engine["scheduler_policy"],
        iteration_noise=engine["iteration_noise"],
    )


def _read(relative: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (resources.files("simulator") / "profiles" / relative).read_text()
    )
    return data
