import pytest

from simulator.profile import UnknownProfileError, available_profiles, load_profile

PAPER_SET = {
    "a100-40gb/llama-3-8b/tp1",
    "a100-40gb/llama-2-13b/tp1",
    "a100-40gb/llama-2-13b/tp2",
    "a100-40gb/llama-2-13b/tp4",
    "a100-40gb/llama-3-70b/tp8",
    "h100-80gb/llama-3.1-8b/tp1",
}


def test_every_profile_of_the_paper_and_the_h100_is_there():
    assert set(available_profiles()) >= PAPER_SET


@pytest.mark.parametrize("name", sorted(PAPER_SET))
def test_every_profile_loads_and_fits_at_least_one_full_context(name: str):
    profile = load_profile(name)
    assert profile.gpu.max_clock_mhz > profile.gpu.min_clock_mhz
    assert (
        profile.kv_capacity_blocks * profile.tokens_per_block >= profile.model.context_window_tokens
    )


def test_kv_bytes_per_token_follow_the_public_configs():
    # 2 (K and V) x layers x KV heads x head dim x 2 bytes
    assert load_profile("a100-40gb/llama-2-13b/tp1").model.kv_bytes_per_token == 819_200
    assert load_profile("a100-40gb/llama-3-70b/tp8").model.kv_bytes_per_token == 327_680
    assert load_profile("a100-40gb/llama-3-8b/tp1").model.kv_bytes_per_token == 131_072


def test_more_gpus_leave_more_room_for_the_kv_cache():
    blocks = [load_profile(f"a100-40gb/llama-2-13b/tp{n}").kv_capacity_blocks for n in (1, 2, 4)]
    assert blocks == sorted(blocks)
    assert blocks[0] < blocks[1] < blocks[2]


def test_the_h100_profile_has_the_128k_context_window():
    assert load_profile("h100-80gb/llama-3.1-8b/tp1").model.context_window_tokens == 131_072


def test_an_unknown_profile_names_the_known_ones():
    with pytest.raises(UnknownProfileError, match="a100-40gb/llama-2-13b/tp2"):
        load_profile("a100-40gb/llama-2-13b/tp3")
