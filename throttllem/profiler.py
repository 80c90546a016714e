"""`throttllem profile`: measure iterations per second over batch size, KV use and clock.

For every batch size from 1 to the engine's maximum, one step: the clock is locked at a
value drawn at random from the supported ones (through the governor's GPU backend), that
many requests that ignore EOS run together, and while they do, the iteration counter and
the KV blocks in use are read from the server's metrics every window, and the GPUs'
energy counters (NVML's, the twin's). Each window is one row: `tp, batch, kv_blocks,
freq_mhz, ips, power_w` (the mean power of one GPU over the window), and the sweep's
first row, `batch` 0, is the GPUs idle (the power model's idle power, predictor/power.py). Each step fills the KV cache to a random share
of what its batch can hold (the whole cache, or a full context window per request where
that is less): the batch's blocks at full length are that share, split at random between
its requests, whose prompts are drawn to match. Contexts grow as they generate, so each
step sees a range of KV levels, and the rows span the cache from empty to full.

`--passes N` repeats the sweep with fresh clocks and fills, so each batch size is seen at
N clocks; its N fills are stratified (one in each N-th of the range, in a random order), so
every batch size is also seen with its cache nearly full. `--virtual PROFILE` runs the same
sweep on the twin's engine in virtual time: the same rows in seconds instead of an hour,
which is how the shipped models were profiled.
"""

from __future__ import annotations

import asyncio
import csv
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from governor.gpu.base import GpuClock

log = logging.getLogger(__name__)

COLUMNS = ("tp", "batch", "kv_blocks", "freq_mhz", "ips", "power_w")
IDLE_MEASURE_S = 1.0


@dataclass(frozen=True)
class ProfileRow:
    tp: int
    batch: int
    kv_blocks: int
    freq_mhz: int
    ips: float
    power_w: float = float("nan")  # one GPU's mean; NaN: not measured

    def as_csv(self) -> list[str]:
        return [
            str(self.tp),
            str(self.batch),
            str(self.kv_blocks),
            str(self.freq_mhz),
            f"{self.ips:.4f}",
            f"{self.power_w:.3f}",
        ]


@dataclass(frozen=True)
class SweepPlan:
    """The sweep's steps (batch size and KV fill), and per step the prompt lengths and the
    tokens each request generates. Shared by the live and the virtual profiler."""

    max_batch: int
    kv_capacity_blocks: int
    tokens_per_block: int
    context_window_tokens: int
    output_tokens: int = 256
    batch_step: int = 1
    seed: int = 0
    passes: int = 1

    def batch_sizes(self) -> list[int]:
        sizes = list(range(1, self.max_batch + 1, self.batch_step))
        return sizes if sizes[-1] == self.max_batch else [*sizes, self.max_batch]

    def steps(self, rng: random.Random) -> list[tuple[int, float]]:
        """`(batch, fill)` for every step, pass after pass, each pass over every batch size.
        A batch size's fills over the passes are stratified: one in each `1/passes` of
        [0, 1], in a random order, so each batch size sees its cache from empty to full."""
        sizes = self.batch_sizes()
        fills: dict[int, list[float]] = {}
        for batch in sizes:
            strata = list(range(self.passes))
            rng.shuffle(strata)
            fills[batch] = [(stratum + rng.random()) / self.passes for stratum in strata]
        return [(batch, fills[batch][n]) for n in range(self.passes) for batch in sizes]

    def step_shape(self, rng: random.Random, batch: int, fill: float) -> tuple[list[int], int]:
        """Random prompt lengths, and tokens to generate, such that the whole batch at full
        length holds `fill` of the KV blocks it can (0: one-token prompts; 1: the whole
        cache, or a full context window each where that is less) and always fits in the
        cache, block by block (a large batch on a small cache generates fewer tokens)."""
        per_block = self.tokens_per_block
        per_request = min(self.kv_capacity_blocks * per_block // batch, self.context_window_tokens)
        output_tokens = min(self.output_tokens, per_request // 2)
        least = -(-(output_tokens + 1) // per_block)  # blocks of a one-token prompt
        most = min(self.context_window_tokens // per_block, self.kv_capacity_blocks)
        if output_tokens < 2 or batch * least > self.kv_capacity_blocks or least > most:
            raise ValueError(
                f"{batch} requests do not fit a KV cache of {self.kv_capacity_blocks} blocks"
            )
        reach = min(self.kv_capacity_blocks, batch * most)
        total = batch * least + round(min(max(fill, 0.0), 1.0) * (reach - batch * least))
        prompts = []
        for blocks in _split(rng, total, batch, least, most):  # each request's full length
            longest = min(blocks * per_block, self.context_window_tokens) - output_tokens
            shortest = max((blocks - 1) * per_block + 1 - output_tokens, 1)
            prompts.append(rng.randint(shortest, longest))
        return prompts, output_tokens


def _split(rng: random.Random, total: int, parts: int, least: int, most: int) -> list[int]:
    """`total` split at random into `parts` whole numbers, each in [least, most]."""
    split = [least] * parts
    left = total - parts * least
    while left > 0:
        room = [index for index in range(parts) if split[index] < most]
        if left <= len(room):
            for index in rng.sample(room, left):
                split[index] += 1
            break
        weights = [rng.random() for _ in room]
        scale = left / (sum(weights) or 1.0)
        for index, weight in zip(room, weights, strict=True):
            added = min(int(weight * scale), most - split[index], left)
            split[index] += added
            left -= added
    return split


def write_rows(path: Path, rows: Sequence[ProfileRow]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        writer.writerows(row.as_csv() for row in rows)


def read_rows(path: Path) -> list[ProfileRow]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or set(COLUMNS[:-1]) - set(reader.fieldnames):
            raise ValueError(f"{path}: expected the columns {', '.join(COLUMNS)}")
        return [
            ProfileRow(
                int(r["tp"]),
                int(r["batch"]),
                int(r["kv_blocks"]),
                int(r["freq_mhz"]),
                float(r["ips"]),
                float(r.get("power_w") or "nan"),  # profiles made before power was
            )
            for r in reader
        ]


# -- against the twin's engine, in virtual time -------------------------------------------


def profile_virtual(profile_name: str, output_tokens: int = 256, window_iterations: int = 8, seed: int = 0,
                    batch_step: int = 1, passes: int = 1) -> list[ProfileRow]:  # fmt: skip
    from simulator.engine import Engine, EngineRequest
    from simulator.profile import load_profile

    profile = load_profile(profile_name)
    plan = SweepPlan(
        max_batch=profile.max_batch_size,
        kv_capacity_blocks=profile.kv_capacity_blocks,
        tokens_per_block=profile.tokens_per_block,
        context_window_tokens=profile.model.context_window_tokens,
        output_tokens=output_tokens,
        batch_step=batch_step,
        seed=seed,
        passes=passes,
    )
    rng = random.Random(seed)
    clocks = profile.gpu.supported_clocks_mhz()
    engine = Engine(profile, seed=seed)
    tp = profile.tensor_parallel

    def energy_j() -> float:
        return sum(gpu.energy_mj() for gpu in engine.gpus) / 1000

    engine.step(IDLE_MEASURE_S)  # nothing to do: idle power
    idle_w = energy_j() / IDLE_MEASURE_S / tp
    rows = [ProfileRow(tp, 0, 0, engine.clock_mhz(0.0), 0.0, idle_w)]
    now_s = IDLE_MEASURE_S
    for batch, fill in plan.steps(rng):
        clock_mhz = rng.choice(clocks)
        for gpu in engine.gpus:
            gpu.lock_clock(clock_mhz, now_s)
        now_s += profile.gpu.clock_switch_latency_s
        prompts, step_tokens = plan.step_shape(rng, batch, fill)
        for index, prompt in enumerate(prompts):
            engine.submit(EngineRequest(f"{batch}-{index}", prompt, step_tokens, step_tokens))
        now_s = engine.step(now_s).ended_s  # the prefill iteration is not a decode sample
        while engine.running == batch:
            kv_blocks, started_s, done = engine.kv_used_blocks, now_s, 0
            started_j = energy_j()
            while done < window_iterations and engine.running == batch:
                now_s = engine.step(now_s).ended_s
                done += 1
            if done == window_iterations:
                seconds = now_s - started_s
                power_w = (energy_j() - started_j) / seconds / tp
                rows.append(ProfileRow(tp, batch, kv_blocks, clock_mhz, done / seconds, power_w))
        while engine.has_work:
            now_s = engine.step(now_s).ended_s
    return rows


# -- against a live Triton server, on the wall clock --------------------------------------


@dataclass(frozen=True)
class EngineMetrics:
    iterations: int
    kv_used_blocks: int
    kv_max_blocks: int
    tokens_per_block: int
    scheduled: int
    active: int
    max_batch: int

    def steady(self, batch: int) -> bool:
        """Exactly `batch` requests in the engine, all of them in the last iteration."""
        return self.scheduled == batch and self.active == batch


def parse_trt_llm_metrics(text: str) -> EngineMetrics:
    """The TensorRT-LLM gauges from a Triton `/metrics` page (summed over models)."""
    wanted = {
        ("nv_trt_llm_general_metrics", "iteration_counter"): 0.0,
        ("nv_trt_llm_kv_cache_block_metrics", "used"): 0.0,
        ("nv_trt_llm_kv_cache_block_metrics", "max"): 0.0,
        ("nv_trt_llm_kv_cache_block_metrics", "tokens_per"): 0.0,
        ("nv_trt_llm_request_metrics", "scheduled"): 0.0,
        ("nv_trt_llm_request_metrics", "active"): 0.0,
        ("nv_trt_llm_request_metrics", "max"): 0.0,
    }
    found = set()
    for line in text.splitlines():
        if line.startswith("#") or "{" not in line:
            continue
        name, _, rest = line.partition("{")
        labels, _, value = rest.rpartition("} ")
        for metric, label_value in wanted:
            if name == metric and f'="{label_value}"' in labels:
                wanted[(metric, label_value)] += float(value)
                found.add((metric, label_value))
    missing = set(wanted) - found
    if missing:
        raise ValueError(
            f"the metrics page lacks {sorted(missing)}: is this a TensorRT-LLM server?"
        )
    return EngineMetrics(
        iterations=int(wanted[("nv_trt_llm_general_metrics", "iteration_counter")]),
        kv_used_blocks=int(wanted[("nv_trt_llm_kv_cache_block_metrics", "used")]),
        kv_max_blocks=int(wanted[("nv_trt_llm_kv_cache_block_metrics", "max")]),
        tokens_per_block=int(wanted[("nv_trt_llm_kv_cache_block_metrics", "tokens_per")]),
        scheduled=int(wanted[("nv_trt_llm_request_metrics", "scheduled")]),
        active=int(wanted[("nv_trt_llm_request_metrics", "active")]),
        max_batch=int(wanted[("nv_trt_llm_request_metrics", "max")]),
    )


@dataclass(frozen=True)
class LiveTarget:
    triton_url: str
    metrics_url: str
    model: str
    tp: int
    context_window_tokens: int


async def profile_live(
    target: LiveTarget,
    gpus: Sequence[GpuClock],
    output_tokens: int = 256,
    window_s: float = 0.5,
    max_batch: int | None = None,
    batch_step: int = 1,
    seed: int = 0,
    switch_wait_s: float = 0.3,
    passes: int = 1,
) -> list[ProfileRow]:
    rng = random.Random(seed)
    clocks = await gpus[0].supported_clocks_mhz()
    rows: list[ProfileRow] = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(600, connect=10)) as client:
        first = await _metrics(client, target.metrics_url)
        plan = SweepPlan(
            max_batch=min(max_batch or first.max_batch, first.max_batch),
            kv_capacity_blocks=first.kv_max_blocks,
            tokens_per_block=first.tokens_per_block,
            context_window_tokens=target.context_window_tokens,
            output_tokens=output_tokens,
            batch_step=batch_step,
            seed=seed,
            passes=passes,
        )
        try:
            idle_j, idle_s = await _energy_j(gpus), time.monotonic()
            await asyncio.sleep(IDLE_MEASURE_S)  # nothing running: idle power
            idle_w = (await _energy_j(gpus) - idle_j) / (time.monotonic() - idle_s) / len(gpus)
            rows.append(ProfileRow(target.tp, 0, 0, await gpus[0].clock_mhz(), 0.0, idle_w))
            for batch, fill in plan.steps(rng):
                clock_mhz = rng.choice(clocks)
                for gpu in gpus:
                    await gpu.lock_clock(clock_mhz)
                await asyncio.sleep(switch_wait_s)
                lengths, step_tokens = plan.step_shape(rng, batch, fill)
                prompts = ["hi " * max(1, n - 2) for n in lengths]  # " hi" is one token; BOS
                step_rows = await _profile_step(
                    client, target, gpus, batch, clock_mhz, prompts, step_tokens, window_s
                )
                rows += step_rows
                log.info("batch %d at %d MHz, %.0f %% full: %d rows", batch, clock_mhz, 100 * fill,
                         len(step_rows))  # fmt: skip
        finally:
            for gpu in gpus:
                await gpu.reset_clock()
    return rows


async def _energy_j(gpus: Sequence[GpuClock]) -> float:
    return sum([await gpu.energy_mj() for gpu in gpus]) / 1000


async def _profile_step(client: httpx.AsyncClient, target: LiveTarget, gpus: Sequence[GpuClock],
                        batch: int, clock_mhz: int,
                        prompts: list[str], output_tokens: int, window_s: float) -> list[ProfileRow]:  # fmt: skip
    url = f"{target.triton_url}/v2/models/{target.model}/generate"
    body = {"max_tokens": output_tokens, "min_tokens": output_tokens}
    requests = [
        asyncio.create_task(client.post(url, json={**body, "text_input": p})) for p in prompts
    ]
    rows: list[ProfileRow] = []
    previous, previous_s = await _metrics(client, target.metrics_url), time.monotonic()
    previous_j = await _energy_j(gpus)
    warmed_up = False
    while not all(task.done() for task in requests):
        await asyncio.sleep(window_s)
        current, now_s = await _metrics(client, target.metrics_url), time.monotonic()
        energy_j = await _energy_j(gpus)
        iterations = current.iterations - previous.iterations
        if previous.steady(batch) and current.steady(batch) and iterations > 0:
            if warmed_up:  # the first steady window still holds the batch's prefill
                seconds = now_s - previous_s
                power_w = (energy_j - previous_j) / seconds / len(gpus)
                rows.append(ProfileRow(target.tp, batch, previous.kv_used_blocks, clock_mhz,
                                       iterations / seconds, power_w))  # fmt: skip
            warmed_up = True
        previous, previous_s, previous_j = current, now_s, energy_j
    for task in requests:
        response = task.result()
        if response.status_code != 200:
            raise RuntimeError(f"the server refused a profiling request: {response.text[:300]}")
    return rows


async def _metrics(client: httpx.AsyncClient, url: str) -> EngineMetrics:
    response = await client.get(url)
    response.raise_for_status()
    return parse_trt_llm_metrics(response.text)
