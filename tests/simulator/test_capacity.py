import numpy as np
import pytest

from simulator.capacity import engine_sizes_json, length_mix, saturated_capacity_rps
from simulator.profile import load_profile
from simulator.traces import read_azure_trace
from slo_planner.scaling import parse_engine_sizes
from tests.data import shared_data

SIZES = ["a100-40gb/llama-2-13b/tp1", "a100-40gb/llama-2-13b/tp2", "a100-40gb/llama-2-13b/tp4"]


@pytest.fixture(scope="module")
def mix() -> tuple[np.ndarray, np.ndarray]:
    trace = read_azure_trace(shared_data("traces/AzureLLMInferenceTrace_conv.csv"))
    return length_mix(trace, requests=600)


def test_bigger_engines_carry_more_requests(mix: tuple[np.ndarray, np.ndarray]):
    capacities = [saturated_capacity_rps(load_profile(name), *mix) for name in SIZES]
    assert 0 < capacities[0] < capacities[1] < capacities[2]


def test_shorter_answers_mean_more_requests_per_second(mix: tuple[np.ndarray, np.ndarray]):
    prompts, outputs = mix
    profile = load_profile(SIZES[1])
    full = saturated_capacity_rps(profile, prompts, outputs)
    halved = saturated_capacity_rps(profile, prompts, np.maximum(1, outputs // 2))
    assert halved > full


def test_the_printed_sizes_are_what_the_settings_read():
    sizes = parse_engine_sizes(engine_sizes_json({SIZES[0]: 1.2, SIZES[2]: 9.87}))
    assert [(s.label, s.triton_model, s.capacity_rps) for s in sizes] == [
        ("tp1", "ensemble-tp1", 1.2),
        ("tp4", "ensemble-tp4", 9.87),
    ]


def test_too_few_requests_are_refused():
    with pytest.raises(ValueError, match="at least 20"):
        saturated_capacity_rps(load_profile(SIZES[0]), [100] * 5, [10] * 5)
