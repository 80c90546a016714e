"""Chat messages to prompt text, with a Hugging Face style Jinja chat template.

The template runs in Jinja's immutable sandbox with the settings and names that Hugging
Face's `apply_chat_template` gives it (`messages`, `add_generation_prompt`, `bos_token`,
`eos_token`, `raise_exception`, `strftime_now`, a non-escaping `tojson`), so a model's own
`tokenizer_config.json` template renders here as it does in `transformers`.

The default is Llama 3 Instruct's. Like Meta's official template, it writes the BOS text
`<|begin_of_text|>` into the prompt; Llama 3's tokenizer reads it as the special token.
Whether the inference server adds another BOS when it tokenizes is the server's business.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from gateway.chat_schemas import ChatMessage

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}"
    "{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
"""Meta's Llama 3 Instruct template, as in its `tokenizer_config.json`."""


class ChatTemplateError(ValueError):
    """A template that does not compile, or that refuses (`raise_exception`) or fails to render."""


def _raise_exception(message: str) -> NoReturn:
    raise ChatTemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson HTML-escapes, which would change the prompt text.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(date_format: str) -> str:
    return datetime.now().strftime(date_format)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


class ChatTemplate:
    """A compiled chat template; compiling at construction finds syntax errors at startup."""

    def __init__(
        self, source: str, *, bos_token: str = "", eos_token: str = "", origin: str = "<string>"
    ) -> None:
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.origin = origin
        try:
            self._template = _environment().from_string(source)
        except jinja2.TemplateSyntaxError as error:
            raise ChatTemplateError(
                f"chat template {origin}, line {error.lineno}: {error.message}"
            ) from error

    @classmethod
    def llama3(cls) -> ChatTemplate:
        return cls(
            LLAMA3_TEMPLATE,
            bos_token="<|begin_of_text|>",
            eos_token="<|eot_id|>",
            origin="<llama3>",
        )

    @classmethod
    def from_file(cls, path: str | Path) -> ChatTemplate:
        """A `.jinja` file, or a Hugging Face `tokenizer_config.json` (any `.json` file)."""
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        if path.suffix != ".json":
            return cls(text, origin=str(path))
        try:
            config = json.loads(text)
        except json.JSONDecodeError as error:
            raise ChatTemplateError(f"{path}: not valid JSON: {error}") from error
        if not isinstance(config, dict):
            raise ChatTemplateError(f"{path}: expected a JSON object")
        return cls(
            _template_source(config.get("chat_template"), path),
            bos_token=_token_text(config.get("bos_token")),
            eos_token=_token_text(config.get("eos_token")),
            origin=f"{path} (chat_template)",
        )

    def render(
        self,
        messages: Sequence[ChatMessage | Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
    ) -> str:
        dicts = [m.template_dict() if isinstance(m, ChatMessage) else dict(m) for m in messages]
        try:
            return self._template.render(
                messages=dicts,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except jinja2.TemplateError as error:
            raise ChatTemplateError(f"chat template {self.origin}: {error}") from error


def _template_source(chat_template: Any, path: Path) -> str:
    """`chat_template` is a string, or a list of `{"name", "template"}` of which we use "default"."""
    if isinstance(chat_template, str):
        return chat_template
    if isinstance(chat_template, list):
        named = {t.get("name"): t.get("template") for t in chat_template if isinstance(t, dict)}
        default = named.get("default")
        if isinstance(default, str):
            return default
        names = ", ".join(str(name) for name in named)
        raise ChatTemplateError(f"{path}: no chat template named 'default' (there are: {names})")
    raise ChatTemplateError(f"{path}: no 'chat_template' string in it")


def _token_text(token: Any) -> str:
    """A special token as a string, or as an older `AddedToken` object with a `content`."""
    if isinstance(token, str):
        return token
    if isinstance(token, dict) and isinstance(token.get("content"), str):
        return token["content"]
    return ""
