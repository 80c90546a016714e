"""The online correction fixing a 10 %-optimistic performance model, on the twin in virtual time."""

from throttllem.bench.correction_demo import run


def miss_share(rows, from_second: int) -> float:
    later = [r for r in rows if r.second >= from_second]
    return sum(r.tbt_misses for r in later) / sum(r.iterations for r in later)


def test_an_optimistic_model_misses_until_the_correction_learns_and_then_mostly_does_not():
    uncorrected = run(optimism=0.10, correct=False, seconds=12)
    corrected = run(optimism=0.10, correct=True, seconds=12)
    assert miss_share(uncorrected, 2) > 0.8  # too low a clock, iteration after iteration
    assert miss_share(corrected, 2) < 0.15  # within two seconds the clock has risen
    assert corrected[-1].correction > 1.08
    assert max(r.mean_clock_mhz for r in corrected[2:]) > max(
        r.mean_clock_mhz for r in uncorrected[2:]
    )
