import time

import pytest

from simulator.engine import Engine, Sequence, SimpleTiming
from simulator.gpu import A100_SXM4_40GB, SimulatedGpu


def make_engine(max_batch_size: int = 4) -> Engine:
    return Engine(gpu=SimulatedGpu(A100_SXM4_40GB), max_batch_size=max_batch_size)


def run_to_completion(engine: Engine, now_s: float = 0.0) -> tuple[list, float]:
    results = []
    while engine.has_work:
        result = engine.step(now_s)
        results.append(result)
        now_s = result.ended_s
    return results, now_s


def test_every_running_request_emits_one_token_per_iteration_until_its_length():
    engine = make_engine()
    engine.submit(Sequence("a", prompt_tokens=10, output_tokens=3))
    engine.submit(Sequence("b", prompt_tokens=10, output_tokens=5))
    results, _ = run_to_completion(engine)
    emitted = [r.emitted for r in results]
    assert emitted == [("a", "b")] * 3 + [("b",)] * 2
    assert [r.finished for r in results] == [(), (), ("a",), (), ("b",)]


def test_the_batch_never_exceeds_its_limit_and_waiting_requests_join_as_slots_free():
    engine = make_engine(max_batch_size=2)
    for name, length in [("a", 2), ("b", 4), ("c", 1)]:
        engine.submit(Sequence(name, prompt_tokens=5, output_tokens=length))
    results, _ = run_to_completion(engine)
    assert max(r.batch_size for r in results) == 2
    assert results[2].emitted == ("b", "c")  # c takes a's slot once a is done


def test_prefill_of_new_requests_runs_in_the_same_iteration_and_costs_time():
    timing = SimpleTiming()
    decode_only_s = timing.iteration_s([100], prefill_tokens=0, clock_mhz=1410, max_clock_mhz=1410)
    with_prefill_s = timing.iteration_s(
        [100], prefill_tokens=100, clock_mhz=1410, max_clock_mhz=1410
    )
    assert with_prefill_s > decode_only_s
    engine = make_engine()
    engine.submit(Sequence("a", prompt_tokens=100, output_tokens=2))
    first = engine.step(0.0)
    assert first.emitted == ("a",)  # the prefill iteration also yields the first token
    assert first.duration_s == pytest.approx(with_prefill_s)


def test_iterations_are_slower_at_a_lower_clock():
    timing = SimpleTiming()
    at_max_s = timing.iteration_s([500] * 8, 0, clock_mhz=1410, max_clock_mhz=1410)
    at_low_s = timing.iteration_s([500] * 8, 0, clock_mhz=705, max_clock_mhz=1410)
    assert at_low_s > at_max_s


def test_cancel_removes_a_request_whether_waiting_or_running():
    engine = make_engine(max_batch_size=1)
    engine.submit(Sequence("a", prompt_tokens=5, output_tokens=10))
    engine.submit(Sequence("b", prompt_tokens=5, output_tokens=10))
    engine.step(0.0)
    engine.cancel("a")
    engine.cancel("b")
    assert not engine.has_work


def test_virtual_time_never_sleeps(monkeypatch: pytest.MonkeyPatch):
    def no_sleep(seconds: float) -> None:
        raise AssertionError("the engine slept in virtual time")

    monkeypatch.setattr(time, "sleep", no_sleep)
    engine = make_engine(max_batch_size=64)
    for index in range(64):
        engine.submit(Sequence(str(index), prompt_tokens=100, output_tokens=200))
    results, virtual_end_s = run_to_completion(engine)
    assert len(results) == 200
    assert virtual_end_s == pytest.approx(sum(r.duration_s for r in results))


def test_a_sequence_must_generate_something():
    with pytest.raises(ValueError):
        make_engine().submit(Sequence("a", prompt_tokens=5, output_tokens=0))
