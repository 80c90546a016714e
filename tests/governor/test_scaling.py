import pytest

from slo_planner.scaling import EngineSize, ScalingPolicy, parse_engine_sizes
from slo_scoreboard.scaling_channel import MemoryScalingChannel

TP1 = EngineSize("tp1", "ensemble-tp1", 2.0)
TP2 = EngineSize("tp2", "ensemble-tp2", 5.0)
TP4 = EngineSize("tp4", "ensemble-tp4", 9.0)


def policy(grace_s: float = 60.0) -> ScalingPolicy:
    return ScalingPolicy([TP4, TP1, TP2], headroom=0.8, grace_s=grace_s)


@pytest.mark.parametrize(
    ("rate_rps", "label"),
    [(0.0, "tp1"), (1.6, "tp1"), (1.61, "tp2"), (4.0, "tp2"), (4.1, "tp4"), (50.0, "tp4")],
)
def test_the_smallest_size_within_its_headroom_is_needed(rate_rps: float, label: str):
    assert policy().needed(rate_rps).label == label


def test_growing_is_immediate_and_may_skip_sizes():
    assert policy().target(6.0, TP1, now_s=0.0) is TP4


def test_shrinking_waits_for_a_whole_grace_period_of_low_rate():
    scaling = policy(grace_s=60.0)
    assert scaling.target(1.0, TP4, now_s=0.0) is TP4
    assert scaling.target(1.0, TP4, now_s=59.0) is TP4
    assert scaling.target(1.0, TP4, now_s=60.0) is TP1


def test_a_burst_during_the_grace_period_starts_it_again():
    scaling = policy(grace_s=60.0)
    scaling.target(1.0, TP4, now_s=0.0)
    assert scaling.target(8.0, TP4, now_s=30.0) is TP4  # needs TP4 again
    assert scaling.target(1.0, TP4, now_s=50.0) is TP4
    assert scaling.target(1.0, TP4, now_s=100.0) is TP4
    assert scaling.target(1.0, TP4, now_s=110.0) is TP1


def test_engine_sizes_are_read_from_json_and_sorted_by_capacity():
    text = (
        '[{"label": "tp4", "triton_model": "e4", "capacity_rps": 9},'
        ' {"label": "tp1", "triton_model": "e1", "capacity_rps": 2}]'
    )
    assert [size.label for size in parse_engine_sizes(text)] == ["tp1", "tp4"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "JSON list"),
        ('[{"label": "tp1"}]', "capacity_rps"),
        ('[{"label": "a", "triton_model": "m", "capacity_rps": 0}]', "positive"),
        ('[{"label": "a", "triton_model": "m", "capacity_rps": 1},'
         ' {"label": "a", "triton_model": "n", "capacity_rps": 2}]', "distinct"),
    ],
)  # fmt: skip
def test_bad_engine_sizes_are_refused_with_the_reason(text: str, message: str):
    with pytest.raises(ValueError, match=message):
        parse_engine_sizes(text)


def test_a_policy_needs_sizes_and_a_sane_headroom():
    with pytest.raises(ValueError, match="at least one"):
        ScalingPolicy([])
    with pytest.raises(ValueError, match="headroom"):
        ScalingPolicy([TP1], headroom=1.5)


async def test_the_memory_channel_counts_and_routes():
    channel = MemoryScalingChannel()
    await channel.add_arrivals(3)
    await channel.add_arrivals(2)
    assert await channel.arrivals() == 5
    assert await channel.route() is None
    await channel.set_route("ensemble-tp2")
    assert await channel.route() == "ensemble-tp2"
