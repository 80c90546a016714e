import json
from pathlib import Path
from typing import Any

import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import ValidationError

from gateway.chat_schemas import (
    ChatCompletionRequest,
    chat_chunk,
    chat_completion,
    chat_usage_chunk,
    new_chat_id,
)
from gateway.chat_template import ChatTemplate
from gateway.schemas import usage

SYSTEM_AND_USER = [
    {"role": "system", "content": "  You are terse.\n"},
    {"role": "user", "content": "What is 2+2? "},
]

LLAMA3_EXPECTED = (
    "<|begin_of_text|>"
    "<|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)

SIMPLE_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}\n"
    "[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}\n"
    "{% endfor %}\n"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)


def request(**fields: Any) -> ChatCompletionRequest:
    body: dict[str, Any] = {"model": "llama-3", "messages": SYSTEM_AND_USER, **fields}
    return ChatCompletionRequest.model_validate(body)


def test_llama3_renders_a_system_and_user_conversation_exactly():
    assert ChatTemplate.llama3().render(request().messages) == LLAMA3_EXPECTED


def test_llama3_without_the_generation_prompt_and_developer_as_system():
    messages = request(messages=[{"role": "developer", "content": "Be kind."}]).messages
    rendered = ChatTemplate.llama3().render(messages, add_generation_prompt=False)
    assert rendered == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe kind.<|eot_id|>"
    )


def test_text_parts_are_joined_into_one_content():
    parts = [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]
    chat = request(messages=[{"role": "user", "content": parts}])
    assert chat.messages[0].content == "first\nsecond"
    assert chat.template_messages == [{"role": "user", "content": "first\nsecond"}]


def test_a_jinja_file_loads_and_renders(tmp_path: Path):
    path = tmp_path / "chat.jinja"
    path.write_text(SIMPLE_TEMPLATE)
    template = ChatTemplate.from_file(path)
    assert template.render([{"role": "user", "content": "hi"}]) == "[user] hi\n[assistant] "


def test_a_tokenizer_config_loads_with_its_special_tokens(tmp_path: Path):
    path = tmp_path / "tokenizer_config.json"
    config = {
        "bos_token": "<s>",
        "eos_token": {"__type": "AddedToken", "content": "</s>", "special": True},
        "chat_template": SIMPLE_TEMPLATE,
    }
    path.write_text(json.dumps(config))
    template = ChatTemplate.from_file(path)
    assert template.render([{"role": "user", "content": "hi"}]) == "<s>[user] hi</s>\n[assistant] "


def test_a_tokenizer_config_with_named_templates_uses_the_default(tmp_path: Path):
    path = tmp_path / "tokenizer_config.json"
    named = [
        {"name": "tool_use", "template": "tools"},
        {"name": "default", "template": "plain: {{ messages[0]['content'] }}"},
    ]
    path.write_text(json.dumps({"chat_template": named}))
    assert ChatTemplate.from_file(path).render([{"role": "user", "content": "x"}]) == "plain: x"


def test_a_tokenizer_config_without_a_template_is_refused_naming_the_file(tmp_path: Path):
    path = tmp_path / "tokenizer_config.json"
    path.write_text(json.dumps({"bos_token": "<s>"}))
    with pytest.raises(ValueError, match=r"tokenizer_config\.json: no 'chat_template'"):
        ChatTemplate.from_file(path)


def test_a_syntax_error_is_refused_at_load_naming_the_file_and_line(tmp_path: Path):
    path = tmp_path / "broken.jinja"
    path.write_text("{% for m in messages %}\n{{ m['content'] }}\n{% endif %}\n")
    with pytest.raises(ValueError, match=r"broken\.jinja, line 3"):
        ChatTemplate.from_file(path)


def test_raise_exception_in_a_template_surfaces_as_value_error_on_render():
    template = ChatTemplate(
        "{% if messages[0]['role'] != 'user' %}"
        "{{ raise_exception('the first message must be the user') }}"
        "{% endif %}{{ messages[0]['content'] }}"
    )
    assert template.render([{"role": "user", "content": "ok"}]) == "ok"
    with pytest.raises(ValueError, match="the first message must be the user"):
        template.render([{"role": "assistant", "content": "no"}])


def test_the_immutable_sandbox_refuses_mutation_as_value_error():
    template = ChatTemplate("{{ messages.append(1) }}")
    with pytest.raises(ValueError, match="attribute 'append' of 'list' object is unsafe"):
        template.render([{"role": "user", "content": "x"}])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"n": 2}, "only n=1 is supported"),
        ({"messages": []}, "messages must not be empty"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "Input should be 'system', 'developer'"),
        ({"logit_bias": {"1": 5}}, "Extra inputs are not permitted"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "http://x"}}],
                    }
                ]
            },
            "content part type 'image_url' is not supported",
        ),
        ({"max_tokens": 8, "max_completion_tokens": 9}, "disagree"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "at most 4 stop sequences"),
        ({"max_completion_tokens": 0}, "greater than or equal to 1"),
    ],
)
def test_invalid_requests_are_refused(fields: dict[str, Any], message: str):
    with pytest.raises(ValidationError, match=message):
        request(**fields)


@pytest.mark.parametrize(
    ("fields", "asked"),
    [
        ({}, None),
        ({"max_tokens": 7}, 7),
        ({"max_completion_tokens": 9}, 9),
        ({"max_tokens": 5, "max_completion_tokens": 5}, 5),
    ],
)
def test_max_tokens_asked_under_either_name(fields: dict[str, Any], asked: int | None):
    assert request(**fields).max_tokens_asked == asked


def test_stop_sequences_and_include_usage():
    assert request().stop_sequences == []
    assert request(stop="\n").stop_sequences == ["\n"]
    assert not request(stream=True).include_usage
    assert request(stream=True, stream_options={"include_usage": True}).include_usage


def test_a_chat_completion_parses_as_openai_s_type():
    chat_id = new_chat_id()
    body = chat_completion(chat_id, "llama-3", "4.", "stop", usage(12, 3), created_s=100)
    assert chat_id.startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "4."}
    parsed = ChatCompletion.model_validate(body)
    assert parsed.id == chat_id
    assert parsed.created == 100
    assert parsed.choices[0].finish_reason == "stop"
    assert parsed.choices[0].message.content == "4."
    assert parsed.usage is not None
    assert parsed.usage.total_tokens == 15


def test_a_streamed_chat_parses_chunk_by_chunk_as_openai_s_type():
    chat_id = new_chat_id()
    chunks = [
        chat_chunk(chat_id, "llama-3", {"role": "assistant", "content": ""}, None, 100),
        chat_chunk(chat_id, "llama-3", {"content": "4"}, None, 100),
        chat_chunk(chat_id, "llama-3", {"content": "."}, None, 100),
        chat_chunk(chat_id, "llama-3", {}, "length", 100),
        chat_usage_chunk(chat_id, "llama-3", usage(12, 2), 100),
    ]
    parsed = [ChatCompletionChunk.model_validate(chunk) for chunk in chunks]
    assert all(chunk.object == "chat.completion.chunk" for chunk in parsed)
    assert parsed[0].choices[0].delta.role == "assistant"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in parsed[:-1])
    assert text == "4."
    assert [chunk.choices[0].finish_reason for chunk in parsed[:-1]] == [None, None, None, "length"]
    assert parsed[-1].choices == []
    assert parsed[-1].usage is not None
    assert parsed[-1].usage.completion_tokens == 2
