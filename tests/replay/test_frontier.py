"""`throttllem frontier` at a reduced size: the grid's JSON, summary and plots, and its
refusals."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.data import shared_data
from throttllem.cli import main
from throttllem.replay.frontier import PEERS, marks
from throttllem.replay.report import write_json

POLICY_FIELDS = {"energy_j", "output_tokens", "tokens_per_j", "slo_attainment", "ttft_ms",
                 "tbt_ms", "e2e_ms", "queue_ms", "mean_freq_mhz", "mean_gpus", "requests",
                 "truncated", "misses", "wall_s", "clock"}  # fmt: skip
CELL_FIELDS = {"trace", "profile", "slo", "load", "capacity_rps", "rate_rps", "policies",
               "throttllem_within_1pp", "throttllem_wins", "oracle_share", "goodput"}  # fmt: skip


@pytest.fixture(scope="module")
def frontier_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, str]:
    trace = shared_data("traces/AzureLLMInferenceTrace_conv.csv")
    alpaca_eval = shared_data("alpaca_eval/llama-2-13b-chat-hf.json").parent
    out = tmp_path_factory.mktemp("frontier")
    command = ["frontier", "--traces", str(trace), "--profiles", "a100-40gb/llama-2-13b/tp2",
               "--loads", "0.5,1.0", "--duration-s", "120", "--alpaca-eval", str(alpaca_eval),
               "--workers", "2", "--out", str(out)]  # fmt: skip
    assert main(command) == 0
    return json.loads((out / "frontier.json").read_text()), out, (out / "frontier.md").read_text()


def test_every_cell_has_every_field_and_every_policy(frontier_run: tuple[dict, Path, str]):
    report, _, _ = frontier_run
    cells = report["cells"]
    assert [(c["slo"], c["load"]) for c in cells] == [
        ("paper", 0.5), ("paper", 1.0), ("interactive", 0.5), ("interactive", 1.0)
    ]  # fmt: skip
    for cell in cells:
        assert set(cell) >= CELL_FIELDS
        assert set(cell["policies"]) == set(report["grid"]["policies"])
        assert cell["rate_rps"] == pytest.approx(cell["load"] * cell["capacity_rps"], rel=0.05)
        tokens = {p["output_tokens"] for p in cell["policies"].values()}
        assert len(tokens) == 1  # identical work
        for policy in cell["policies"].values():
            assert set(policy) >= POLICY_FIELDS
            misses = policy["misses"]
            assert misses["missed"] == round((1 - policy["slo_attainment"]) * policy["requests"])
            assert sum(misses["ttft_by_cause"].values()) == misses["by_promise"]["ttft"]
            assert max(misses["by_promise"].values()) <= misses["missed"]
        assert cell["policies"]["throttllem"]["misses"]["predicted_too_short"] is not None
        assert cell["policies"]["max"]["misses"]["predicted_too_short"] is None
        assert cell["policies"]["power-cap-best"]["clock"].startswith("power-cap:")
        assert cell["policies"]["static-best"]["clock"].startswith("static:")
        assert cell["policies"]["max-largest"]["mean_gpus"] == pytest.approx(4)  # TP4
        largest_j = cell["policies"]["max-largest"]["energy_j"]
        scaled_j = cell["policies"]["throttllem+scale"]["energy_j"]
        assert cell["scale_vs_largest_energy_pct"] == pytest.approx(
            (scaled_j / largest_j - 1) * 100
        )


def test_the_capacity_is_the_highest_rate_at_which_max_keeps_99_percent(
    frontier_run: tuple[dict, Path, str],
):
    report, _, _ = frontier_run
    for cell in report["cells"]:
        goodput = cell["goodput"]
        probes = goodput["probes"]
        kept = [p["rate_rps"] for p in probes if p["slo_attainment"] >= 0.99]
        missed = [p["rate_rps"] for p in probes if p["slo_attainment"] < 0.99]
        assert goodput["capacity_rps"] == max(kept)
        above = [rate for rate in missed if rate > goodput["capacity_rps"]]
        assert above and min(above) <= goodput["capacity_rps"] * 1.03  # a tight bracket
    paper, interactive = report["cells"][0], report["cells"][2]
    assert paper["promises"]["e2e_ms"] > 0 and interactive["promises"]["e2e_ms"] is None
    assert (
        interactive["promises"]["ttft_ms"] == 1000
        and "1.5 x" in interactive["promises"]["derivation"]
    )


def test_a_summary_and_a_plot_per_cell(frontier_run: tuple[dict, Path, str]):
    report, out, summary = frontier_run
    assert len(report["plots"]) == len(report["cells"])
    for plot in report["plots"]:
        picture = out / plot
        assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert picture.stat().st_size > 10_000
    assert "| load | req/s | max |" in summary and "wins" in summary
    assert summary.count("\n### ") + summary.startswith("### ") == 2  # one table per regime


def _policy(energy_j: float, attainment: float) -> dict[str, float]:
    """A policy's report, as far as marks() reads it."""
    return {"energy_j": energy_j, "slo_attainment": attainment}


def test_a_win_is_the_least_energy_of_every_peer_within_1pp():
    policies = {"max": _policy(100, 0.99), "static-best": _policy(70, 0.985),
                "reactive": _policy(50, 0.95), "throttllem": _policy(60, 0.982),
                "oracle": _policy(40, 0.99)}  # fmt: skip
    standing = marks(policies)
    assert standing["throttllem_within_1pp"] and standing["throttllem_wins"]
    assert standing["best_peer"] == "static-best"  # reactive misses too many to count
    assert standing["oracle_share"] == pytest.approx(40 / 60)
    assert standing["attainment_gap_pp"] == pytest.approx(-0.8)
    policies["throttllem"] = _policy(75, 0.99)
    assert marks(policies)["throttllem_within_1pp"] and not marks(policies)["throttllem_wins"]
    policies["throttllem"] = _policy(10, 0.97)
    assert not marks(policies)["throttllem_within_1pp"] and not marks(policies)["throttllem_wins"]
    assert "oracle" not in PEERS and "throttllem" not in PEERS


def test_scaling_is_measured_against_max_on_the_largest_size_without_throttllem_too():
    policies = {"max": _policy(100, 0.99), "max-largest": _policy(200, 1.0),
                "throttllem+scale": _policy(50, 0.995)}  # fmt: skip
    standing = marks(policies)
    assert standing["scale_vs_largest_energy_pct"] == pytest.approx(-75.0)
    assert standing["scale_vs_largest_gap_pp"] == pytest.approx(-0.5)
    assert "scale_vs_largest_energy_pct" not in marks({"max": _policy(100, 0.99)})


def test_marks_and_the_json_take_numpy_values(tmp_path: Path):
    policies = {"max": _policy(np.float64(100), 0.99), "throttllem": _policy(np.float64(60), 0.99),
                "reactive": _policy(np.float64(70), 0.99)}  # fmt: skip
    standing = marks(policies)
    assert standing["throttllem_wins"] is True and standing["throttllem_within_1pp"] is True
    write_json({"energy_j": np.float64(1.5), "met": np.bool_(True), "gap": math.nan},
               tmp_path / "r.json")  # fmt: skip
    assert json.loads((tmp_path / "r.json").read_text()) == {"energy_j": 1.5, "met": True,
                                                              "gap": None}  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--profiles", "a100-40gb/llama-9-1b/tp1"], "profile"),
        (["--loads", "0.5,0"], "positive"),
        (["--loads", "-1"], "positive"),
        (["--traces", "no/such/trace.csv"], "no trace"),
        (["--slo", "relaxed"], "SLO regime"),
        (["--policies", "max,fastest"], "unknown policy"),
    ],
)
def test_bad_flags_get_one_line_and_exit_2(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
):
    trace = shared_data("traces/AzureLLMInferenceTrace_conv.csv")
    command = ["frontier", "--traces", str(trace), "--out", str(tmp_path), *flags]
    assert main(command) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
    assert not (tmp_path / "frontier.json").exists()
