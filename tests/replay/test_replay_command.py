"""`throttllem replay` end to end: a short slice, every policy, the fixed JSON."""

import json
from pathlib import Path

import pytest

from tests.data import shared_data
from throttllem.cli import main

POLICIES = "max,static:1050,static-best,reactive,throttllem,throttllem+scale,oracle"
SUMMARY = {"p50", "p90", "p99", "mean"}


@pytest.mark.parametrize("lengths", ["noisy:0.3", "model"])
def test_a_short_replay_of_every_policy_writes_the_fixed_json(
    lengths: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    trace = shared_data("traces/AzureLLMInferenceTrace_conv.csv")
    alpaca_eval = shared_data("alpaca_eval/llama-2-13b-chat-hf.json").parent
    out = tmp_path / "replay.json"
    command = ["replay", "--trace", str(trace), "--duration-s", "60", "--policies", POLICIES,
               "--lengths", lengths, "--alpaca-eval", str(alpaca_eval), "--json", str(out),
               "--plots", str(tmp_path / "plots")]  # fmt: skip
    assert main(command) == 0
    report = json.loads(out.read_text())
    pictures = [Path(path) for path in report["plots"]]
    assert sorted(path.name for path in pictures) == ["clock_power.png", "energy.png",
                                                      "latency_cdfs.png"]  # fmt: skip
    for picture in pictures:
        assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert picture.stat().st_size > 10_000  # drawn, not an empty canvas
    assert {"engine", "trace", "rate_rps", "capacity_rps", "slo", "policies"} <= set(report)
    assert report["trace"]["lengths"] == lengths
    assert report["slo"]["tbt_ms"] == 200
    assert report["slo"]["e2e_ms"] > 0 and "p99" in report["slo"]["derivation"]
    assert report["rate_rps"] > 0 and report["capacity_rps"] > 0
    policies = report["policies"]
    assert list(policies) == POLICIES.split(",")
    tokens = {p["output_tokens"] for p in policies.values()}
    assert len(tokens) == 1  # identical work
    for policy in policies.values():
        assert {"energy_j", "output_tokens", "tokens_per_j", "slo_attainment", "ttft_ms",
                "tbt_ms", "e2e_ms", "mean_freq_mhz", "mean_gpus", "requests", "truncated",
                "wall_s"} <= set(policy)  # fmt: skip
        assert set(policy["ttft_ms"]) == set(policy["e2e_ms"]) == SUMMARY
        assert 0 <= policy["slo_attainment"] <= 1
    assert policies["static-best"]["clock"].startswith("static:")
    assert policies["max"]["energy_j"] > policies["static:1050"]["energy_j"]
    assert policies["max"]["mean_gpus"] == pytest.approx(2)  # TP2
    sizes = [size["label"] for size in report["scaling"]["sizes"]]
    assert sorted(sizes) == ["tp1", "tp2", "tp4"]
    assert all(size["capacity_rps"] > 0 for size in report["scaling"]["sizes"])
    table = capsys.readouterr().out
    assert "| policy | energy kJ |" in table and "| oracle |" in table


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--live", "http://127.0.0.1:9"], "no gateway answers"),
        (["--rate", "fast"], "peak or a number"),
        (["--policies", "fastest"], "unknown policy"),
        (["--lengths", "guess"], "unknown lengths"),
        (["--load", "0"], "positive"),
        (["--rate", "-2"], "positive"),
        (["--policies", "max,power-cap:20"], "power limit"),
    ],
)
def test_what_is_not_there_is_refused_clearly(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
):
    trace = shared_data("traces/AzureLLMInferenceTrace_conv.csv")
    assert main(["replay", "--trace", str(trace), "--duration-s", "5", *flags]) == 2
    assert message in capsys.readouterr().err
