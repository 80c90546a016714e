"""One request end to end on real parts: the official `openai` client, the gateway of
`throttllem run`, and the twin served by a real Triton server (PyTriton).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.integration.stack import Stack, running_stack
from tests.servers import processes_with_argument
from throttllem.cli import main

MODEL = "llama-2-13b"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("stack")) as stack:
        yield stack


@pytest.fixture
def client(stack: Stack) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="unused", max_retries=0) as client:
        yield client


def test_a_completion_comes_back_through_triton(client: openai.OpenAI):
    result = client.completions.create(
        model=MODEL, prompt="Say hello", max_tokens=12, extra_body={"ignore_eos": True}
    )
    choice = result.choices[0]
    assert choice.text.strip()
    assert choice.finish_reason == "length"
    assert result.usage.completion_tokens == 12
    assert result.usage.prompt_tokens == 3  # BOS and "Say hello", two Llama 3 tokens
    assert result.usage.total_tokens == 15


def test_a_streamed_completion_arrives_token_by_token_and_ends(client: openai.OpenAI):
    stream = client.completions.create(
        model=MODEL,
        prompt="Say hello",
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    texts = [c.choices[0].text for c in chunks if c.choices and c.choices[0].text]
    assert len(texts) == 8  # one event per token
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 8


def test_streamed_and_whole_answers_to_the_same_prompt_agree(client: openai.OpenAI):
    whole = client.completions.create(model=MODEL, prompt="Tell me a story", max_tokens=20)
    streamed = client.completions.create(
        model=MODEL, prompt="Tell me a story", max_tokens=20, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == whole.choices[0].text


def test_answers_carry_their_energy_whole_streamed_and_in_the_header(stack: Stack,
                                                                    client: openai.OpenAI):  # fmt: skip
    raw = client.completions.with_raw_response.create(
        model=MODEL, prompt="Write a long story", max_tokens=40, extra_body={"ignore_eos": True}
    )
    whole = raw.parse()  # the official client parses the extra usage fields
    energy_j = whole.usage.model_extra["energy_j"]
    idle_j = whole.usage.model_extra["energy_idle_j"]
    assert 0 <= idle_j < energy_j
    assert float(raw.headers["x-energy-j"]) == energy_j
    stream = client.completions.create(
        model=MODEL, prompt="Write a long story", max_tokens=40, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )  # fmt: skip
    streamed = list(stream)[-1].usage
    assert streamed.completion_tokens == 40
    # the same work on the same idle engine costs about the same
    assert streamed.model_extra["energy_j"] == pytest.approx(energy_j, rel=0.5)
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=8
    )
    assert chat.usage.model_extra["energy_j"] > 0
    metrics = httpx.get(f"{stack.base_url}/metrics").text
    assert f'throttllem_request_energy_joules_count{{model="{MODEL}"}}' in metrics
    assert "throttllem_energy_attributed_joules" in metrics


def test_bad_input_gets_an_openai_shaped_400(client: openai.OpenAI):
    with pytest.raises(openai.BadRequestError) as error:
        client.completions.create(model=MODEL, prompt="hi", max_tokens=4, n=2)
    assert error.value.body["type"] == "invalid_request_error"
    assert error.value.body["param"] == "n"


def test_an_unknown_model_gets_a_404(client: openai.OpenAI):
    with pytest.raises(openai.NotFoundError) as error:
        client.completions.create(model="gpt-5", prompt="hi", max_tokens=4)
    assert error.value.body["code"] == "model_not_found"


def test_models_health_and_metrics_answer(stack: Stack, client: openai.OpenAI):
    assert [m.id for m in client.models.list()] == [MODEL]
    assert httpx.get(f"{stack.base_url}/health/live").json() == {"status": "live"}
    client.completions.create(
        model=MODEL, prompt="count me", max_tokens=3, extra_body={"ignore_eos": True}
    )
    metrics = httpx.get(f"{stack.base_url}/metrics").text
    assert 'throttllem_requests_total{endpoint="completions",status="200"}' in metrics
    assert "throttllem_time_to_first_token_seconds_count" in metrics
    assert "throttllem_gpu_clock_mhz " in metrics  # the governor reads the twin's GPU
    assert "throttllem_governor_clock_changes " in metrics


def test_the_governor_lowers_the_clock_when_no_promise_needs_it(stack: Stack):
    """Idle, it waits at the highest clock for the next prefill; serving one request whose
    promises are loose, it runs below it."""

    def clock_mhz() -> float:
        for line in httpx.get(f"{stack.base_url}/metrics").text.splitlines():
            if line.startswith("throttllem_gpu_clock_mhz "):
                return float(line.split()[1])
        return float("nan")

    body = {"model": MODEL, "prompt": "Tell a long story", "max_tokens": 60, "stream": True,
            "ignore_eos": True}  # fmt: skip
    headers = {"x-slo-tpot-ms": "2000", "x-slo-ttft-ms": "10000"}
    lowest_mhz = float("inf")
    with (
        httpx.Client(base_url=stack.base_url, timeout=60) as http,
        http.stream("POST", "/v1/completions", json=body, headers=headers) as response,
    ):
        assert response.status_code == 200
        for _ in response.iter_lines():  # to its end: a request left early stays on the board
            lowest_mhz = min(lowest_mhz, clock_mhz())
    assert lowest_mhz < 1410
    deadline_s = time.monotonic() + 5
    while time.monotonic() < deadline_s and clock_mhz() < 1410:
        time.sleep(0.1)
    assert clock_mhz() == 1410  # idle again: ready for the next arrival


def test_a_live_replay_drives_the_gateway_and_reads_its_energy(stack: Stack, tmp_path):
    """`throttllem replay --live`: every request of a small trace through the gateway, at
    its arrival time, measured at the client, with the governor's energy from /metrics."""
    trace = tmp_path / "trace.jsonl"
    rows = [{"timestamp": 250 * i, "input_length": 40 + i, "output_length": 8} for i in range(24)]
    trace.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "live.json"
    command = ["replay", "--trace", str(trace), "--format", "jsonl", "--rate", "4",
               "--profile", "a100-40gb/llama-2-13b/tp1", "--live", stack.base_url,
               "--json", str(out)]  # fmt: skip
    assert main(command) == 0
    report = json.loads(out.read_text())
    assert report["live"] == {"url": stack.base_url, "failed": 0}
    live = report["policies"]["live"]
    assert list(report["policies"]) == ["live"]
    assert live["requests"] == 24
    assert live["output_tokens"] == 24 * 8  # ignore_eos: exactly the trace's lengths
    assert live["energy_j"] > 0 and live["tokens_per_j"] > 0
    assert 0 < live["ttft_ms"]["p50"] <= live["e2e_ms"]["p50"]
    assert 0 <= live["slo_attainment"] <= 1
    assert 210 <= live["mean_freq_mhz"] <= 1410
    misses = live["misses"]  # by promise, but not by where the time went: unseen from here
    assert misses["missed"] == round((1 - live["slo_attainment"]) * 24)
    assert misses["ttft_by_cause"] is None and set(misses["by_promise"]) == {"ttft", "tbt", "e2e"}


# Last: it stops the module's stack.
def test_ctrl_c_stops_everything_and_leaves_no_triton_behind(stack: Stack):
    port = str(stack.triton_http_port)
    assert processes_with_argument("tritonserver", port), "Triton should be running"
    stack.process.send_signal(signal.SIGINT)
    assert stack.process.wait(timeout=60) == 0
    assert processes_with_argument("tritonserver", port) == []
    stubs = [
        pid
        for pid in processes_with_argument("triton_python_backend_stub", "ensemble_0_0")
        if _parent_of(pid) == 1
    ]
    assert stubs == [], "orphaned Python-backend stubs"


def _parent_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return -1


if os.environ.get("CI") and not os.path.exists("/proc"):
    raise RuntimeError("these tests read /proc to find leftover processes")
