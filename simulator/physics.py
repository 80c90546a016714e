"""How long an iteration takes and how much power it draws, from first principles.

Iteration time, per GPU of a tensor-parallel instance:

    memory  = (weights / TP + KV read / TP) / (bandwidth x memory_efficiency)
    sm      = 2 x params x (tokens + tensor_half_tokens) / TP / (peak x tensor_efficiency) / f
    fixed   = layers x sm_overhead_per_layer / f          (norms, rotary, sampling, launches)
    comm    = 2 x layers x (latency + ring all-reduce bytes / NVLink)      when TP > 1
    time    = max(memory, sm) + fixed + comm

with f the clock relative to the highest. Decode streams every weight and every cached
key and value once per iteration, so `memory` sets the pace at high clocks; the SM-side
work (prefill, the GEMMs' instruction issue) stretches as 1/f and takes over at low
clocks. Attention adds 4 x layers x hidden FLOPs per cached token (2x for causal prefill).

Power, per GPU: idle + dynamic x activity x f x v(f)^2, with the core voltage v rising
linearly from `voltage_at_min_clock` at the lowest clock to 1 at the highest.
"""

from __future__ import annotations

from dataclasses import dataclass

from simulator.profile import EngineProfile


@dataclass(frozen=True)
class IterationCost:
    duration_s: float
    sm_share: float  # fraction of the iteration the SMs are the bottleneck, in [0, 1]


class IterationModel:
    """Iteration time of one engine profile; all per-profile constants folded in once."""

    def __init__(self, profile: EngineProfile) -> None:
        gpu, model, tp = profile.gpu, profile.model, profile.tensor_parallel
        self.max_clock_mhz = gpu.max_clock_mhz
        bandwidth = gpu.memory_bandwidth_bytes_s * gpu.memory_efficiency
        self._weights_s = model.weight_bytes / tp / bandwidth
        self._kv_s_per_token = model.kv_bytes_per_token / tp / bandwidth
        tensor_flops = gpu.dense_bf16_flops * gpu.tensor_efficiency * tp
        self._sm_s_per_token = 2 * model.parameters / tensor_flops
        self._sm_s_base = self._sm_s_per_token * gpu.tensor_half_tokens
        self._attention_s_per_token_pair = 4 * model.layers * model.hidden_size / tensor_flops
        self._fixed_s = model.layers * gpu.sm_overhead_per_layer_s
        if tp > 1:
            ring = 2 * (tp - 1) / tp
            self._comm_s_base = 2 * model.layers * gpu.allreduce_latency_s
            self._comm_s_per_token = (
                2 * model.layers * ring * model.hidden_size * 2 / gpu.nvlink_bytes_s
            )
        else:
            self._comm_s_base = self._comm_s_per_token = 0.0

    def cost(
        self,
        decode_sequences: int,
        context_tokens: int,
        prefill_tokens: int,
        prefill_square_tokens: int,
        clock_mhz: int,
    ) -> IterationCost:
        """One iteration: `decode_sequences` generating over `context_tokens` cached tokens
        in all, plus prefills of `prefill_tokens` tokens (`prefill_square_tokens` is the
        sum of each prompt's length squared, for causal attention)."""
        relative_clock = clock_mhz / self.max_clock_mhz
        tokens = decode_sequences + prefill_tokens
        memory_s = self._weights_s + self._kv_s_per_token * context_tokens
        sm_s = (
            self._sm_s_base
            + self._sm_s_per_token * tokens
            + self._attention_s_per_token_pair * (context_tokens + prefill_square_tokens / 2)
        ) / relative_clock
        fixed_s = self._fixed_s / relative_clock
        comm_s = self._comm_s_base + self._comm_s_per_token * tokens
        duration_s = max(memory_s, sm_s) + fixed_s + comm_s
        return IterationCost(duration_s, min(1.0, (sm_s + fixed_s) / duration_s))


class PowerModel:
    """Power of one GPU at a clock and an activity level."""

    def __init__(self, profile: EngineProfile) -> None:
        gpu = profile.gpu
        self._idle_w = gpu.idle_power_w
        self._dynamic_w = gpu.dynamic_power_w
        self._v_min = gpu.voltage_at_min_clock
        self._min_mhz = gpu.min_clock_mhz
        self._max_mhz = gpu.max_clock_mhz

    @property
    def idle_w(self) -> float:
        return self._idle_w

    def busy_w(self, clock_mhz: int, sm_share: float) -> float:
        """Power while an iteration runs. SM-heavy iterations draw a little more."""
        activity = 0.9 + 0.1 * sm_share
        return self._idle_w + self._dynamic_w * activity * self._clock_factor(clock_mhz)

    def _clock_factor(self, clock_mhz: int) -> float:
        span = (clock_mhz - self._min_mhz) / (self._max_mhz - self._min_mhz)
        voltage = self._v_min + (1 - self._v_min) * min(max(span, 0.0), 1.0)
        return clock_mhz / self._max_mhz * voltage**2
