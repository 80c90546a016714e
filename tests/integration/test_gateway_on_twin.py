"""The gateway's promises on real parts: the official `openai` client (sync and async,
streamed), the twin in a real Triton, a real Redis shared by four uvicorn workers."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest

from predictor.shipped import length_model_path, performance_model_path
from slo_scoreboard.redis_store import RedisStateStore
from tests.integration.stack import Stack, running_stack
from tests.servers import free_ports, server_process

MODEL = "llama-2-13b"
ADMIN = {"Authorization": "Bearer admin-secret"}
REDIS_URL = "redis://127.0.0.1:6379/0"
LONG_PROMPT = "Tell me everything about the history of the bicycle. " * 60  # ~600 tokens


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"THROTTLLEM_ADMIN_TOKEN": "admin-secret"}
    with running_stack(tmp_path_factory.mktemp("stack"), env) as stack:
        yield stack


@contextmanager
def gateway(stack: Stack, log_dir: Path, env: dict[str, str], workers: int = 1) -> Iterator[str]:
    """`throttllem serve` in front of the stack's twin, configured by `env`."""
    (port,) = free_ports(1)
    settings = {
        "THROTTLLEM_BACKEND_URL": f"http://127.0.0.1:{stack.triton_http_port}",
        "THROTTLLEM_SERVED_MODEL_NAME": MODEL,
        "THROTTLLEM_ADMIN_TOKEN": "admin-secret",
        **env,
    }
    command = [sys.executable, "-m", "throttllem", "serve", "--port", str(port),
               "--workers", str(workers)]  # fmt: skip
    base_url = f"http://127.0.0.1:{port}"
    with server_process(command, log_dir / f"serve-{port}.log", f"{base_url}/health/ready", 60,
                        env={**os.environ, **settings}):  # fmt: skip
        yield base_url


def eventually(condition: Callable[[], bool], within_s: float = 3.0) -> bool:
    deadline_s = time.monotonic() + within_s
    while time.monotonic() < deadline_s:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


async def eventually_empty(store: RedisStateStore, within_s: float = 3.0) -> bool:
    deadline_s = time.monotonic() + within_s
    while time.monotonic() < deadline_s:
        if not (await store.snapshot()).entries:
            return True
        await asyncio.sleep(0.05)
    return not (await store.snapshot()).entries


def scoreboard(base_url: str) -> list[dict]:
    return httpx.get(f"{base_url}/admin/scoreboard", headers=ADMIN).json()["requests"]


def engine_active(stack: Stack) -> int:
    for line in httpx.get(f"{stack.control_url}/metrics").text.splitlines():
        if line.startswith("nv_trt_llm_request_metrics{") and 'request_type="active"' in line:
            return int(float(line.split()[-1]))
    raise AssertionError("the twin exports no active-request count")


def first_event(response: httpx.Response) -> Iterator[str]:
    """Read up to the first SSE event; the lines stay open (a dropped line iterator would
    close the connection, which the gateway rightly takes for a client leaving)."""
    lines = response.iter_lines()
    next(line for line in lines if line.startswith("data: "))
    return lines


def long_stream(client: httpx.Client, base_url: str, max_tokens: int = 400, **headers: str):
    body = {"model": MODEL, "prompt": LONG_PROMPT, "max_tokens": max_tokens, "stream": True,
            "ignore_eos": True}  # fmt: skip
    return client.stream("POST", f"{base_url}/v1/completions", json=body, headers=headers)


def test_chat_through_the_official_client_whole_and_streamed(stack: Stack):
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="unused", max_retries=0)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    whole = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=8, extra_body={"ignore_eos": True}
    )
    assert whole.choices[0].message.role == "assistant"
    assert whole.choices[0].message.content
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage.completion_tokens == 8
    assert whole.usage.prompt_tokens > 10  # the Llama 3 template's headers count
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=6, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
        )
    )  # fmt: skip
    assert chunks[0].choices[0].delta.role == "assistant"
    contents = [c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].delta.content]  # fmt: skip
    assert len(contents) == 6
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6


async def test_the_async_client_streams_completions_and_chat(stack: Stack):
    async with openai.AsyncOpenAI(base_url=f"{stack.base_url}/v1", api_key="unused") as client:
        completion, chat = await asyncio.gather(
            client.completions.create(model=MODEL, prompt="Say hello", max_tokens=5, stream=True,
                                      extra_body={"ignore_eos": True}),
            client.chat.completions.create(model=MODEL, max_tokens=5, stream=True,
                                           messages=[{"role": "user", "content": "Say hello"}],
                                           extra_body={"ignore_eos": True}),
        )  # fmt: skip
        texts = [c.choices[0].text async for c in completion if c.choices[0].text]
        deltas = [c.choices[0].delta.content async for c in chat if c.choices[0].delta.content]
    assert len(texts) == 5 and len(deltas) == 5


def test_request_ids_are_echoed_or_made_and_bad_slo_headers_are_refused(stack: Stack):
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 2}
    echoed = httpx.post(f"{stack.base_url}/v1/completions", json=body,
                        headers={"x-request-id": "caller-42"})  # fmt: skip
    assert echoed.status_code == 200 and echoed.headers["x-request-id"] == "caller-42"
    made = httpx.post(f"{stack.base_url}/v1/completions", json=body,
                      headers={"x-slo-ttft-ms": "500", "x-slo-tpot-ms": "100"})  # fmt: skip
    assert made.status_code == 200 and len(made.headers["x-request-id"]) == 32
    refused = httpx.post(f"{stack.base_url}/v1/completions", json=body,
                         headers={"x-slo-e2e-ms": "-3"})  # fmt: skip
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "x-slo-e2e-ms"
    assert "x-request-id" in refused.headers


@pytest.mark.parametrize(
    ("seed", "status"), [(-1, 200), (-(2**63), 200), (2**63 - 1, 200), (2**63, 400), (2**64, 400)]
)
def test_every_seed_gets_an_answer_or_a_400_never_the_engines_500(stack, seed, status):
    """Triton's seed is unsigned: a negative one reached it and came back as a 502."""
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 2, "seed": seed}
    response = httpx.post(f"{stack.base_url}/v1/completions", json=body)
    assert response.status_code == status, response.text
    if status == 400:
        assert response.json()["error"]["param"] == "seed"


def test_a_request_its_client_left_stays_on_the_board_until_the_engine_is_done(stack: Stack):
    """Triton's HTTP frontend does not cancel a request whose client left (only gRPC
    clients can, per Triton's docs), and neither does the twin under PyTriton: the engine
    finishes it. Before, the board dropped it at once while the engine still ran it, and
    the governor planned for less than the engine held."""
    body = {"model": MODEL, "prompt": LONG_PROMPT, "max_tokens": 120, "stream": True,
            "ignore_eos": True}  # fmt: skip
    with (
        httpx.Client(timeout=30) as client,
        client.stream(
            "POST",
            f"{stack.base_url}/v1/completions",
            json=body,
            headers={"x-request-id": "leaver"},
        ) as stream,
    ):
        _open_lines = first_event(stream)
        assert [e["request_id"] for e in scoreboard(stack.base_url)] == ["leaver"]
        assert engine_active(stack) == 1
    seen: list[tuple[int, int]] = []  # (on the board, in the engine), engine read first
    deadline_s = time.monotonic() + 30.0
    while time.monotonic() < deadline_s:
        in_engine = engine_active(stack)
        on_board = len(scoreboard(stack.base_url))
        seen.append((on_board, in_engine))
        if on_board == 0:
            break
        time.sleep(0.1)
    assert seen[-1][0] == 0, f"still on the board 30 s after its client left: {seen[-5:]}"
    assert all(on_board >= in_engine for on_board, in_engine in seen[:-1])
    assert len(seen) > 5  # it stayed while the engine worked on it
    assert eventually(lambda: engine_active(stack) == 0)
    metrics = httpx.get(f"{stack.base_url}/metrics").text
    assert "throttllem_requests_cancelled_total 1.0" in metrics


def test_a_client_that_leaves_a_whole_answer_leaves_the_board_with_the_engine(stack: Stack):
    body = {"model": MODEL, "prompt": LONG_PROMPT, "max_tokens": 120, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{stack.base_url}/v1/completions", json=body, timeout=httpx.Timeout(1.0))
    assert len(scoreboard(stack.base_url)) == engine_active(stack) == 1
    assert eventually(lambda: scoreboard(stack.base_url) == [], within_s=30.0)
    assert engine_active(stack) == 0


def test_a_request_that_cannot_start_in_time_is_sent_at_once_and_keys_are_required(
    stack: Stack, tmp_path: Path
):
    """20 KV blocks hold one ~600-token prompt with its 120-token reservation, not two: the
    second cannot start before the first ends, too late for its first token whatever the
    gateway does, so it is sent at once even with no room to queue, and counted lost. (A
    full queue's 429 is tested in tests/gateway/test_admission.py: with the projection
    following the engine's scheduler, a request is held only when it would hurt another.)"""
    env = {
        "THROTTLLEM_LENGTH_MODEL_PATH": str(length_model_path("llama-2-13b-chat-hf")),
        "THROTTLLEM_PERFORMANCE_MODEL_PATH": str(performance_model_path("a100-40gb/llama-2-13b/tp1")),
        "THROTTLLEM_ENGINE_KV_CAPACITY_BLOCKS": "20",
        "THROTTLLEM_MAX_QUEUE": "0",
        "THROTTLLEM_API_KEYS": "key-one,key-two",
    }  # fmt: skip
    with gateway(stack, tmp_path, env) as base_url:
        keyless = openai.OpenAI(base_url=f"{base_url}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            keyless.completions.create(model=MODEL, prompt="hi", max_tokens=2)
        key = {"Authorization": "Bearer key-two"}
        with httpx.Client(timeout=60) as client:
            with long_stream(client, base_url, 120, **key) as first:
                assert first.status_code == 200
                _open_lines = first_event(first)
                with long_stream(client, base_url, 120, **key) as second:
                    assert second.status_code == 200
                    _second_lines = first_event(second)
            # Both left; the engine finishes them (Triton over HTTP), then the board is empty.
            assert eventually(lambda: scoreboard(base_url) == [], within_s=60.0)
        metrics = httpx.get(f"{base_url}/metrics").text
        assert 'throttllem_admissions_total{outcome="lost"} 1.0' in metrics
        assert 'outcome="queue_full"} 1.0' not in metrics


async def test_four_workers_share_one_scoreboard_in_redis(
    stack: Stack, tmp_path: Path, instance: str
):
    """Streams are opened one connection at a time until at least two workers hold some
    (the kernel hands connections to whichever worker accepts first: one may take a
    dozen), then the scoreboard in Redis must be exactly the union of them all."""
    env = {"THROTTLLEM_REDIS_URL": REDIS_URL, "THROTTLLEM_INSTANCE": instance}
    store = RedisStateStore.connect(REDIS_URL, instance, entry_ttl_s=10)
    body = {"model": MODEL, "prompt": "Count to a thousand.", "max_tokens": 100, "stream": True,
            "ignore_eos": True}  # fmt: skip
    opened: list[tuple[httpx.AsyncClient, object, httpx.Response, object]] = []
    try:
        with gateway(stack, tmp_path, env, workers=4) as base_url:
            try:
                while len(opened) < 32:
                    client = httpx.AsyncClient(timeout=30)  # one connection each
                    stream = client.stream("POST", f"{base_url}/v1/completions", json=body)
                    response = await stream.__aenter__()
                    lines = response.aiter_lines()  # held: dropping it hangs up
                    async for line in lines:
                        if line.startswith("data: "):
                            break
                    opened.append((client, stream, response, lines))
                    entries = (await store.snapshot()).entries
                    if len(opened) >= 8 and len({e.worker for e in entries}) >= 2:
                        break
                ids = {response.headers["x-request-id"] for _, _, response, _ in opened}
                entries = (await store.snapshot()).entries
                assert {e.request_id for e in entries} == ids
                assert len({e.worker for e in entries}) >= 2, "32 streams, all on one worker"
            finally:
                for client, stream, _, _ in opened:
                    await stream.__aexit__(None, None, None)  # type: ignore[attr-defined]
                    await client.aclose()
            assert await eventually_empty(store, within_s=60.0)  # once the engine is done
    finally:
        await store.aclose()


def test_workers_log_with_time_and_level_and_a_dead_one_is_logged(
    stack: Stack, tmp_path: Path, instance: str
):
    """Before, uvicorn's workers ran without a logging setup: no time or level, INFO
    dropped, and a worker's death left no line."""
    env = {"THROTTLLEM_REDIS_URL": REDIS_URL, "THROTTLLEM_INSTANCE": instance}
    with gateway(stack, tmp_path, env, workers=2) as base_url:
        workers = _started_workers(tmp_path, 2)
        assert len(workers) == 2, "each worker logs its start, in our format"
        os.kill(workers[0], signal.SIGKILL)
        assert eventually(lambda: bool(_lines(tmp_path, f"Child process [{workers[0]}] died")),
                          within_s=10.0)  # fmt: skip
        assert httpx.get(f"{base_url}/health/live").status_code == 200


def _started_workers(log_dir: Path, count: int) -> list[int]:
    """The pids of the workers that logged their start, once `count` have (the gateway is
    ready when its first worker is) or 30 s have passed."""

    def started() -> list[int]:
        lines = _lines(log_dir, "Started server process")
        return sorted({int(line.split()[3]) for line in lines})

    eventually(lambda: len(started()) >= count, within_s=30.0)
    return started()


def _lines(log_dir: Path, text: str) -> list[str]:
    """Lines of the gateway's log holding `text`, each `date time LEVEL pid logger: ...`."""
    found = []
    for path in log_dir.glob("serve-*.log"):
        for line in path.read_text(errors="replace").splitlines():
            if text in line:
                assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO \d+ ", line), line
                found.append(line)
    return found


def test_workers_of_a_killed_master_stop_and_take_its_metrics_folder_with_them(
    stack: Stack, tmp_path: Path, instance: str
):
    """Before, SIGKILL on `throttllem serve` left its workers serving, unsupervised, and
    its private metrics folder behind."""
    env = {"THROTTLLEM_REDIS_URL": REDIS_URL, "THROTTLLEM_INSTANCE": instance}
    with gateway(stack, tmp_path, env, workers=2):
        workers = set(_started_workers(tmp_path, 2))
        (master,) = {_parent(pid) for pid in workers}
        metrics_dir = Path(_environ(next(iter(workers)))["PROMETHEUS_MULTIPROC_DIR"])
        assert metrics_dir.is_dir()
        os.kill(master, signal.SIGKILL)
        assert eventually(lambda: not any(_alive(pid) for pid in workers), within_s=15.0)
        assert not metrics_dir.exists()


def _parent(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[1])


def _environ(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(p.decode().split("=", 1) for p in pairs if b"=" in p)


def _alive(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


@pytest.mark.parametrize(
    ("fields", "told"),
    [
        ({"gpu_backend": "simulated"}, True),
        ({"gpu_backend": "simulated", "energy_attribution": False}, False),
        ({}, False),  # no governor meters the GPUs: no energy, never a made-up one
    ],
)
async def test_energy_is_told_only_where_measured_and_wanted(stack: Stack, fields, told):
    from throttllem.settings import Settings
    from throttllem.wiring import create_gateway_app

    settings = Settings(backend_url=f"http://127.0.0.1:{stack.triton_http_port}",
                        served_model_name=MODEL, gpu_control_url=stack.control_url,
                        **fields)  # fmt: skip
    app = create_gateway_app(settings)
    async with app.router.lifespan_context(app):
        await asyncio.sleep(0.3)  # a few governor windows before the request
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            client = openai.AsyncOpenAI(base_url="http://gateway/v1", api_key="unused",
                                        http_client=http, max_retries=0)  # fmt: skip
            raw = await client.completions.with_raw_response.create(
                model=MODEL, prompt="Say hello", max_tokens=16, extra_body={"ignore_eos": True}
            )
            stream = await client.completions.create(
                model=MODEL, prompt="Say hello", max_tokens=16, stream=True,
                stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
            )  # fmt: skip
            streamed = [chunk async for chunk in stream][-1].usage
    whole = raw.parse().usage
    assert whole.completion_tokens == streamed.completion_tokens == 16
    assert ("energy_j" in (whole.model_extra or {})) is told
    assert ("energy_j" in (streamed.model_extra or {})) is told
    assert ("x-energy-j" in raw.headers) is told
