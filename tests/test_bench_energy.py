"""`throttllem bench energy`: the exact per-iteration shares it measures against, and one
short run end to end (the stack of `throttllem run`, the official client)."""

from __future__ import annotations

import pytest

from tests.data import shared_data
from throttllem.bench.energy import EnergyBenchOptions, bench_energy, exact_shares


def test_the_exact_shares_split_each_iteration_whole_and_an_empty_one_to_nobody():
    records = [
        {"started_s": 0.0, "ended_s": 0.1, "energy_j": 20.0, "held": ["a", "b", "c"],
         "emitted": ["a", "b"], "prefilled": [["b", 100]]},
        {"started_s": 0.1, "ended_s": 0.3, "energy_j": 11.0, "held": [], "emitted": [],
         "prefilled": []},
    ]  # fmt: skip
    shares = exact_shares(records, idle_power_w=50.0, prefill_weight=0.1)
    assert sum(s["active_j"] + s["idle_j"] for s in shares.values()) == pytest.approx(31.0)
    assert shares["a"]["active_j"] == pytest.approx(15.0 * 1 / 12)
    assert shares["b"]["active_j"] == pytest.approx(15.0 * 11 / 12)
    assert shares["c"] == {"active_j": 0.0, "idle_j": pytest.approx(5.0 / 3)}
    assert shares[""]["idle_j"] == pytest.approx(11.0)


def test_a_short_run_bills_every_answer_and_adds_up_to_the_counter(tmp_path):
    options = EnergyBenchOptions(
        profile="a100-40gb/llama-2-13b/tp1", streams=4, duration_s=4.0, max_tokens=64,
        alpaca_eval=shared_data("alpaca_eval/llama-2-13b-chat-hf.json"),
    )  # fmt: skip
    report = bench_energy(options, tmp_path / "energy.json")
    assert report["requests"] >= 4 and report["told_energy"] == report["requests"]
    assert abs(report["sum_error"]) < 0.03
    assert report["relative_error"]["p50"] < 0.05
    assert report["predicted"] > 0
    assert (tmp_path / "energy.json").exists()
