"""Hypothesis strategies for near-valid OpenAI requests: the schema's fields with a valid
model name, each field valid or wrong (types, ranges, sizes), unknown fields, bodies
that are not JSON or not UTF-8, deep nesting, and odd headers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from hypothesis import strategies as st

MODEL = "llama-2-13b"

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
_ANY_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _either(valid: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    """A near-valid value eleven times in twelve, anything JSON otherwise: most bodies then
    have at most one thing wrong, and a good share reach the engine."""
    return st.integers(0, 11).flatmap(lambda pick: valid if pick else _ANY_JSON)


_PROMPT_TEXT = st.text(max_size=24)
_SMALL_TOKENS = st.integers(min_value=1, max_value=6)


def _mostly(inside: st.SearchStrategy[object], edge: st.SearchStrategy[object]
            ) -> st.SearchStrategy[object]:  # fmt: skip
    """In range three times in four, on or past its edges otherwise."""
    return st.integers(0, 3).flatmap(lambda pick: inside if pick else edge)


_COMMON: dict[str, st.SearchStrategy[object]] = {
    "temperature": _either(_mostly(st.floats(0, 2), st.floats(-1, 3))),
    "top_p": _either(_mostly(st.floats(0.01, 1), st.floats(-0.5, 1.5))),
    "stop": _either(_mostly(st.text(max_size=5), st.lists(st.text(max_size=5), max_size=6))),
    "seed": _either(_mostly(st.integers(0, 2**32), st.integers(-(2**65), 2**65))),
    "n": _either(_mostly(st.just(1), st.integers(-1, 3))),
    "stream": _either(st.booleans()),
    "stream_options": _either(st.fixed_dictionaries({"include_usage": st.booleans()})),
    "ignore_eos": _either(st.booleans()),
    "user": _either(st.text(max_size=10)),
    "max_tokens": _either(_mostly(_SMALL_TOKENS, st.one_of(
        st.integers(max_value=0), st.integers(min_value=10**5, max_value=2**70)))),
}  # fmt: skip
_COMPLETION = {**_COMMON, "prompt": _either(_mostly(_PROMPT_TEXT,
                                                     st.lists(_PROMPT_TEXT, max_size=3)))}  # fmt: skip
_MESSAGE = st.fixed_dictionaries(
    {"role": _either(st.sampled_from(["system", "user", "assistant", "tool"])),
     "content": _either(st.one_of(_PROMPT_TEXT, st.lists(
         st.fixed_dictionaries({"type": st.just("text"), "text": _PROMPT_TEXT}), max_size=2)))},
)  # fmt: skip
_CHAT = {**_COMMON, "messages": _either(st.lists(_MESSAGE, max_size=3)),
         "max_completion_tokens": _either(_SMALL_TOKENS)}  # fmt: skip


@dataclass(frozen=True)
class FuzzRequest:
    path: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:  # hypothesis prints the failing example
        return f"FuzzRequest({self.path!r}, {self.body[:300]!r}, {self.headers!r})"


@st.composite
def _json_body(draw: st.DrawFn, fields: dict[str, st.SearchStrategy[object]], required: str
               ) -> bytes:  # fmt: skip
    body: dict[str, object] = {"model": draw(_either(st.just(MODEL)))}
    for name, strategy in fields.items():
        if name == required or draw(st.integers(0, 2)) == 0:
            body[name] = draw(strategy)
    if draw(st.integers(0, 19)) == 0:
        body[draw(st.text(min_size=1, max_size=10))] = draw(_ANY_JSON)  # unknown field
    if draw(st.integers(0, 19)) == 0:
        body.pop(draw(st.sampled_from(sorted(body))), None)  # a required one, perhaps
    return json.dumps(body, allow_nan=True).encode()


_DEEP = st.integers(min_value=50, max_value=100_000).map(
    lambda depth: ("[" * depth + "]" * depth).encode()
)
_GARBAGE = st.one_of(
    st.binary(max_size=200),
    _DEEP,
    st.just(b'{"model": "' + MODEL.encode() + b'", "prompt": "\xff\xfe\xc3("}'),  # bad UTF-8
    st.just(b'{"model": "' + MODEL.encode() + b'", "prompt": "' + b"x" * 2_000_000 + b'"}'),
    _ANY_JSON.map(lambda value: json.dumps(value, allow_nan=True).encode()),
)
_HEADERS = st.dictionaries(
    st.sampled_from(
        [
            "content-type",
            "x-slo-ttft-ms",
            "x-slo-tpot-ms",
            "x-slo-e2e-ms",
            "x-request-id",
            "accept",
            "content-encoding",
        ]
    ),
    st.one_of(
        st.sampled_from(
            ["application/json", "text/plain", "gzip", "-1", "0", "1e309", "nan", "500", ""]
        ),
        st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30).map(
            str.strip
        ),  # what the HTTP client sends
    ),
    max_size=3,
)


@st.composite
def fuzz_requests(draw: st.DrawFn) -> FuzzRequest:
    path = draw(st.sampled_from(["/v1/completions", "/v1/chat/completions"]))
    if draw(st.integers(0, 4)) == 0:
        body = draw(_GARBAGE)
    elif path == "/v1/completions":
        body = draw(_json_body(_COMPLETION, "prompt"))
    else:
        body = draw(_json_body(_CHAT, "messages"))
    return FuzzRequest(path, body, draw(_HEADERS))
