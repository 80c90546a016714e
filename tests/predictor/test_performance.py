"""The performance pipeline on small data: virtual profile -> LightGBM -> ONNX -> table."""

from pathlib import Path

import numpy as np
import pytest

from predictor.errors import ModelFileError
from predictor.performance import MAX_TABLE_BYTES, PerformanceModel, PerformanceTable
from predictor.training.performance import train_performance
from throttllem.profiler import COLUMNS, profile_virtual, read_rows, write_rows


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("performance")
    rows = profile_virtual("a100-40gb/llama-3-8b/tp1", output_tokens=64, batch_step=3, passes=6)
    write_rows(folder / "profile.csv", rows)
    report = train_performance(
        folder / "profile.csv", folder / "model.onnx", folder / "report.json"
    )
    return folder / "model.onnx", report


def test_the_profile_csv_has_the_documented_columns(tmp_path: Path):
    rows = profile_virtual("a100-40gb/llama-2-13b/tp1", output_tokens=32, batch_step=8)
    write_rows(tmp_path / "p.csv", rows)
    assert (tmp_path / "p.csv").read_text().splitlines()[0] == ",".join(COLUMNS)
    idle, first = read_rows(tmp_path / "p.csv")[:2]
    assert (idle.batch, idle.ips) == (0, 0.0)  # the GPUs idle, for the power model
    assert idle.power_w == pytest.approx(rows[0].power_w, abs=1e-3)
    assert (first.tp, first.batch, first.kv_blocks, first.freq_mhz) == (
        1,
        1,
        rows[1].kv_blocks,
        rows[1].freq_mhz,
    )
    assert first.ips == pytest.approx(rows[1].ips, abs=1e-4)
    assert {row.batch for row in rows[1:]} == {1, 9, 17, 25, 32}
    assert all(row.ips > 0 and 210 <= row.freq_mhz <= 1410 for row in rows[1:])


def test_the_report_has_the_papers_table_for_both_splits(trained):
    _, report = trained
    assert set(report["splits"]) == {"90/10", "10/90"}
    for split in report["splits"].values():
        assert {"r2", "mape_pct", "mae_ips"} <= set(split)
        assert split["r2"] > 0.95
        assert split["mape_pct"] < 5


def test_the_table_agrees_with_the_onnx_model(trained):
    model = PerformanceModel(trained[0])
    table = PerformanceTable.from_model(model, kv_buckets=32)
    assert table.nbytes <= MAX_TABLE_BYTES
    rng = np.random.default_rng(1)
    batch = rng.integers(1, model.grid.max_batch + 1, 500)
    bucket = rng.integers(0, table.ips_table.shape[1], 500)
    clock = rng.integers(0, len(table.clocks_mhz), 500)
    kv_blocks = np.array([table.kv_point(b) for b in bucket])
    exact = model.ips(
        np.column_stack([np.full(500, model.grid.tp), batch, kv_blocks, table.clocks_mhz[clock]])
    )
    looked_up = np.array(
        [table.ips(b, int(k), c) for b, k, c in zip(batch, kv_blocks, clock, strict=True)]
    )
    np.testing.assert_allclose(looked_up, exact, rtol=1e-5)


def test_lookups_are_vectorised_and_clamped_to_the_grid(trained):
    table = PerformanceTable.from_model(PerformanceModel(trained[0]), kv_buckets=16)
    top = table.clock_index(int(table.clocks_mhz[-1]))
    values = table.ips(np.array([1, 10_000]), np.array([0, 10**9]), top)
    assert values.shape == (2,)
    assert values[0] == table.ips_table[0, 0, top]
    assert values[1] == table.ips_table[-1, -1, top]
    with pytest.raises(ValueError, match="not on the profiled grid"):
        table.clock_index(1000)


def test_higher_clocks_predict_more_iterations_per_second(trained):
    table = PerformanceTable.from_model(PerformanceModel(trained[0]), kv_buckets=16)
    assert table.ips(8, 50, len(table.clocks_mhz) - 1) > table.ips(8, 50, 0)


def test_a_missing_or_corrupt_model_file_is_named(tmp_path: Path):
    with pytest.raises(ModelFileError, match=r"nothing\.onnx: not found"):
        PerformanceModel(tmp_path / "nothing.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not an onnx model")
    with pytest.raises(ModelFileError, match=r"corrupt\.onnx"):
        PerformanceModel(corrupt)
