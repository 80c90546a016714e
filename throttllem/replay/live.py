"""`throttllem replay --live URL`: the same workload, sent to a running gateway over HTTP.

Each trace request becomes a streamed `/v1/completions` call at its (time-scaled)
arrival time, from one asyncio client: a prompt of the trace's length in tokens, and
`max_tokens` of its output length with `ignore_eos`, so the engine generates exactly that
many tokens (as a replay of recorded lengths must), with the replay's promises as the
`x-slo-*` headers. Latencies are measured at the client:
TTFT to the first text, TBT as the mean gap over the rest of the answer (the usage's
token count, since the gateway may send tokens that arrive together as one chunk), E2E to
the end of the stream. Energy and the clock come from the gateway's `/metrics`
(`throttllem_gpu_energy_joules`, `throttllem_gpu_clock_mhz`), which report the GPUs its
governor drives; without a governor there, they stay empty.

Unlike the virtual replay, the gateway sees `max_tokens` equal to the true length: a
tight bound the length model never gets in the virtual replay. The live replay checks a
deployment end to end; the policy comparison is the virtual one's.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import numpy as np

from throttllem.replay.simulate import Run, Slo, request_latencies
from throttllem.replay.workload import Workload

CLOCK_SAMPLE_S = 0.5
PROMPT_WORD = " hello"  # one Llama 3 token per repetition
REQUEST_TIMEOUT_S = 600.0


class LiveTargetError(RuntimeError):
    """The gateway cannot be driven: unreachable, or it serves no model."""


@dataclass
class _Outcome:
    first_s: float = math.nan
    last_s: float = math.nan
    finished_s: float = math.nan
    tokens: int = 0
    failed: str | None = None


async def drive(
    base_url: str,
    workload: Workload,
    slo: Slo,
    progress: Callable[[float], None] | None = None,
) -> tuple[Run, int]:
    """Send every request at its arrival time; the run as measured, and how many failed."""
    started_wall_s = time.perf_counter()
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base_url.rstrip("/"), limits=limits,
                                 timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=10.0)) as client:  # fmt: skip
        model = await _served_model(client)
        energy_before_j = await _metric(client, "throttllem_gpu_energy_joules")
        outcomes = [_Outcome() for _ in range(len(workload))]
        clocks: list[tuple[float, float]] = []
        start_s = time.monotonic()
        sampler = asyncio.create_task(_sample_clock(client, start_s, clocks))
        done = 0
        headers = slo_headers(slo)

        async def one(index: int) -> None:
            nonlocal done
            await asyncio.sleep(max(0.0, start_s + workload.arrival_s[index] - time.monotonic()))
            await _complete(client, model, int(workload.prompt_tokens[index]),
                            int(workload.output_tokens[index]), start_s, outcomes[index],
                            headers)  # fmt: skip
            done += 1
            if progress is not None:
                progress(done / len(workload))

        try:
            await asyncio.gather(*(one(index) for index in range(len(workload))))
        finally:
            sampler.cancel()
        energy_after_j = await _metric(client, "throttllem_gpu_energy_joules")
    energy_j = (
        energy_after_j - energy_before_j
        if energy_before_j is not None and energy_after_j is not None
        else math.nan
    )
    return _run(workload, slo, outcomes, clocks, energy_j, time.perf_counter() - started_wall_s)


async def _served_model(client: httpx.AsyncClient) -> str:
    try:
        response = await client.get("/v1/models")
        response.raise_for_status()
        models = response.json()["data"]
    except (httpx.HTTPError, KeyError, ValueError) as error:
        raise LiveTargetError(f"no gateway answers at {client.base_url}: {error!r}") from error
    if not models:
        raise LiveTargetError(f"{client.base_url} serves no model")
    return str(models[0]["id"])


def slo_headers(slo: Slo) -> dict[str, str]:
    """The replay's promises as the gateway's per-request SLO headers, so that it plans for
    what the replay measures (no `x-slo-e2e-ms` where the E2E budget follows from TTFT
    and TPOT)."""
    headers = {"x-slo-ttft-ms": f"{slo.ttft_s * 1000:g}", "x-slo-tpot-ms": f"{slo.tbt_s * 1000:g}"}
    if math.isfinite(slo.e2e_s):
        headers["x-slo-e2e-ms"] = f"{slo.e2e_s * 1000:g}"
    return headers


async def _complete(client: httpx.AsyncClient, model: str, prompt_tokens: int,
                    output_tokens: int, start_s: float, outcome: _Outcome,
                    headers: dict[str, str]) -> None:  # fmt: skip
    body = {
        "model": model,
        "prompt": PROMPT_WORD * max(1, prompt_tokens - 1),  # the tokenizer adds BOS
        "max_tokens": output_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    try:
        async with client.stream("POST", "/v1/completions", json=body,
                                 headers=headers) as response:  # fmt: skip
            if response.status_code != 200:
                await response.aread()
                outcome.failed = f"HTTP {response.status_code}: {response.text[:200]}"
                return
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line.removeprefix("data: "))
                now_s = time.monotonic() - start_s
                if event.get("choices") and event["choices"][0].get("text"):
                    if math.isnan(outcome.first_s):
                        outcome.first_s = now_s
                    outcome.last_s = now_s
                if event.get("usage"):
                    outcome.tokens = int(event["usage"]["completion_tokens"])
                if event.get("error"):
                    outcome.failed = str(event["error"].get("message", event["error"]))
            outcome.finished_s = time.monotonic() - start_s
    except (httpx.HTTPError, ValueError) as error:
        outcome.failed = repr(error)


async def _metric(client: httpx.AsyncClient, name: str) -> float | None:
    """One unlabelled sample from the gateway's Prometheus page; None if absent."""
    try:
        response = await client.get("/metrics")
    except httpx.HTTPError:
        return None
    for line in response.text.splitlines():
        if line.startswith(name + " "):
            try:
                return float(line.split()[1])
            except (IndexError, ValueError):
                return None
    return None


async def _sample_clock(
    client: httpx.AsyncClient, start_s: float, samples: list[tuple[float, float]]
) -> None:
    while True:
        clock_mhz = await _metric(client, "throttllem_gpu_clock_mhz")
        if clock_mhz is not None:
            samples.append((time.monotonic() - start_s, clock_mhz))
        await asyncio.sleep(CLOCK_SAMPLE_S)


def _run(workload: Workload, slo: Slo, outcomes: list[_Outcome],
         clocks: list[tuple[float, float]], energy_j: float, wall_s: float) -> tuple[Run, int]:  # fmt: skip
    arrival_s = workload.arrival_s
    first_s = np.array([o.first_s for o in outcomes])
    last_s = np.array([o.last_s for o in outcomes])
    finished_s = np.array([o.finished_s for o in outcomes])
    tokens = np.array([o.tokens for o in outcomes])
    failed = np.array([o.failed is not None for o in outcomes])
    measured = request_latencies(arrival_s, first_s, last_s, finished_s, tokens, slo)
    ttft_s, tbt_s, e2e_s = (np.where(failed, math.nan, seconds) for seconds in measured[:3])
    met = measured[3] & ~failed
    t_s = np.array([t for t, _ in clocks])
    clock_mhz = np.array([c for _, c in clocks])
    run = Run(
        policy="live",
        energy_j=energy_j,
        ttft_s=ttft_s,
        tbt_s=tbt_s,
        e2e_s=e2e_s,
        met=met,
        output_tokens=int(tokens.sum()),
        mean_freq_mhz=float(clock_mhz.mean()) if len(clock_mhz) else math.nan,
        wall_s=wall_s,
        series_t_s=t_s,
        series_clock_mhz=clock_mhz,
        series_power_w=np.full(len(t_s), math.nan),
        series_gpus=np.full(len(t_s), math.nan),
        queue_s=np.full(len(outcomes), math.nan),
        engine_wait_s=np.full(len(outcomes), math.nan),  # not seen from the client
        prefill_s=np.full(len(outcomes), math.nan),
    )
    return run, int(failed.sum())
