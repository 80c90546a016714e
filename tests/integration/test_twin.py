"""`throttllem twin` over HTTP: a real Triton server (PyTriton) hosting the engine twin."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import pytest

from predictor.tokenizer import PromptTokenizer
from tests.data import shared_data
from tests.integration.stack import TwinServer as Twin
from tests.integration.stack import running_twin

PROFILE = "a100-40gb/llama-2-13b/tp2"
RESPONSES = "alpaca_eval/llama-2-13b-chat-hf.json"


@pytest.fixture(scope="module")
def twin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Twin]:
    responses = shared_data(RESPONSES)
    with running_twin(tmp_path_factory.mktemp("twin"), "--profile", PROFILE,
                      "--responses", str(responses)) as server:  # fmt: skip
        yield server


async def stream_events(client: httpx.AsyncClient, body: dict) -> list[dict]:
    events = []
    async with client.stream("POST", "/v2/models/ensemble/generate_stream", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: ") :]))
    return events


def metric_value(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in the metrics")


def test_two_concurrent_streams_get_their_token_counts_and_the_metrics_follow(twin: Twin):
    async def run() -> list[list[dict]]:
        async with httpx.AsyncClient(base_url=twin.triton_url, timeout=60) as client:
            bodies = [
                {"text_input": f"Count to {n}", "max_tokens": n, "min_tokens": n, "stream": True,
                 "return_num_input_tokens": True, "return_num_output_tokens": True}
                for n in (20, 35)
            ]  # fmt: skip
            return await asyncio.gather(*(stream_events(client, body) for body in bodies))

    before = httpx.get(f"{twin.control_url}/metrics").text
    first, second = asyncio.run(run())
    assert len(first) == 20 and len(second) == 35
    assert sum(e["num_output_tokens"] for e in first) == 20
    prompt_tokens = PromptTokenizer.from_file().count("Count to 20") + 1  # and BOS
    assert all(e["num_input_tokens"] == prompt_tokens for e in first)
    assert "error" not in first[-1] and "error" not in second[-1]

    after = httpx.get(f"{twin.control_url}/metrics").text
    iterations = metric_value(after, "nv_trt_llm_general_metrics", general_type="iteration_counter")
    iterations_before = metric_value(
        before, "nv_trt_llm_general_metrics", general_type="iteration_counter"
    )
    assert iterations - iterations_before >= 35  # both ran in the same iterations
    assert iterations - iterations_before < 55
    assert metric_value(after, "nv_trt_llm_request_metrics", request_type="max") == 64
    assert metric_value(after, "nv_trt_llm_request_metrics", request_type="active") == 0
    assert metric_value(after, "nv_trt_llm_kv_cache_block_metrics", kv_cache_block_type="used") == 0
    assert (
        metric_value(after, "nv_trt_llm_kv_cache_block_metrics", kv_cache_block_type="tokens_per")
        == 64
    )
    for gpu in ("GPU-twin-0", "GPU-twin-1"):  # TP2: two GPUs, each with its counter
        assert metric_value(after, "nv_energy_consumption", gpu_uuid=gpu) > metric_value(
            before, "nv_energy_consumption", gpu_uuid=gpu
        )
        assert metric_value(after, "nv_gpu_power_usage", gpu_uuid=gpu) > 0


def test_a_known_prompt_gets_the_models_recorded_answer(twin: Twin):
    recorded = json.loads(shared_data(RESPONSES).read_text())[3]
    response = httpx.post(
        f"{twin.triton_url}/v2/models/ensemble/generate",
        json={"text_input": recorded["instruction"], "max_tokens": 3000},
        timeout=120,
    )
    assert response.status_code == 200
    assert response.json()["text_output"] == recorded["output"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"text_input": "hi", "max_tokens": 0}, "BadRequestError: max_tokens must be positive"),
        ({"text_input": "word " * 5000, "max_tokens": 16}, "context window"),
        ({"text_input": "hi"}, "max_tokens"),
    ],
)
def test_bad_input_gets_a_400_with_a_message_and_the_engine_goes_on(twin: Twin, body, message):
    response = httpx.post(f"{twin.triton_url}/v2/models/ensemble/generate", json=body, timeout=60)
    assert response.status_code == 400
    assert message in response.json()["error"]
    ok = httpx.post(
        f"{twin.triton_url}/v2/models/ensemble/generate",
        json={"text_input": "still there?", "max_tokens": 3}, timeout=60,
    )  # fmt: skip
    assert ok.status_code == 200


@pytest.mark.parametrize(
    "content", [b"{not json", b"[1, 2]", b'{"text_input": 5, "max_tokens": 3}']
)
def test_a_malformed_body_gets_an_error_with_a_message(twin: Twin, content: bytes):
    # Triton's own HTTP frontend parses the body before the model sees it, and answers
    # malformed JSON with 500 (Triton 2.51); the twin cannot change that.
    response = httpx.post(
        f"{twin.triton_url}/v2/models/ensemble/generate",
        content=content,
        headers={"content-type": "application/json"},
    )
    assert response.status_code in (400, 500)
    assert response.json()["error"]  # a message, e.g. "failed to parse the request JSON buffer"


def test_the_control_api_locks_and_resets_each_gpu(twin: Twin):
    gpu = f"{twin.control_url}/gpus/1"
    locked = httpx.put(f"{gpu}/locked-clocks", json={"min_mhz": 1050, "max_mhz": 1050})
    assert locked.status_code == 200
    assert locked.json()["locked_clock_mhz"] == 1050
    assert (
        httpx.put(f"{gpu}/locked-clocks", json={"min_mhz": 1000, "max_mhz": 1000}).status_code
        == 400
    )
    assert httpx.get(f"{twin.control_url}/gpus/2").status_code == 404
    assert httpx.delete(f"{gpu}/locked-clocks").json()["locked_clock_mhz"] is None
    assert [g["index"] for g in httpx.get(f"{twin.control_url}/gpus").json()] == [0, 1]


def test_profile_runs_against_the_twin_through_its_gpu_backend_and_metrics(twin: Twin):
    from governor.gpu.twin_client import TwinGpu
    from throttllem.profiler import LiveTarget, profile_live

    gpus = [TwinGpu.connect(twin.control_url, index) for index in (0, 1)]
    target = LiveTarget(
        twin.triton_url, f"{twin.control_url}/metrics", "ensemble", tp=2, context_window_tokens=4096
    )

    async def run() -> list:
        try:
            return await profile_live(
                target, gpus, output_tokens=40, window_s=0.25, max_batch=2, seed=3
            )
        finally:
            for gpu in gpus:
                await gpu.aclose()

    rows = asyncio.run(run())
    assert rows, "no windows measured"
    idle, busy = rows[0], rows[1:]
    assert idle.batch == 0 and idle.power_w > 0  # the GPUs idle: the power model's idle
    assert {row.batch for row in busy} <= {1, 2}
    assert all(row.tp == 2 and row.ips > 0 and row.freq_mhz % 15 == 0 for row in busy)
    assert all(row.power_w > idle.power_w for row in busy)
    states = httpx.get(f"{twin.control_url}/gpus").json()
    assert [gpu["locked_clock_mhz"] for gpu in states] == [None, None], (
        "clocks reset after profiling"
    )
