import json
from pathlib import Path

import numpy as np
import pytest

from simulator.traces import Trace, TraceError
from throttllem.replay.workload import (
    build_workload,
    busiest_window_rps,
    predicted_lengths,
    read_trace,
    time_scale,
)


def trace(arrival_s: list[float], prompts: list[int] | None = None,
          outputs: list[int] | None = None) -> Trace:  # fmt: skip
    count = len(arrival_s)
    return Trace(np.array(arrival_s), np.array(prompts or [100] * count),
                 np.array(outputs or [50] * count))  # fmt: skip


def test_the_busiest_minute_is_found():
    arrival_s = np.concatenate([np.arange(0, 600, 10.0), np.linspace(700, 730, 90)])
    assert busiest_window_rps(np.sort(arrival_s)) == pytest.approx(90 / 60 + 0 / 60, abs=1 / 60)


def test_peak_scaling_brings_the_busiest_minute_to_capacity():
    arrival_s = np.sort(np.random.default_rng(0).uniform(0, 3600, 5000))
    scale = time_scale(arrival_s, "peak", capacity_rps=2.0)
    assert busiest_window_rps(arrival_s * scale) == pytest.approx(2.0, rel=0.05)


def test_a_number_sets_the_mean_rate():
    arrival_s = np.arange(0, 1000, 0.5)  # 2 req/s
    scale = time_scale(arrival_s, 5.0, capacity_rps=1.0)
    scaled = arrival_s * scale
    assert (len(scaled) - 1) / scaled[-1] == pytest.approx(5.0)


def test_with_a_duration_the_rate_is_the_replayed_spans():
    # A trace that starts slowly: its own mean rate is far from its first minutes'.
    arrival_s = np.concatenate([np.arange(0, 600, 2.0), np.arange(600, 1200, 0.25)])
    scale = time_scale(arrival_s, 1.0, capacity_rps=1.0, duration_s=120)
    kept = arrival_s[arrival_s * scale <= 120]
    assert len(kept) == pytest.approx(120, abs=2)
    assert time_scale(arrival_s, 1.0, 1.0) != pytest.approx(scale, rel=0.1)


def test_a_rate_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        time_scale(np.arange(10.0), 0.0, capacity_rps=1.0)


def test_requests_over_the_window_lose_the_head_of_their_prompt_and_are_counted():
    workload = build_workload(trace([0, 1, 2], [100, 4000, 3000], [50, 500, 2000]), 1.0,
                              window_tokens=4096, lengths="oracle")  # fmt: skip
    assert workload.truncated == 2
    assert list(workload.prompt_tokens + workload.output_tokens) == [150, 4096, 4096]
    assert list(workload.output_tokens) == [50, 500, 2000]


def test_duration_keeps_the_first_seconds_of_the_scaled_trace():
    workload = build_workload(trace([0, 10, 20, 30]), 0.5, 4096, "oracle", duration_s=10)
    assert list(workload.arrival_s) == [0, 5, 10]


def test_noisy_lengths_are_off_by_at_most_the_error_for_95_percent():
    outputs = np.full(20000, 400)
    predicted = predicted_lengths(outputs, "noisy:0.3", seed=1)
    relative = np.abs(predicted / outputs - 1)
    assert np.mean(relative <= 0.3) == pytest.approx(0.95, abs=0.02)
    assert np.array_equal(predicted_lengths(outputs, "oracle"), outputs)
    with pytest.raises(ValueError, match="unknown lengths"):
        predicted_lengths(outputs, "guess")


def test_mooncake_rows_are_read_in_milliseconds(tmp_path: Path):
    path = tmp_path / "trace.jsonl"
    rows = [{"timestamp": 2500, "input_length": 10, "output_length": 3},
            {"timestamp": 500, "input_length": 20, "output_length": 4}]  # fmt: skip
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    read = read_trace(path, "mooncake")
    assert list(read.arrival_s) == [0.0, 2.0]
    assert list(read.prompt_tokens) == [20, 10]
    path.write_text('{"timestamp": 1}\n')
    with pytest.raises(TraceError, match=r"trace\.jsonl:1"):
        read_trace(path, "jsonl")


def test_model_lengths_pair_prompts_pad_them_and_take_the_recorded_answer():
    from predictor.length import LengthPredictor
    from predictor.shipped import length_model_path
    from predictor.tokenizer import PromptTokenizer
    from tests.data import shared_data
    from throttllem.replay.workload import read_prompt_set

    served = "llama-2-13b-chat-hf"
    prompts = read_prompt_set(shared_data(f"alpaca_eval/{served}.json"), PromptTokenizer.from_file(),
                              LengthPredictor(length_model_path(served)), 4096)  # fmt: skip
    assert len(prompts.output_tokens) == 805
    assert np.all(prompts.predicted_tokens >= 1)
    short_contexts = trace([0, 1, 2, 3], prompts=[1, 1, 1, 1], outputs=[7, 7, 7, 7])
    workload = build_workload(short_contexts, 1.0, 4096, "model", prompts=prompts)
    # The trace's outputs are replaced by recorded answers; tiny contexts take the prompt's own
    # length; what the gateway believes comes from the model, not from the answer.
    assert not np.array_equal(workload.output_tokens, [7, 7, 7, 7])
    assert set(workload.output_tokens) <= set(prompts.output_tokens.tolist())
    assert set(workload.prompt_tokens) <= set(prompts.prompt_tokens.tolist())
    assert set(workload.predicted_tokens) <= set(prompts.predicted_tokens.tolist())
    padded = build_workload(trace([0], prompts=[3000], outputs=[7]), 1.0, 4096, "model",
                            prompts=prompts)  # fmt: skip
    assert padded.prompt_tokens[0] + padded.output_tokens[0] <= 4096
    with pytest.raises(ValueError, match="AlpacaEval"):
        build_workload(short_contexts, 1.0, 4096, "model")


def test_the_live_replay_sends_its_promises_as_headers():
    from throttllem.replay.live import slo_headers
    from throttllem.replay.simulate import Slo

    assert slo_headers(Slo(1.0, 0.06)) == {"x-slo-ttft-ms": "1000", "x-slo-tpot-ms": "60"}
    assert slo_headers(Slo(2.0, 0.2, 37.5))["x-slo-e2e-ms"] == "37500"
