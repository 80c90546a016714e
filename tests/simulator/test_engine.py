import dataclasses
import time

import pytest

from simulator.engine import Engine, EngineRequest, RequestRejectedError
from simulator.physics import IterationModel
from simulator.profile import EngineProfile, load_profile

LLAMA_13B_TP1 = dataclasses.replace(load_profile("a100-40gb/llama-2-13b/tp1"), iteration_noise=0.0)


def make_engine(profile: EngineProfile = LLAMA_13B_TP1, **overrides) -> Engine:
    return Engine(dataclasses.replace(profile, **overrides) if overrides else profile)


def seq(
    name: str, prompt: int = 10, output: int = 3, max_tokens: int | None = None
) -> EngineRequest:
    return EngineRequest(
        name, prompt_tokens=prompt, max_tokens=max_tokens or output, output_tokens=output
    )


def run_to_completion(engine: Engine, now_s: float = 0.0) -> tuple[list, float]:
    results = []
    while engine.has_work:
        result = engine.step(now_s)
        results.append(result)
        now_s = result.ended_s
    return results, now_s


def test_every_running_request_emits_one_token_per_iteration_until_its_length():
    engine = make_engine()
    engine.submit(seq("a", output=3))
    engine.submit(seq("b", output=5))
    results, _ = run_to_completion(engine)
    assert [r.emitted for r in results] == [("a", "b")] * 3 + [("b",)] * 2
    assert [r.finished for r in results] == [(), (), ("a",), (), ("b",)]


def test_the_batch_never_exceeds_its_limit_and_waiting_requests_join_as_slots_free():
    engine = make_engine(max_batch_size=2)
    for name, length in [("a", 2), ("b", 4), ("c", 1)]:
        engine.submit(seq(name, output=length))
    results, _ = run_to_completion(engine)
    assert max(r.batch_size for r in results) == 2
    assert results[2].emitted == ("b", "c")  # c takes a's slot once a is done
    assert results[2].prefill_requests == 1


def test_prefill_runs_in_the_same_iteration_as_decode_and_costs_time():
    engine = make_engine()
    engine.submit(seq("a", prompt=100, output=4))
    engine.step(0.0)
    decode_only = engine.step(1.0)
    engine.submit(seq("b", prompt=1000, output=2))
    mixed = engine.step(2.0)
    assert mixed.emitted == ("a", "b")
    assert mixed.prefill_tokens == 1000
    assert mixed.duration_s > 3 * decode_only.duration_s


def test_kv_blocks_grow_one_per_64_tokens_and_are_freed_at_the_end():
    engine = make_engine()
    engine.submit(seq("a", prompt=63, output=130))
    engine.step(0.0)
    assert engine.kv_used_blocks == 1  # 63 prompt tokens + 1 generated = 64 tokens
    engine.step(0.1)
    assert engine.kv_used_blocks == 2  # the 65th token opens a second block
    for _ in range(127):
        engine.step(0.2)
    assert engine.kv_used_blocks == 3  # 63 + 129 = 192 tokens = 3 blocks
    engine.step(0.3)
    assert not engine.has_work
    assert engine.kv_used_blocks == 0


def small_cache_engine(**overrides) -> Engine:
    """About 20 KV blocks, so a few requests fill the cache."""
    engine = make_engine(kv_cache_free_gpu_mem_fraction=0.07, max_batch_size=64, **overrides)
    assert 10 <= engine.kv_capacity_blocks <= 40
    return engine


def test_guaranteed_no_evict_admits_only_what_fits_at_max_tokens():
    engine = small_cache_engine()
    per_request_blocks = engine.kv_capacity_blocks // 3 + 1  # two fit, a third does not
    for name in "abc":
        engine.submit(seq(name, prompt=64, output=2, max_tokens=64 * per_request_blocks - 64))
    first = engine.step(0.0)
    assert first.emitted == ("a", "b")  # though each will only ever use 2 blocks
    assert engine.waiting == 1


def test_max_utilization_admits_more_and_pauses_the_newest_when_the_cache_runs_out():
    engine = small_cache_engine(scheduler_policy="max_utilization")
    capacity = engine.kv_capacity_blocks
    prompt = 64 * (capacity // 2) - 1  # each takes half the cache and grows past it
    engine.submit(seq("a", prompt=prompt, output=10, max_tokens=10))
    engine.submit(seq("b", prompt=prompt, output=10, max_tokens=10))
    first = engine.step(0.0)
    assert first.emitted == ("a", "b")
    second = engine.step(1.0)
    assert second.paused == ("b",)
    assert second.emitted == ("a",)
    assert engine.kv_used_blocks <= capacity
    results, _ = run_to_completion(engine, 2.0)
    assert sorted(r for result in results for r in result.finished) == ["a", "b"]
    assert engine.kv_used_blocks == 0


def test_cancel_removes_a_request_whether_waiting_or_running():
    engine = make_engine(max_batch_size=1)
    engine.submit(seq("a", output=10))
    engine.submit(seq("b", output=10))
    engine.step(0.0)
    engine.cancel("a")
    engine.cancel("b")
    assert not engine.has_work
    assert engine.kv_used_blocks == 0


def test_requests_the_engine_can_never_serve_are_rejected_with_a_reason():
    engine = make_engine()
    window = LLAMA_13B_TP1.model.context_window_tokens
    with pytest.raises(RequestRejectedError, match="context window"):
        engine.submit(seq("a", prompt=window, output=1))
    with pytest.raises(RequestRejectedError, match="max_tokens"):
        engine.check(prompt_tokens=10, max_tokens=0)
    assert not engine.has_work


def test_iterations_are_slower_at_a_lower_clock_and_with_more_kv():
    model = IterationModel(LLAMA_13B_TP1)
    base = model.cost(16, 16 * 200, 0, 0, 1410).duration_s
    assert model.cost(16, 16 * 200, 0, 0, 600).duration_s > base
    assert model.cost(16, 16 * 2000, 0, 0, 1410).duration_s > base


def test_a_clock_switch_landing_mid_iteration_speeds_up_the_rest_of_it():
    """A GPU changes clock between kernels: a long prefill started at a low clock runs
    at the new clock once the switch lands, not at the old one to its end."""
    model = IterationModel(LLAMA_13B_TP1)
    slow_s = model.cost(0, 0, 3000, 3000 * 3000, 210).duration_s
    fast_s = model.cost(0, 0, 3000, 3000 * 3000, 1410).duration_s
    engine = make_engine()
    for gpu in engine.gpus:
        gpu.lock_clock(210, now_s=-1.0)  # in force well before the iteration starts
        gpu.lock_clock(1410, now_s=0.0)
    latency_s = LLAMA_13B_TP1.gpu.clock_switch_latency_s
    assert latency_s < slow_s  # the switch lands inside the iteration
    engine.submit(seq("long prompt", prompt=3000, output=1))
    first = engine.step(0.0)
    assert first.clock_mhz == 210
    done = latency_s / slow_s  # the share of its work done at the old clock
    assert first.duration_s == pytest.approx(latency_s + (1 - done) * fast_s)
    assert fast_s < first.duration_s < slow_s


def test_noise_is_seeded():
    profile = load_profile("a100-40gb/llama-2-13b/tp1")

    def durations(seed: int) -> list[float]:
        engine = Engine(profile, seed=seed)
        engine.submit(seq("a", output=20))
        return [r.duration_s for r in run_to_completion(engine)[0]]

    assert durations(1) == durations(1)
    assert durations(1) != durations(2)


def test_the_slowest_gpu_of_a_tensor_parallel_instance_paces_it():
    engine = make_engine(load_profile("a100-40gb/llama-2-13b/tp2"))
    assert len(engine.gpus) == 2
    engine.gpus[1].lock_clock(900, now_s=0.0)
    assert engine.clock_mhz(1.0) == 900


def test_virtual_time_never_sleeps(monkeypatch: pytest.MonkeyPatch):
    def no_sleep(seconds: float) -> None:
        raise AssertionError("the engine slept in virtual time")

    monkeypatch.setattr(time, "sleep", no_sleep)
    engine = make_engine()
    for index in range(32):
        engine.submit(seq(str(index), prompt=100, output=200))
    results, virtual_end_s = run_to_completion(engine)
    assert len(results) == 200
    assert virtual_end_s == pytest.approx(sum(r.duration_s for r in results))
