"""A very short `bench gateway`: the report has every figure; no timing is judged."""

import json
import math
from pathlib import Path

import pytest

from throttllem.bench.gateway import BenchOptions, bench_gateway, gateway_command


def test_a_short_run_reports_every_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    options = BenchOptions(
        rate_per_s=20, duration_s=0.3, stream_rate_per_s=10, warmup_s=0.1,
        compare_concurrency=4, compare_duration_s=0.4, compare_rounds=2, compare_workers=2,
    )  # fmt: skip
    bench_gateway(tmp_path / "gateway.json", options)
    report = json.loads((tmp_path / "gateway.json").read_text())
    assert set(report) >= {"added_latency_ms", "stream_chunk_added_ms", "max_rps", "setting",
                           "direct_ms", "gateway_ms"}  # fmt: skip
    assert set(report["added_latency_ms"]) == {"p50", "p99"}
    assert math.isfinite(report["added_latency_ms"]["p50"])
    assert math.isfinite(report["stream_chunk_added_ms"]["p50"])
    assert report["max_rps"] == report["side_by_side"]["gateway"]["throughput_rps"] > 0
    assert set(report["side_by_side"]) == {"direct", "bare_proxy", "gateway", "gateway_aiohttp"}
    for server in report["side_by_side"].values():
        assert server["errors"] == 0, server["first_error"]
        assert 0 < server["c1_p50_ms"] <= server["c1_p99_ms"]
        assert server["throughput_rps"] > 0
    for ratios in report["against_bare_proxy"].values():
        assert ratios["c1_p50_ratio"] > 0 and ratios["throughput_ratio"] > 0
    assert isinstance(report["library_client"]["library_within"], bool)
    assert report["setting"]["compare_scoreboard"].startswith("redis ")
    for side in ("direct_ms", "gateway_ms"):
        assert report[side]["p50"] > 0
        assert report[side]["p99"] >= report[side]["p50"]
        assert report[side]["stream_token_trip_p50"] > 0
        # Every timed stream gave all its tokens, merged or not.
        assert report[side]["stream_tokens"] > 0
        assert report[side]["stream_tokens"] % report["setting"]["stream_max_tokens"] == 0
        assert report[side]["requests"] > 0
        assert report[side]["errors"] == 0
    assert report["setting"]["rate_per_s"] == 20
    out = capsys.readouterr().out
    assert "latency p99 ms" in out and "bare FastAPI+httpx proxy" in out


def test_more_workers_are_asked_of_serve_with_its_flag():
    assert gateway_command(9000, workers=2)[-2:] == ["--workers", "2"]
    assert "--workers" not in gateway_command(9000)
