"""The OpenAI-compatible backend against the instant upstream (a real HTTP server), and
against scripted answers for the failures the instant upstream never gives."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette

from gateway.backends import connect_backend
from gateway.backends.base import GenerationChunk, GenerationRequest
from gateway.backends.openai_compat import OpenAICompatibleBackend, upstream_message
from gateway.backends.triton import TritonBackend
from gateway.errors import BackendError, BackendUnavailableError, InvalidRequestError
from tests.scripted_server import (
    Received,
    Reply,
    Script,
    ScriptedServer,
    chunk,
    chunked_head,
    json_response,
    response,
    sse_reply,
)
from tests.servers import free_ports, wait_for_http
from throttllem.instant_upstream import instant_upstream_app
from throttllem.settings import Settings

MODEL = "served-model"


@dataclass(frozen=True)
class Upstream:
    url: str
    app: Starlette

    def last_request(self) -> tuple[str, dict[str, str], dict[str, object]]:
        received = self.app.state.received[-1]
        return received.path, received.headers, received.body


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    (port,) = free_ports(1)
    app = instant_upstream_app(MODEL)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/v2/health/ready", 10.0, thread.is_alive)
        yield Upstream(url, app)
    finally:
        server.should_exit = True
        thread.join(10.0)


async def generate_all(
    backend: OpenAICompatibleBackend | TritonBackend, request: GenerationRequest
) -> list[GenerationChunk]:
    try:
        return [chunk async for chunk in backend.generate(request)]
    finally:
        await backend.aclose()


def gateway_count(chunks: list[GenerationChunk]) -> int:
    """How the gateway counts: a chunk's own count, else one token per chunk with text."""
    return sum(
        c.output_tokens if c.output_tokens is not None else int(bool(c.text)) for c in chunks
    )


async def test_continuous_usage_gives_each_chunk_its_exact_token_count(upstream: Upstream):
    backend = OpenAICompatibleBackend.connect(upstream.url, MODEL)
    chunks = await generate_all(backend, GenerationRequest(prompt="one two three", max_tokens=5))
    # Events that arrive in one read come as one chunk, with their summed count.
    assert "".join(c.text for c in chunks) == "tok " * 5
    assert [c.output_tokens for c in chunks] == [c.text.count("tok") for c in chunks]
    assert {c.prompt_tokens for c in chunks} == {3}
    _, _, body = upstream.last_request()
    assert body["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}


async def test_usage_only_at_the_end_still_sums_to_the_servers_count(upstream: Upstream):
    backend = OpenAICompatibleBackend.connect(upstream.url, MODEL, continuous_usage=False)
    chunks = await generate_all(backend, GenerationRequest(prompt="one two", max_tokens=4))
    assert [c.output_tokens for c in chunks[:4]] == [None] * 4
    assert chunks[-1].prompt_tokens == 2
    assert gateway_count(chunks) == 4
    _, _, body = upstream.last_request()
    assert body["stream_options"] == {"include_usage": True}


async def test_a_final_usage_corrects_chunks_that_held_several_tokens():
    events = [
        {"choices": [{"text": "Hello", "finish_reason": None}]},
        {"choices": [{"text": " world!", "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 5}},
        "[DONE]",
    ]
    chunks = await scripted_generate(lambda _: sse_reply(events))
    assert [(c.text, c.output_tokens) for c in chunks] == [
        ("Hello", None),
        (" world!", None),
        ("", 3),
    ]
    assert chunks[-1].prompt_tokens == 7
    assert gateway_count(chunks) == 5


async def test_a_usage_only_chunk_updates_counts_when_text_chunks_had_none():
    events = [{"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 3}}, "[DONE]"]
    chunks = await scripted_generate(lambda _: sse_reply(events))
    assert chunks == [GenerationChunk(text="", output_tokens=3, prompt_tokens=2)]


async def test_a_stream_that_ends_without_done_was_cut_short_and_fails():
    events = [{"choices": [{"text": "Hello"}]}]
    with pytest.raises(BackendError, match="without \\[DONE\\]"):
        await scripted_generate(lambda _: sse_reply(events))


async def test_a_streamed_request_answered_with_one_json_completion_is_read_whole():
    """Before, this became an empty 200 with finish_reason "stop": the answer was lost."""
    answer = {"object": "text_completion", "choices": [{"text": "Hello world", "index": 0,
              "finish_reason": "stop"}], "usage": {"prompt_tokens": 4, "completion_tokens": 2}}  # fmt: skip
    chunks = await scripted_generate(lambda _: Reply([json_response(200, answer)]))
    assert chunks == [GenerationChunk(text="Hello world", output_tokens=2, prompt_tokens=4)]


@pytest.mark.parametrize(
    "body", [json_response(200, {"id": "x"}), response(200, b"<html>hi</html>", "text/html")]
)
async def test_an_answer_that_is_neither_a_stream_nor_a_completion_fails(body: bytes):
    with pytest.raises(BackendError, match=r"not a completion|neither an event stream"):
        await scripted_generate(lambda _: Reply([body]))


async def test_the_stream_ends_at_done():
    events = [{"choices": [{"text": "a"}]}, "[DONE]", {"choices": [{"text": "after"}]}]
    chunks = await scripted_generate(lambda _: sse_reply(events))
    assert [c.text for c in chunks] == ["a"]


async def test_sampling_stop_seed_and_ignore_eos_map_to_vllms_fields(upstream: Upstream):
    backend = OpenAICompatibleBackend.connect(upstream.url, MODEL)
    generation = GenerationRequest(
        prompt="hi", max_tokens=3, temperature=0.5, top_p=0.9, stop=["\n", "END"], seed=7,
        ignore_eos=True,
    )  # fmt: skip
    await generate_all(backend, generation)
    path, _, body = upstream.last_request()
    assert path == "/v1/completions"
    assert body == {
        "model": MODEL,
        "prompt": "hi",
        "max_tokens": 3,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": ["\n", "END"],
        "seed": 7,
        "ignore_eos": True,
        "min_tokens": 3,
    }


async def test_unset_fields_are_left_to_the_server(upstream: Upstream):
    await generate_all(OpenAICompatibleBackend.connect(upstream.url, MODEL), request())
    _, headers, body = upstream.last_request()
    assert set(body) == {"model", "prompt", "max_tokens", "stream", "stream_options"}
    assert "authorization" not in headers


async def test_the_bearer_key_is_sent(upstream: Upstream):
    backend = OpenAICompatibleBackend.connect(upstream.url, MODEL, api_key="sk-upstream")
    await generate_all(backend, request())
    _, headers, _ = upstream.last_request()
    assert headers["authorization"] == "Bearer sk-upstream"


async def test_a_refused_request_is_a_400_with_the_upstreams_message(upstream: Upstream):
    backend = OpenAICompatibleBackend.connect(upstream.url, MODEL)
    with pytest.raises(InvalidRequestError, match="max_tokens must be at least 1, got 0"):
        await generate_all(backend, GenerationRequest(prompt="hi", max_tokens=0))


async def test_a_model_the_upstream_does_not_serve_is_unavailable(upstream: Upstream):
    backend = OpenAICompatibleBackend.connect(upstream.url, "other-model")
    with pytest.raises(BackendUnavailableError, match="other-model"):
        await generate_all(backend, request())


async def test_an_unreachable_upstream_is_unavailable_and_named():
    (port,) = free_ports(1)
    backend = OpenAICompatibleBackend.connect(f"http://127.0.0.1:{port}", MODEL)
    with pytest.raises(BackendUnavailableError, match=f"127.0.0.1:{port}"):
        await generate_all(backend, request())


@pytest.mark.parametrize(
    ("status", "body", "error", "message"),
    [
        (422, {"detail": [{"loc": ["body", "top_p"], "msg": "bad top_p"}]}, InvalidRequestError,
         "top_p: bad top_p"),
        (400, {"object": "error", "message": "prompt too long\nmore"}, InvalidRequestError,
         "prompt too long$"),
        (401, {"error": {"message": "Unauthorized"}}, BackendError, "refused the gateway's key"),
        (403, {"detail": "Forbidden"}, BackendError, "refused the gateway's key"),
        (404, {"detail": "Not Found"}, BackendUnavailableError, "Not Found"),
        (500, {"error": {"message": "engine died"}}, BackendError, "HTTP 500: engine died"),
    ],
)  # fmt: skip
async def test_upstream_statuses_map_to_gateway_errors(
    status: int, body: dict[str, object], error: type[Exception], message: str
):
    with pytest.raises(error, match=message) as raised:
        await scripted_generate(lambda _: Reply([json_response(status, body)]))
    if status == 500:
        assert not isinstance(raised.value, BackendUnavailableError)


@pytest.mark.parametrize(
    "error_event",
    [
        {"error": {"message": "CUDA out of memory\ntrace", "type": "InternalServerError"}},
        {"object": "error", "message": "CUDA out of memory\ntrace"},
    ],
)
async def test_an_in_stream_error_event_is_a_backend_error(error_event: dict[str, object]):
    events = [{"choices": [{"text": "a"}]}, error_event]
    seen: list[str] = []
    async with ScriptedServer(lambda _: sse_reply(events)) as server:
        backend = OpenAICompatibleBackend.connect(server.url, MODEL)
        with pytest.raises(BackendError, match=r"CUDA out of memory$") as raised:
            async for chunk in backend.generate(request()):
                seen.append(chunk.text)
        await backend.aclose()
    assert seen == ["a"]
    assert not isinstance(raised.value, BackendUnavailableError)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"error": {"message": "first\nsecond"}}, "first"),
        ({"error": "plain"}, "plain"),
        ({"detail": "  \nno model\n"}, "no model"),
        ({"detail": [{"loc": ["body", "n"], "msg": "too big"}]}, "n: too big"),
        ({"something": 1}, '{"something": 1}'),
    ],
)
def test_the_upstreams_message_is_read_from_any_common_shape(body: object, message: str):
    assert upstream_message(body) == message


async def test_ready_when_the_model_is_listed(upstream: Upstream):
    listed = OpenAICompatibleBackend.connect(upstream.url, MODEL)
    unlisted = OpenAICompatibleBackend.connect(upstream.url, "other-model")
    (port,) = free_ports(1)
    down = OpenAICompatibleBackend.connect(f"http://127.0.0.1:{port}", MODEL)
    try:
        assert (await listed.ready(), await unlisted.ready(), await down.ready()) == (
            True,
            False,
            False,
        )
    finally:
        for backend in (listed, unlisted, down):
            await backend.aclose()


@pytest.mark.parametrize(("health_status", "ready"), [(200, True), (503, False)])
async def test_ready_falls_back_to_health_without_a_models_route(health_status: int, ready: bool):
    def answer(received: Received) -> Reply:
        return Reply([response(health_status if received.path == "/health" else 404)])

    async with ScriptedServer(answer) as server:
        backend = OpenAICompatibleBackend.connect(server.url, MODEL)
        try:
            assert await backend.ready() is ready
        finally:
            await backend.aclose()


async def test_connect_backend_picks_the_servers_kind(upstream: Upstream):
    openai_settings = Settings(
        backend_kind="openai", backend_url=upstream.url, served_model_name=MODEL
    )
    renamed = Settings(
        backend_kind="openai", backend_url=upstream.url, served_model_name="public-name",
        upstream_model=MODEL, backend_api_key="sk-chosen",
    )  # fmt: skip
    backends = [connect_backend(s) for s in (openai_settings, renamed)]
    triton = connect_backend(Settings(backend_url=upstream.url))
    try:
        assert [isinstance(b, OpenAICompatibleBackend) for b in backends] == [True, True]
        assert isinstance(triton, TritonBackend)
        assert [await b.ready() for b in (*backends, triton)] == [True, True, True]
        await generate_all(backends[1], request())
        _, headers, body = upstream.last_request()
        assert (body["model"], headers["authorization"]) == (MODEL, "Bearer sk-chosen")
    finally:
        for backend in (*backends, triton):
            await backend.aclose()


async def test_the_instant_upstream_speaks_tritons_generate_stream(upstream: Upstream):
    backend = TritonBackend.connect(upstream.url, "ensemble", timeout_s=10, connect_timeout_s=1)
    chunks = await generate_all(backend, GenerationRequest(prompt="a b c d", max_tokens=3))
    assert "".join(c.text for c in chunks) == "tok " * 3
    assert [c.output_tokens for c in chunks] == [c.text.count("tok") for c in chunks]
    assert {c.prompt_tokens for c in chunks} == {4}


async def test_the_instant_upstream_answers_unstreamed_completions(upstream: Upstream):
    async with httpx.AsyncClient(base_url=upstream.url) as client:
        answer = (
            await client.post(
                "/v1/completions", json={"model": MODEL, "prompt": "x y", "max_tokens": 2}
            )
        ).json()
        generate = (
            await client.post(
                "/v2/models/ensemble/generate", json={"text_input": "x", "max_tokens": 2}
            )
        ).json()
    assert answer["choices"][0]["text"] == "tok tok "
    assert answer["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}
    assert (generate["text_output"], generate["num_output_tokens"]) == ("tok tok ", 2)


def request() -> GenerationRequest:
    return GenerationRequest(prompt="hi", max_tokens=2)


async def scripted_generate(script: Script) -> list[GenerationChunk]:
    """All chunks from a server that answers with `script`'s bytes."""
    async with ScriptedServer(script) as server:
        return await generate_all(OpenAICompatibleBackend.connect(server.url, MODEL), request())


@pytest.mark.parametrize("kind", ["triton", "openai"])
async def test_an_answer_broken_off_mid_way_is_an_upstream_error_not_unavailable(kind: str):
    """The server took the request and stopped mid-answer: a 502 upstream error, as the
    docs say; 503 (unreachable) is for a server that never answered."""
    event = {"text_output": "Hel"} if kind == "triton" else {"choices": [{"text": "Hel"}]}
    head_and_one = [chunked_head(), chunk(f"data: {json.dumps(event)}\n\n".encode())]
    async with ScriptedServer(lambda _: Reply(head_and_one, close=True)) as server:
        backend = (
            TritonBackend.connect(server.url, "ensemble", timeout_s=10, connect_timeout_s=1)
            if kind == "triton"
            else OpenAICompatibleBackend.connect(server.url, MODEL)
        )
        with pytest.raises(BackendError) as raised:
            await generate_all(backend, request())
    assert not isinstance(raised.value, BackendUnavailableError)
    assert "broke off" in str(raised.value)
