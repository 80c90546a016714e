import pytest

from predictor.tokenizer import PromptTokenizer
from simulator.profile import load_profile
from simulator.responses import LengthDistribution, Responses

TOKENIZER = PromptTokenizer.from_file()
LENGTHS = LengthDistribution(
    load_profile("a100-40gb/llama-2-13b/tp1").model.output_length_quantiles
)
RECORDED = {
    "Write a haiku about autumn leaves.": "Crimson leaves falling,\nwhispering to the cold ground:\nsummer says goodbye."
}


def responses() -> Responses:
    return Responses(TOKENIZER, LENGTHS, RECORDED)


def test_a_recorded_prompt_gets_its_recorded_answer_token_by_token():
    plan = responses().plan("Write a haiku about autumn leaves.", max_tokens=500)
    answer = RECORDED["Write a haiku about autumn leaves."]
    assert plan.recorded
    assert "".join(plan.pieces) == answer
    assert plan.output_tokens == TOKENIZER.count(answer)


def test_a_chat_template_around_a_recorded_instruction_still_finds_it():
    templated = "<|user|>\nWrite a haiku about autumn leaves.\n<|assistant|>\n"
    assert responses().plan(templated, max_tokens=500).recorded


def test_max_tokens_cuts_and_ignoring_eos_pads_the_recorded_answer():
    short = responses().plan("Write a haiku about autumn leaves.", max_tokens=5)
    assert short.output_tokens == 5
    padded = responses().plan("Write a haiku about autumn leaves.", max_tokens=300, min_tokens=300)
    assert padded.output_tokens == 300
    assert "".join(padded.pieces).startswith(RECORDED["Write a haiku about autumn leaves."])


def test_other_prompts_get_a_length_drawn_from_the_profile_seeded_by_the_prompt():
    plans = [responses().plan(f"question {i}", max_tokens=4000) for i in range(400)]
    assert not any(p.recorded for p in plans)
    lengths = sorted(p.output_tokens for p in plans)
    median = lengths[len(lengths) // 2]
    assert 298 * 0.8 <= median <= 298 * 1.2  # llama-2-13b-chat's recorded median: 298 tokens
    again = responses().plan("question 7", max_tokens=4000)
    assert again == plans[7]


def test_ignoring_eos_runs_to_max_tokens():
    assert responses().plan("anything", max_tokens=777, min_tokens=777).output_tokens == 777


def test_the_prompt_counts_a_bos_token():
    assert responses().prompt_tokens("Say hello") == TOKENIZER.count("Say hello") + 1


@pytest.mark.parametrize(("uniform", "tokens"), [(0.0, 11), (0.5, 298), (1.0, 1636)])
def test_the_length_distribution_passes_through_its_quantiles(uniform: float, tokens: int):
    assert LENGTHS.draw(uniform) == tokens


def test_an_unreadable_responses_file_is_named(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{")
    with pytest.raises(ValueError, match=r"broken\.json"):
        Responses.load_recorded(path)
