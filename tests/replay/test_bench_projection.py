"""`throttllem bench projection` on a short slice: with the true lengths, the projection's
batch and KV cache are the twin's exactly, and its first tokens land within the target."""

from __future__ import annotations

import json

from predictor.board import SchedulerPolicy
from tests.data import shared_data
from throttllem.bench.projection import TARGETS, ProjectionOptions, bench_projection


def test_the_projection_bench_finds_the_twins_batch_and_cache_exactly(tmp_path, capsys):
    options = ProjectionOptions(
        trace=shared_data("traces/AzureLLMInferenceTrace_conv.csv"),
        rate=2.5,
        duration_s=60.0,
        every_s=5.0,
        scheduler_policies=(SchedulerPolicy.GUARANTEED_NO_EVICT,),
    )
    report = bench_projection(options, tmp_path / "projection.json")
    row = report["by_scheduler_policy"]["guaranteed_no_evict"]
    assert row["projections"] >= 10
    assert row["iterations_compared"] > 1000
    assert row["batch_error_pct"] == 0.0
    assert row["kv_error_pct"] == 0.0
    assert row["first_token_requests"] > 0
    assert row["first_token_mae_ms"] <= TARGETS["first_token_mae_ms"]
    assert json.loads((tmp_path / "projection.json").read_text()) == report
    assert "| guaranteed_no_evict |" in capsys.readouterr().out
