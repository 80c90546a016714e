"""The fault suite (tests/faults/suite.py) in `make test`: what must hold under each
fault. Its timings are printed, not asserted, except the promises themselves."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.faults.suite import CLIENTS, TOP_MHZ, FaultResult, print_table, run_suite


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, FaultResult]:
    found = asyncio.run(run_suite(Path(tmp_path_factory.mktemp("faults"))))
    print_table(found)
    return {result.fault.split(" ")[0] + " " + result.fault.split(" ")[1]: result
            for result in found}  # fmt: skip


def test_every_fault_leaves_nothing_on_the_scoreboard(results):
    assert {name: r.leaked_entries for name, r in results.items()} == dict.fromkeys(results, 0)


def test_no_request_is_lost_but_the_streams_of_a_killed_worker(results):
    for name, result in results.items():
        allowed = CLIENTS if name == "a gateway" else 0
        assert result.lost <= allowed, (name, result)


def test_the_clock_is_the_highest_while_redis_is_away_and_back_within_5_s(results):
    restart = results["Redis killed"]
    assert restart.lowest_mhz_untrusted == TOP_MHZ
    assert restart.recovery_s is not None and restart.recovery_s < 5.0


def test_a_dead_or_stalled_governor_has_the_default_clock_back_within_2_s(results):
    for name in ("governor stalled", "governor killed"):
        assert results[name].recovery_s is not None and results[name].recovery_s < 2.0, name


def test_the_board_holds_every_request_the_engine_holds_after_clients_leave(results):
    assert results["24 clients"].note.endswith(": 0")
