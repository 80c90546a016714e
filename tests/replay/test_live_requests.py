"""What `replay --live` sends: each request's own prompt text, cut to the workload's prompt
length, its output length pinned, and the replay's promises as headers. No timings."""

from __future__ import annotations

import math

import numpy as np
import pytest

from predictor.tokenizer import PromptTokenizer
from tests.scripted_server import (
    Received,
    Reply,
    ScriptedServer,
    json_response,
    response,
    sse_reply,
)
from throttllem.replay.live import PROMPT_WORD, drive, prompt_text, prompt_texts
from throttllem.replay.simulate import Slo
from throttllem.replay.workload import PromptSet, Workload, build_workload

INSTRUCTIONS = (
    "Write a limerick about a cat who learns to program in Python.",
    "What are the three primary colors?",
)


@pytest.fixture(scope="module")
def tokenizer() -> PromptTokenizer:
    return PromptTokenizer.from_file()


def workload(prompt_tokens: list[int], texts: tuple[str, ...] | None) -> Workload:
    n = len(prompt_tokens)
    return Workload(
        arrival_s=np.linspace(0.0, 0.01, n),
        prompt_tokens=np.array(prompt_tokens),
        output_tokens=np.array([3, 5][:n]),
        predicted_tokens=np.array([4, 4][:n]),
        cut=np.zeros(n, dtype=bool),
        prompt_texts=texts,
    )


@pytest.mark.parametrize("tokens", [1, 5, 14, 15, 16, 40, 333, 2000])
def test_a_prompt_text_is_the_instruction_first_cut_to_exactly_its_token_count(tokenizer, tokens):
    instruction = INSTRUCTIONS[0]
    text = prompt_text(instruction, tokens, tokenizer)
    assert tokenizer.count(text) == tokens
    own = tokenizer.count(instruction)
    if tokens >= own:
        assert text.startswith(instruction)  # the gateway's length model reads it first
        assert set(text.split("\n\n")[:-1]) <= {instruction}  # then copies of it
    else:
        assert instruction.startswith(text)  # the engine's work wins: the tail is cut


def test_without_prompt_texts_the_live_replay_sends_one_token_words(tokenizer):
    assert prompt_texts(workload([4, 1], None), tokenizer) == [PROMPT_WORD * 3, PROMPT_WORD]


def test_the_workload_carries_each_requests_instruction_through_its_pairing_and_slicing():
    from simulator.traces import Trace

    prompts = PromptSet(
        prompt_tokens=np.array([12, 8]), output_tokens=np.array([30, 40]),
        predicted_tokens=np.array([25, 45]), quantiles=np.array([[25] * 5, [45] * 5]),
        texts=INSTRUCTIONS,
    )  # fmt: skip
    trace = Trace(np.arange(5.0), np.full(5, 100), np.full(5, 7))
    whole = build_workload(trace, 1.0, 4096, "model", seed=3, prompts=prompts)
    assert whole.prompt_texts is not None and len(whole.prompt_texts) == 5
    for text, output in zip(whole.prompt_texts, whole.output_tokens, strict=True):
        assert output == prompts.output_tokens[INSTRUCTIONS.index(text)]  # paired together
    sliced = whole.scaled(1.0, duration_s=2.0)
    assert sliced.prompt_texts == whole.prompt_texts[:3]
    assert build_workload(trace, 1.0, 4096, "oracle").prompt_texts is None


@pytest.mark.parametrize("slo", [Slo(2.0, 0.2, 36.9), Slo(1.0, 0.06)])
async def test_each_live_request_carries_its_prompt_text_length_and_promises(tokenizer, slo):
    def script(request: Received) -> Reply:
        if request.path == "/v1/models":
            return Reply([json_response(200, {"data": [{"id": "twin-model"}]})])
        if request.path == "/metrics":
            metrics = b"throttllem_gpu_energy_joules 100\nthrottllem_gpu_clock_mhz 1410\n"
            return Reply([response(200, metrics, "text/plain")])
        tokens = request.json()["max_tokens"]
        events: list[object] = [{"choices": [{"text": " x"}]} for _ in range(tokens)]
        return sse_reply([*events, {"choices": [], "usage": {"completion_tokens": tokens}},
                          "[DONE]"])  # fmt: skip

    sent = workload([300, 6], INSTRUCTIONS)
    async with ScriptedServer(script) as server:
        run, failed = await drive(server.url, sent, slo)
    assert failed == 0 and run.output_tokens == 8
    completions = [r for r in server.received if r.path == "/v1/completions"]
    bodies = sorted((r.json() for r in completions), key=lambda body: body["max_tokens"])
    for index, body in enumerate(bodies):
        assert body["model"] == "twin-model"
        assert body["max_tokens"] == sent.output_tokens[index] and body["ignore_eos"] is True
        assert tokenizer.count(body["prompt"]) == sent.prompt_tokens[index] - 1  # + the BOS
        assert body["stream"] is True
    assert bodies[0]["prompt"].startswith(INSTRUCTIONS[0])  # padded with its own copies
    assert INSTRUCTIONS[1].startswith(bodies[1]["prompt"])  # 7 tokens, 5 sent: its tail cut
    for request in completions:
        assert request.headers["x-slo-ttft-ms"] == f"{slo.ttft_s * 1000:g}"
        assert request.headers["x-slo-tpot-ms"] == f"{slo.tbt_s * 1000:g}"
        if math.isfinite(slo.e2e_s):
            assert request.headers["x-slo-e2e-ms"] == f"{slo.e2e_s * 1000:g}"
        else:
            assert "x-slo-e2e-ms" not in request.headers
