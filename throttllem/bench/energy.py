"""`throttllem bench energy`: each answer's attributed energy against what the twin knows.

`throttllem run` is started on free ports (the twin in a real Triton server, the gateway
with its embedded governor and energy meter, on the settings' defaults). After an idle
stretch, `--streams` clients of the official `openai` client keep that many streamed
completions in flight for `--duration-s` (AlpacaEval instructions, each sent once,
answered at their recorded lengths), reading `usage.energy_j` from each final chunk.

The twin logs every iteration's energy and work (simulator/iteration_log.py); the same
rule (slo_planner/energy_split.py), applied per iteration instead of per governor
window, gives each request's exact share. Printed and written as JSON:

- the sum of every answer's energy against the GPUs' energy counter over the run (the
  idle stretches with no request held are billed to nobody and shown apart);
- each answer's relative error against its exact share: p50, p90, p99;
- each answer's predicted energy (`usage.predicted_energy_j`) against its attributed one,
  where the gateway predicted one; and, to tell the energy model's error from the length
  prediction's, the same per token: the prediction over the length the gateway predicted
  (its shipped length model, run here on the same prompt) against the attributed energy
  over the answer's true length.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from simulator.iteration_log import prompt_digest
from slo_planner.energy_split import Work, price_window

IDLE_BEFORE_S = 3.0  # the meter learns nothing from it with a set idle power; the counter does


@dataclass(frozen=True)
class EnergyBenchOptions:
    profile: str = "a100-40gb/llama-2-13b/tp2"
    streams: int = 16
    duration_s: float = 60.0
    max_tokens: int = 1024
    alpaca_eval: Path = Path("../shared/data/alpaca_eval/llama-2-13b-chat-hf.json")
    seed: int = 1


@dataclass
class Answer:
    digest: str
    completion_tokens: int
    energy_j: float | None
    idle_j: float | None
    predicted_j: float | None
    prompt: str = ""
    predicted_tokens: int | None = None  # the gateway's length prediction, rerun here
    steady: bool = False  # started after the first wave and ended before the drain


def _add_predicted_lengths(answers: list[Answer], prompts: list[str],
                           options: EnergyBenchOptions) -> None:  # fmt: skip
    """The point prediction the gateway of `throttllem run` planned each answer on."""
    from predictor.length import LengthPredictor
    from predictor.shipped import length_model_path
    from predictor.tokenizer import PromptTokenizer
    from simulator.profile import load_profile

    profile = load_profile(options.profile)
    predictor = LengthPredictor(length_model_path(profile.model.recorded_responses))
    tokenizer = PromptTokenizer.from_file(None)
    for answer in answers:
        ids = tokenizer.encode(answer.prompt)
        answer.predicted_tokens = predictor.predict(ids, options.max_tokens).point()


def bench_energy(options: EnergyBenchOptions, json_path: Path | None) -> dict[str, Any]:
    from throttllem.bench.live_agreement import running_stack

    for name in ("httpx", "httpx2"):  # the client's line per request
        logging.getLogger(name).setLevel(logging.WARNING)
    prompts = _prompts(options.alpaca_eval, options.seed)
    with running_stack(options.profile) as stack:
        control = stack.control_url
        answers, span = asyncio.run(_drive(stack.base_url, control, prompts, options))
        log = httpx.get(f"{control}/iterations", params={"since": span["log_from"]},
                        timeout=60.0).json()  # fmt: skip
        weight = _gauge(httpx.get(f"{stack.base_url}/metrics").text,
                        "throttllem_energy_prefill_weight")  # fmt: skip
    _add_predicted_lengths(answers, prompts, options)
    exact = exact_shares(log["records"], log["idle_power_w"], weight)
    report = energy_report(answers, exact, span, options, weight)
    print(markdown(report), end="")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2) + "\n")
    return report


def exact_shares(
    records: list[dict[str, Any]], idle_power_w: float, prefill_weight: float
) -> dict[str, dict[str, float]]:
    """Each request's share of every iteration that held it, by the attribution rule;
    `"": unattributed` holds what was spent while the engine held nobody."""
    shares: dict[str, dict[str, float]] = defaultdict(lambda: {"active_j": 0.0, "idle_j": 0.0})
    for record in records:
        duration_s = record["ended_s"] - record["started_s"]
        prefilled = dict(record["prefilled"])
        emitted = set(record["emitted"])
        works = {
            name: Work(int(name in emitted), prefilled.get(name, 0), duration_s)
            for name in record["held"]
        }
        prices = price_window(
            record["energy_j"], duration_s, idle_power_w,
            sum(w.units(prefill_weight) for w in works.values()),
            sum(w.held_s for w in works.values()), end_s=record["ended_s"],
            prefill_weight=prefill_weight,
        )  # fmt: skip
        for name, work in works.items():
            share = prices.share(work)
            shares[name]["active_j"] += share.active_j
            shares[name]["idle_j"] += share.idle_j
        shares[""]["idle_j"] += prices.unattributed_j + prices.carried_active_j
    return dict(shares)


def energy_report(answers: list[Answer], exact: dict[str, dict[str, float]],
                  span: dict[str, Any], options: EnergyBenchOptions,
                  weight: float) -> dict[str, Any]:  # fmt: skip
    told = [a for a in answers if a.energy_j is not None]
    errors = [
        (a.energy_j - _total(exact[a.digest])) / _total(exact[a.digest])
        for a in told
        if a.energy_j is not None and _total(exact.get(a.digest, {})) > 0
    ]
    predicted = [
        (a.predicted_j - a.energy_j) / a.energy_j
        for a in told
        if a.predicted_j is not None and a.energy_j
    ]
    per_token = [
        (a.predicted_j / a.predicted_tokens) / (a.energy_j / a.completion_tokens) - 1
        for a in told
        if a.predicted_j is not None and a.predicted_tokens and a.energy_j and a.completion_tokens
    ]
    steady = [
        (a.predicted_j - a.energy_j) / a.energy_j for a in told
        if a.steady and a.predicted_j is not None and a.energy_j
    ]  # fmt: skip
    steady_per_token = [
        (a.predicted_j / a.predicted_tokens) / (a.energy_j / a.completion_tokens) - 1
        for a in told
        if a.steady
        and a.predicted_j is not None
        and a.predicted_tokens
        and a.energy_j
        and a.completion_tokens
    ]
    measured_j = span["energy_after_j"] - span["energy_before_j"]
    attributed_j = sum(a.energy_j or 0.0 for a in told)
    unattributed_j = exact.get("", {}).get("idle_j", 0.0)
    return {
        "setting": {
            "profile": options.profile,
            "streams": options.streams,
            "duration_s": options.duration_s,
            "max_tokens": options.max_tokens,
            "alpaca_eval": str(options.alpaca_eval),
            "seed": options.seed,
            "prefill_weight": weight,
            "cpu_cores": os.cpu_count(),
            "exact": "the twin's iteration log, the same rule per iteration",
        },
        "requests": len(answers),
        "told_energy": len(told),
        "wall_s": span["wall_s"],
        "measured_j": measured_j,
        "attributed_j": attributed_j,
        "unattributed_exact_j": unattributed_j,
        "sum_error": attributed_j / measured_j - 1 if measured_j else math.nan,
        "sum_error_vs_attributable": (
            attributed_j / (measured_j - unattributed_j) - 1 if measured_j else math.nan
        ),
        "relative_error": _quantiles(np.abs(errors)),
        "signed_error_mean": float(np.mean(errors)) if errors else math.nan,
        "predicted_relative_error": _quantiles(np.abs(predicted)),
        "predicted_signed_error_median": float(np.median(predicted)) if predicted else math.nan,
        "predicted": len(predicted),
        "predicted_per_token_relative_error": _quantiles(np.abs(per_token)),
        "steady": len(steady),
        "steady_predicted_relative_error": _quantiles(np.abs(steady)),
        "steady_predicted_per_token_relative_error": _quantiles(np.abs(steady_per_token)),
        "predicted_per_token_signed_error_median": (
            float(np.median(per_token)) if per_token else math.nan
        ),
        "joules_per_request": _quantiles(np.array([a.energy_j for a in told])),
        "answers": [
            {
                "digest": a.digest,
                "completion_tokens": a.completion_tokens,
                "energy_j": a.energy_j,
                "energy_idle_j": a.idle_j,
                "predicted_j": a.predicted_j,
                "predicted_tokens": a.predicted_tokens,
                "exact_j": _total(exact.get(a.digest, {})),
                "exact_idle_j": exact.get(a.digest, {}).get("idle_j"),
            }
            for a in answers
        ],
    }


def markdown(report: dict[str, Any]) -> str:
    def pct(value: float) -> str:
        return "—" if value is None or math.isnan(value) else f"{value * 100:+.2f} %"

    errors, predicted = report["relative_error"], report["predicted_relative_error"]
    per_token = report["predicted_per_token_relative_error"]
    steady = report["steady_predicted_relative_error"]
    steady_tok = report["steady_predicted_per_token_relative_error"]
    rows = [
        f"{report['requests']} answers ({report['told_energy']} with energy) from "
        f"{report['setting']['streams']} streams over {report['wall_s']:.0f} s on "
        f"{report['setting']['profile']}, prefill weight {report['setting']['prefill_weight']:.3f}",
        "",
        "| figure | measured | target |",
        "| --- | ---: | ---: |",
        f"| sum of answers' energy vs the GPUs' counter ({report['measured_j'] / 1000:.1f} kJ) "
        f"| {pct(report['sum_error'])} | within 1 % |",
        f"| the same, without the {report['unattributed_exact_j']:.0f} J of an empty engine "
        f"| {pct(report['sum_error_vs_attributable'])} | |",
        f"| per answer vs its exact per-iteration share, p50 / p90 / p99 "
        f"| {_abs_pct(errors['p50'])} / {_abs_pct(errors['p90'])} / {_abs_pct(errors['p99'])} "
        "| p90 ≤ 5 % |",
        f"| predicted vs attributed, p50 / p90 ({report['predicted']} answers) "
        f"| {_abs_pct(predicted['p50'])} / {_abs_pct(predicted['p90'])} | p50 ≤ 10 % |",
        f"| the same per token (the length prediction's error taken out), p50 / p90 "
        f"| {_abs_pct(per_token['p50'])} / {_abs_pct(per_token['p90'])} | |",
        f"| predicted vs attributed in the steady state ({report['steady']} answers: not the "
        f"first wave, not the drain), p50 / p90 | {_abs_pct(steady['p50'])} / "
        f"{_abs_pct(steady['p90'])} | |",
        f"| the same per token, p50 / p90 | {_abs_pct(steady_tok['p50'])} / "
        f"{_abs_pct(steady_tok['p90'])} | |",
    ]
    return "\n".join(rows) + "\n"


def _abs_pct(value: float) -> str:
    return "—" if math.isnan(value) else f"{value * 100:.2f} %"


def _quantiles(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {"p50": math.nan, "p90": math.nan, "p99": math.nan}
    return {f"p{q}": float(np.percentile(values, q)) for q in (50, 90, 99)}


def _total(share: dict[str, float]) -> float:
    return share.get("active_j", 0.0) + share.get("idle_j", 0.0)


def _prompts(path: Path, seed: int) -> list[str]:
    rows = json.loads(path.read_text())
    prompts = list(dict.fromkeys(row["instruction"] for row in rows))
    random.Random(seed).shuffle(prompts)
    return prompts


async def _drive(base_url: str, control: str, prompts: list[str],
                 options: EnergyBenchOptions) -> tuple[list[Answer], dict[str, Any]]:  # fmt: skip
    import openai

    async with (
        httpx.AsyncClient(timeout=30.0) as http,
        openai.AsyncOpenAI(
            base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=600.0
        ) as client,
    ):
        model = (await client.models.list()).data[0].id
        await client.completions.create(model=model, prompt="Say hello.", max_tokens=1)
        await asyncio.sleep(IDLE_BEFORE_S)
        log_from = (await http.get(f"{control}/iterations", params={"since": 10**9})).json()
        energy_before_j = await _counter_j(http, control)
        started_s = time.monotonic()
        queue = iter(enumerate(prompts * (1 + options.streams)))
        answers: list[Answer] = []

        async def stream_loop() -> None:
            while time.monotonic() - started_s < options.duration_s:
                index, prompt = next(queue)
                text = prompt if index < len(prompts) else f"{prompt} ({index})"
                answer = await _one(client, model, text, options.max_tokens)
                # the first wave joins an empty engine together; the last ones drain it
                answer.steady = (index >= options.streams
                                 and time.monotonic() - started_s < options.duration_s)  # fmt: skip
                answers.append(answer)

        await asyncio.gather(*(stream_loop() for _ in range(options.streams)))
        energy_after_j = await _counter_j(http, control)
    span = {"log_from": log_from["count"], "energy_before_j": energy_before_j,
            "energy_after_j": energy_after_j, "wall_s": time.monotonic() - started_s}  # fmt: skip
    return answers, span


async def _one(client: Any, model: str, prompt: str, max_tokens: int) -> Answer:
    stream = await client.completions.create(
        model=model, prompt=prompt, max_tokens=max_tokens, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    usage = None
    async for chunk in stream:
        usage = chunk.usage or usage
    extra = (usage.model_extra or {}) if usage is not None else {}
    return Answer(prompt_digest(prompt), usage.completion_tokens if usage else 0,
                  extra.get("energy_j"), extra.get("energy_idle_j"),
                  extra.get("predicted_energy_j"), prompt)  # fmt: skip


async def _counter_j(http: httpx.AsyncClient, control: str) -> float:
    gpus = (await http.get(f"{control}/gpus")).json()
    return sum(gpu["energy_mj"] for gpu in gpus) / 1000


def _gauge(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[-1])
    raise RuntimeError(f"the gateway's /metrics has no {name}: is its energy meter on?")
