"""Triton's generate extension, in front of the TensorRT-LLM `ensemble` model.

Field mapping (OpenAI -> ensemble input):

    prompt       -> text_input           max_tokens  -> max_tokens
    temperature  -> temperature          top_p       -> top_p
    stop         -> stop_words           seed        -> seed mod 2^64 (the engine's is unsigned)
    ignore_eos   -> min_tokens = max_tokens (the engine may not stop early)
    (always)     -> stream = true, return_num_input_tokens, return_num_output_tokens

Each streamed event carries the new text in `text_output` and, when asked for, the
prompt length in `num_input_tokens` and the tokens of this event in `num_output_tokens`.
Triton sends no `[DONE]`: the stream simply ends. An error after the stream started
arrives as a `{"error": ...}` event under HTTP 200, so every event is checked.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from gateway.backends.base import GenerationChunk, GenerationRequest, arrived_together
from gateway.backends.http_client import UpstreamConnectionError, decode_json
from gateway.backends.sse import sse_batches
from gateway.backends.upstream import UpstreamClient, UpstreamClientKind, upstream_client
from gateway.errors import BackendError, BackendUnavailableError, InvalidRequestError


class TritonBackend:
    cancels_on_close = False  # per Triton's docs only gRPC and the C API cancel a request

    def __init__(
        self,
        client: UpstreamClient,
        model: str = "ensemble",
        route: Callable[[], str] | None = None,
    ) -> None:
        self._client = client
        self._model = model
        self._route = route  # instance scaling: the model new requests go to now

    @property
    def model(self) -> str:
        return self._route() if self._route is not None else self._model

    @classmethod
    def connect(
        cls,
        base_url: str,
        model: str,
        timeout_s: float,
        connect_timeout_s: float,
        route: Callable[[], str] | None = None,
        client_kind: UpstreamClientKind = UpstreamClientKind.httptools,
    ) -> TritonBackend:
        client = upstream_client(
            client_kind, base_url, timeout_s=timeout_s, connect_timeout_s=connect_timeout_s
        )
        return cls(client, model, route)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        model = self.model
        url = f"/v2/models/{model}/generate_stream"
        answered = False
        try:
            async with self._client.stream("POST", url, _ensemble_inputs(request)) as response:
                answered = True
                if response.status != 200:
                    raise _error_from_status(response.status, await response.read(), model)
                async for events in sse_batches(response.iter_bytes()):
                    for chunk in arrived_together(events, _chunk):
                        yield chunk
        except UpstreamConnectionError as error:
            if answered:  # it took the request: the engine failed, not the network path
                raise BackendError(
                    f"Triton at {self._client.base_url} broke off its answer: {error!r}"
                ) from error
            raise BackendUnavailableError(
                f"Triton at {self._client.base_url} is unreachable: {error!r}"
            ) from error

    async def ready(self) -> bool:
        try:
            status, _ = await self._client.request("GET", f"/v2/models/{self.model}/ready")
        except UpstreamConnectionError:
            return False
        return status == 200

    async def aclose(self) -> None:
        await self._client.aclose()


def _ensemble_inputs(request: GenerationRequest) -> dict[str, Any]:
    inputs: dict[str, Any] = {
        "text_input": request.prompt,
        "max_tokens": request.max_tokens,
        "stream": True,
        "return_num_input_tokens": True,
        "return_num_output_tokens": True,
    }
    if request.temperature is not None:
        inputs["temperature"] = request.temperature
    if request.top_p is not None:
        inputs["top_p"] = request.top_p
    if request.stop:
        inputs["stop_words"] = request.stop
    if request.seed is not None:
        inputs["seed"] = request.seed % 2**64  # -1 is 2^64 - 1, as in two's complement
    if request.ignore_eos:
        inputs["min_tokens"] = request.max_tokens
    return inputs


def _chunk(data: str) -> GenerationChunk:
    try:
        event = json.loads(data)
    except json.JSONDecodeError as error:
        raise BackendError(f"Triton sent an event that is not JSON: {data[:200]!r}") from error
    if "error" in event:
        raise BackendError(f"Triton: {_last_line(str(event['error']))}")
    return GenerationChunk(
        text=str(event.get("text_output", "")),
        output_tokens=_int_or_none(event.get("num_output_tokens")),
        prompt_tokens=_int_or_none(event.get("num_input_tokens")),
    )


def _error_from_status(status: int, body: bytes, model: str) -> Exception:
    answer = decode_json(body)
    if isinstance(answer, dict) and "error" in answer:
        message = str(answer["error"])
    else:
        message = body.decode(errors="replace")
    if status == 400:
        return InvalidRequestError(f"Triton refused the request: {_last_line(message)}")
    if status in (404, 503):
        return BackendUnavailableError(f"Triton model {model!r} is not available: {message}")
    return BackendError(f"Triton answered HTTP {status}: {_last_line(message)}")


def _last_line(message: str) -> str:
    """Triton errors from Python models carry a whole traceback; its last line says it."""
    lines = [line for line in message.strip().splitlines() if line.strip()]
    return lines[-1] if lines else message


def _int_or_none(value: object) -> int | None:
    if isinstance(value, list):
        value = value[0] if value else None
    return int(value) if isinstance(value, (int, float)) else None
