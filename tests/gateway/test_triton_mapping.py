import pytest

from gateway.backends.base import GenerationRequest
from gateway.backends.triton import _chunk, _ensemble_inputs
from gateway.errors import BackendError


def test_openai_fields_map_to_ensemble_inputs():
    inputs = _ensemble_inputs(
        GenerationRequest(
            prompt="hi",
            max_tokens=32,
            temperature=0.5,
            top_p=0.9,
            stop=["\\n"],
            seed=7,
            ignore_eos=True,
        )
    )
    assert inputs == {
        "text_input": "hi",
        "max_tokens": 32,
        "stream": True,
        "return_num_input_tokens": True,
        "return_num_output_tokens": True,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop_words": ["\\n"],
        "seed": 7,
        "min_tokens": 32,
    }


def test_unset_sampling_fields_are_left_to_the_engine():
    inputs = _ensemble_inputs(GenerationRequest(prompt="hi", max_tokens=4))
    assert set(inputs) == {
        "text_input",
        "max_tokens",
        "stream",
        "return_num_input_tokens",
        "return_num_output_tokens",
    }


def test_an_event_becomes_a_chunk_with_its_counts():
    chunk = _chunk('{"text_output":" hi","num_output_tokens":1,"num_input_tokens":5}')
    assert (chunk.text, chunk.output_tokens, chunk.prompt_tokens) == (" hi", 1, 5)


def test_an_in_stream_error_event_raises_with_the_last_line_of_the_message():
    with pytest.raises(BackendError, match="max_tokens must be positive"):
        _chunk(
            '{"error":"Traceback ...\\n  File x\\nBadRequestError: max_tokens must be positive"}'
        )


def test_an_event_that_is_not_json_raises():
    with pytest.raises(BackendError, match="not JSON"):
        _chunk("oops")
