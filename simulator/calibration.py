"""The paper's characterisation, measured on the twin by running its engine.

Each function drives `Engine.step` (the code every replay and the Triton host run) on a
steady workload and reports what the paper reports for Llama-2-13B on an A100-40GB. The
calibration tests hold these to the paper's numbers; `throttllem bench twin` prints them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.engine import Engine, EngineRequest
from simulator.profile import EngineProfile

CALIBRATION_PROFILE = "a100-40gb/llama-2-13b/tp1"


@dataclass(frozen=True)
class DecodeRun:
    tokens: int
    seconds: float
    energy_j: float
    iteration_s: list[float]
    kv_blocks: list[int]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    @property
    def tokens_per_j(self) -> float:
        return self.tokens / self.energy_j

    @property
    def power_w(self) -> float:
        return self.energy_j / self.seconds


def decode_run(
    profile: EngineProfile,
    batch_size: int,
    clock_mhz: int,
    prompt_tokens: int = 128,
    output_tokens: int = 256,
    seed: int = 0,
) -> DecodeRun:
    """`batch_size` requests decoding together at a locked clock; the prefill iteration
    is left out, so the figures are those of steady decode."""
    engine = Engine(profile, seed=seed)
    for gpu in engine.gpus:
        gpu.lock_clock(clock_mhz, now_s=-1.0)  # switched well before the run starts
    for index in range(batch_size):
        engine.submit(EngineRequest(str(index), prompt_tokens, output_tokens, output_tokens))
    now_s = engine.step(0.0).ended_s  # prefill
    if engine.running != batch_size:
        raise ValueError(f"{batch_size} requests of this size do not fit in {profile.name}")
    energy_before_mj = sum(gpu.energy_mj() for gpu in engine.gpus)
    started_s, tokens, durations, blocks = now_s, 0, [], []
    while engine.has_work:
        kv_blocks = engine.kv_used_blocks
        result = engine.step(now_s)
        now_s = result.ended_s
        tokens += result.batch_size
        durations.append(result.duration_s)
        blocks.append(kv_blocks)
    energy_j = (sum(gpu.energy_mj() for gpu in engine.gpus) - energy_before_mj) / 1000
    return DecodeRun(tokens, now_s - started_s, energy_j, durations, blocks)


@dataclass(frozen=True)
class ClockComparison:
    throughput_change_pct: float
    tokens_per_joule_change_pct: float


def compare_clocks(
    profile: EngineProfile, low_mhz: int = 1050, high_mhz: int = 1410
) -> ClockComparison:
    """Full batch at two clocks: the paper's -6.25 % throughput, +37.4 % tokens per joule."""
    batch = profile.max_batch_size
    low, high = decode_run(profile, batch, low_mhz), decode_run(profile, batch, high_mhz)
    return ClockComparison(
        throughput_change_pct=(low.tokens_per_s / high.tokens_per_s - 1) * 100,
        tokens_per_joule_change_pct=(low.tokens_per_j / high.tokens_per_j - 1) * 100,
    )


def power_by_batch_size(
    profile: EngineProfile, batch_sizes: list[int], clock_mhz: int
) -> dict[int, float]:
    """Mean power of one GPU while decoding, per batch size, at a fixed clock."""
    tp = profile.tensor_parallel
    return {b: decode_run(profile, b, clock_mhz).power_w / tp for b in batch_sizes}


def kv_time_correlation(profile: EngineProfile, batch_size: int = 16) -> float:
    """Pearson correlation of iteration time and KV blocks in use, at a fixed batch size,
    as the requests' contexts grow from 64 to 944 tokens."""
    run = decode_run(
        profile, batch_size, profile.gpu.max_clock_mhz, prompt_tokens=64, output_tokens=880
    )
    return float(np.corrcoef(run.kv_blocks, run.iteration_s)[0, 1])


def decode_iteration_ms(profile: EngineProfile, batch_sizes: list[int]) -> dict[int, float]:
    """Mean decode iteration time at the highest clock, per batch size."""
    clock = profile.gpu.max_clock_mhz
    return {
        b: float(np.mean(decode_run(profile, b, clock).iteration_s)) * 1000 for b in batch_sizes
    }


def joules_per_token_by_clock(profile: EngineProfile, clocks_mhz: list[int]) -> dict[int, float]:
    """Energy per token at full batch, per clock."""
    batch = profile.max_batch_size
    return {f: 1 / decode_run(profile, batch, f).tokens_per_j for f in clocks_mhz}
