import pytest

from throttllem.profiler import SweepPlan, parse_trt_llm_metrics

PAGE = """# HELP nv_trt_llm_request_metrics TRT-LLM request metrics
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="scheduled",version="1"} 7
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="max",version="1"} 64
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="active",version="1"} 7
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="used",model="tensorrt_llm",version="1"} 120
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="max",model="tensorrt_llm",version="1"} 954
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="tokens_per",model="tensorrt_llm",version="1"} 64
nv_trt_llm_general_metrics{general_type="iteration_counter",model="tensorrt_llm",version="1"} 12345
nv_gpu_power_usage{gpu_uuid="GPU-1"} 250.5
"""


def test_the_tensorrt_llm_gauges_are_read_from_a_triton_metrics_page():
    metrics = parse_trt_llm_metrics(PAGE)
    assert (metrics.iterations, metrics.kv_used_blocks, metrics.kv_max_blocks) == (12345, 120, 954)
    assert (metrics.scheduled, metrics.max_batch, metrics.tokens_per_block) == (7, 64, 64)
    assert metrics.steady(7) and not metrics.steady(8)


def test_a_page_without_tensorrt_llm_metrics_is_refused():
    with pytest.raises(ValueError, match="TensorRT-LLM"):
        parse_trt_llm_metrics('nv_gpu_power_usage{gpu_uuid="GPU-1"} 250.5\n')


def test_the_sweep_keeps_every_batch_within_the_kv_cache():
    import random

    plan = SweepPlan(
        max_batch=64, kv_capacity_blocks=254, tokens_per_block=64, context_window_tokens=4096
    )
    assert plan.batch_sizes() == list(range(1, 65))
    rng = random.Random(0)
    for batch in (1, 16, 64):
        for fill in (0.0, 0.5, 1.0):
            prompts, output_tokens = plan.step_shape(rng, batch, fill)
            assert len(prompts) == batch and min(prompts) >= 1
            assert sum(-(-(p + output_tokens) // 64) for p in prompts) <= 254  # block by block
            assert all(p + output_tokens <= 4096 for p in prompts)
    assert plan.step_shape(rng, 64, 1.0)[1] < plan.output_tokens  # fewer tokens for a full cache


def test_each_batch_size_is_swept_from_an_empty_to_a_full_cache():
    import random

    plan = SweepPlan(max_batch=8, kv_capacity_blocks=300, tokens_per_block=64,
                     context_window_tokens=4096, passes=4)  # fmt: skip
    steps = plan.steps(random.Random(0))
    assert [batch for batch, _ in steps] == plan.batch_sizes() * 4
    for batch in plan.batch_sizes():  # one fill in each quarter of [0, 1]
        fills = sorted(fill for b, fill in steps if b == batch)
        assert [int(fill * 4) for fill in fills] == [0, 1, 2, 3]
    rng = random.Random(0)
    full = plan.step_shape(rng, 8, 1.0)
    assert sum(-(-(p + full[1]) // 64) for p in full[0]) == 300  # the whole cache
    one = plan.step_shape(rng, 1, 1.0)
    assert one[0][0] + one[1] > 4096 - 64  # one request: a full context window


def test_the_virtual_sweep_reaches_the_kv_capacity():
    from simulator.profile import load_profile
    from throttllem.profiler import profile_virtual

    profile = load_profile("a100-40gb/llama-2-13b/tp1")
    rows = profile_virtual("a100-40gb/llama-2-13b/tp1", output_tokens=64, batch_step=4, passes=4)
    kv_blocks = [row.kv_blocks for row in rows]
    assert max(kv_blocks) >= 0.95 * profile.kv_capacity_blocks
    assert min(kv_blocks) <= 0.1 * profile.kv_capacity_blocks  # and low fills as well
    assert max(kv_blocks) <= profile.kv_capacity_blocks
