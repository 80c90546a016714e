"""`throttllem replay --live URL`: the same workload, sent to a running gateway over HTTP.

Each trace request becomes a streamed `/v1/completions` call at its (time-scaled)
arrival time, from one asyncio client, with `max_tokens` of its output length and
`ignore_eos`, so the engine generates exactly that many tokens (as a replay of recorded
lengths must, and as the virtual replay's engine does), and the replay's promises as the
`x-slo-*` headers (`x-slo-e2e-ms` only where the replay has one fixed deadline).

The prompt is what makes the live run the virtual one's experiment (`prompt_text`). Two
things read it: the engine, which prefills as many tokens as the text has (the twin counts
them with the served model's tokenizer, plus the BOS it adds), and the gateway's length
model, which predicts the answer's length from the text's tokens. The virtual replay's
engine prefills the workload's `prompt_tokens` (the trace's context length, at least the
paired AlpacaEval instruction's), while its length model saw the instruction alone. So the
text has exactly `prompt_tokens - 1` tokens, the engine's work, and starts with the
instruction; the rest is the instruction again, copies joined by a blank line, cut at a
token boundary. The length model's features are L2-normalised counts of tokens and token
pairs, which repetition leaves almost as they were (only the prompt's length and the
leading tokens' share move), so the gateway predicts nearly what the virtual replay
predicted: on the 300 s TP1 slice of the Azure conversation trace at 0.6 req/s, a median
|log ratio| of 0.10 to the virtual predictions, against 0.17 for filler text. Where the
workload has no prompt texts (`--lengths oracle|noisy`), the text is `" hello"` repeated,
one token each. Where the instruction has more than `prompt_tokens - 1` tokens (the
trace's context was no longer than it, so the BOS is one token too many, or the window cut
the prompt), it loses its tail: the engine's work wins.

Latencies are measured at the client:
TTFT to the first text, TBT as the mean gap over the rest of the answer (the usage's
token count, since the gateway may send tokens that arrive together as one chunk), E2E to
the end of the stream. Energy and the clock come from the gateway's `/metrics`
(`throttllem_gpu_energy_joules`, `throttllem_gpu_clock_mhz`), which report the GPUs its
governor drives; without a governor there, they stay empty.

The gateway sees `max_tokens` equal to the true length, and caps its predicted lengths
there, as the virtual replay's gateway does; the engine reserves the prompt plus that.
`throttllem bench live-agreement` measures how far the two runs agree.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from predictor.tokenizer import PromptTokenizer
from throttllem.replay.simulate import Run, Slo, request_latencies
from throttllem.replay.workload import Workload

CLOCK_SAMPLE_S = 0.5
PROMPT_WORD = " hello"  # one Llama 3 token per repetition
PROMPT_SEPARATOR = "\n\n"  # between the copies of an instruction
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
    prompts = prompt_texts(workload)  # before the clock starts: tokenizing takes a while
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
            body = request_body(model, prompts[index], int(workload.output_tokens[index]))
            await _complete(client, body, headers, start_s, outcomes[index])
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


def prompt_texts(workload: Workload, tokenizer: PromptTokenizer | None = None) -> list[str]:
    """The text each request of `workload` sends (`prompt_text`); `tokenizer` defaults to
    the served model's (the bundled Llama 3 one, which the twin and the gateway read)."""
    lengths = [max(1, int(tokens) - 1) for tokens in workload.prompt_tokens]  # + the BOS
    if workload.prompt_texts is None:
        return [PROMPT_WORD * tokens for tokens in lengths]
    tokenizer = tokenizer or PromptTokenizer.from_file()
    return [prompt_text(instruction, tokens, tokenizer)
            for instruction, tokens in zip(workload.prompt_texts, lengths, strict=True)]  # fmt: skip


def prompt_text(instruction: str, tokens: int, tokenizer: PromptTokenizer) -> str:
    """`instruction`, then copies of it, cut to exactly `tokens` tokens (the reasons are the
    module's docstring's). A cut can make the tokenizer merge across it, so the cut is
    moved until the text re-encodes to the count; `" hello"`s make up what no cut can."""
    if not instruction.strip():
        return PROMPT_WORD * tokens
    own = tokenizer.count(instruction)
    if own == tokens:
        return instruction
    copies = tokens // max(1, tokenizer.count(instruction + PROMPT_SEPARATOR)) + 2
    pieces = tokenizer.pieces(PROMPT_SEPARATOR.join([instruction] * copies))
    take, text, count = tokens, "", 0
    for _ in range(8):
        take = min(max(1, take), len(pieces))
        text = "".join(pieces[:take])
        count = tokenizer.count(text)
        if count == tokens:
            return text
        take += tokens - count
    if count > tokens:  # still over: take pieces off until under, then fill
        while take > 1 and count > tokens:
            take -= 1
            text = "".join(pieces[:take])
            count = tokenizer.count(text)
    return text + PROMPT_WORD * max(0, tokens - count)


def request_body(model: str, prompt: str, output_tokens: int) -> dict[str, Any]:
    """A streamed completion that generates exactly `output_tokens` tokens."""
    return {
        "model": model,
        "prompt": prompt,
        "max_tokens": output_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def _complete(client: httpx.AsyncClient, body: dict[str, Any], headers: dict[str, str],
                    start_s: float, outcome: _Outcome) -> None:  # fmt: skip
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
