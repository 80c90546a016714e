"""The twin as a decoupled Triton model named `ensemble`, with TensorRT-LLM's inputs.

Clients call it exactly as they call the TensorRT-LLM ensemble:
`/v2/models/ensemble/generate_stream` streams one event per token.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import numpy as np

from simulator.engine import EngineRequest, RequestRejectedError
from simulator.realtime import RealtimeEngine
from simulator.responses import Responses

MODEL_NAME = "ensemble"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: type
    optional: bool = True


INPUTS = (
    TensorSpec("text_input", bytes, optional=False),
    TensorSpec("max_tokens", np.int32, optional=False),
    TensorSpec("stream", np.bool_),
    TensorSpec("end_id", np.int32),
    TensorSpec("pad_id", np.int32),
    TensorSpec("bad_words", bytes),
    TensorSpec("stop_words", bytes),
    TensorSpec("temperature", np.float32),
    TensorSpec("top_p", np.float32),
    TensorSpec("seed", np.uint64),
    TensorSpec("min_tokens", np.int32),
    TensorSpec("return_num_input_tokens", np.bool_),
    TensorSpec("return_num_output_tokens", np.bool_),
)
OUTPUTS = (
    TensorSpec("text_output", bytes),
    TensorSpec("num_input_tokens", np.int32),
    TensorSpec("num_output_tokens", np.int32),
)


class BadRequestError(ValueError):
    """The request cannot be served; Triton answers 400 with the message, and the engine
    goes on serving everyone else.

    PyTriton formats a model's exception with `traceback.format_exception`, which would
    send the client our whole stack. Hiding the traceback (and the module) from it leaves
    the one line a client needs: "BadRequestError: <message>".
    """

    __module__ = "builtins"

    @property  # type: ignore[override]
    def __traceback__(self) -> None:
        return None

    @__traceback__.setter
    def __traceback__(self, value: object) -> None:
        pass


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str
    max_tokens: int
    min_tokens: int
    stream: bool
    return_num_input_tokens: bool
    return_num_output_tokens: bool

    @classmethod
    def from_inputs(cls, data: Mapping[str, np.ndarray]) -> GenerateRequest:
        raw_prompt = _scalar(data, "text_input", b"")
        try:
            prompt = (
                raw_prompt.decode("utf-8") if isinstance(raw_prompt, bytes) else str(raw_prompt)
            )
        except UnicodeDecodeError as error:
            raise BadRequestError(f"text_input is not valid UTF-8: {error}") from error
        max_tokens = int(_scalar(data, "max_tokens", 0))
        if max_tokens <= 0:
            raise BadRequestError(f"max_tokens must be positive, got {max_tokens}")
        return cls(
            prompt=prompt,
            max_tokens=max_tokens,
            min_tokens=int(_scalar(data, "min_tokens", 0)),
            stream=bool(_scalar(data, "stream", False)),
            return_num_input_tokens=bool(_scalar(data, "return_num_input_tokens", False)),
            return_num_output_tokens=bool(_scalar(data, "return_num_output_tokens", False)),
        )


def _scalar(data: Mapping[str, np.ndarray], name: str, default: object) -> object:
    value = data.get(name)
    if value is None or value.size == 0:
        return default
    return value.reshape(-1)[0]


class TwinModel:
    """PyTriton inference callable: one async generator per request."""

    def __init__(self, engine: RealtimeEngine, responses: Responses) -> None:
        self._engine = engine
        self._responses = responses

    async def __call__(self, requests: list) -> AsyncIterator[list[dict[str, np.ndarray]]]:
        (request,) = requests  # batching is off: Triton hands over one request at a time
        generate = GenerateRequest.from_inputs(request.data)
        async for response in self._generate(generate):
            yield [response]

    async def _generate(self, request: GenerateRequest) -> AsyncIterator[dict[str, np.ndarray]]:
        plan = self._responses.plan(request.prompt, request.max_tokens, request.min_tokens)
        prompt_tokens = self._responses.prompt_tokens(request.prompt)
        sequence = EngineRequest(
            request_id=uuid.uuid4().hex,
            prompt_tokens=prompt_tokens,
            max_tokens=request.max_tokens,
            output_tokens=plan.output_tokens,
        )
        try:
            self._engine.locked(
                lambda engine, now_s: engine.check(prompt_tokens, request.max_tokens)
            )
        except RequestRejectedError as error:
            raise BadRequestError(str(error)) from None
        collected: list[str] = []
        async for index in self._engine.generate(sequence, request.prompt):
            piece = plan.pieces[index]
            if request.stream:
                yield _outputs(request, piece, prompt_tokens, 1)  # per event, like the delta text
            else:
                collected.append(piece)
        if not request.stream:
            yield _outputs(request, "".join(collected), prompt_tokens, len(collected))


def _outputs(
    request: GenerateRequest, text: str, prompt_tokens: int, output_tokens: int
) -> dict[str, np.ndarray]:
    outputs = {"text_output": np.array([text.encode("utf-8")], dtype=object)}
    if request.return_num_input_tokens:
        outputs["num_input_tokens"] = np.array([prompt_tokens], dtype=np.int32)
    if request.return_num_output_tokens:
        outputs["num_output_tokens"] = np.array([output_tokens], dtype=np.int32)
    return outputs
