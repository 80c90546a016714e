"""The contract every inference-server client meets.

A backend always streams upstream, even when the client asked for one response, so
the gateway knows how many tokens each request has generated so far.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from gateway.errors import BackendError


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    ignore_eos: bool = False


@dataclass(frozen=True)
class GenerationChunk:
    """New text from the server. Counts are None when the server does not report them."""

    text: str
    output_tokens: int | None = None
    prompt_tokens: int | None = None


class Backend(Protocol):
    # Whether closing the answer's stream stops the engine's work on it (vLLM aborts the
    # request; Triton's HTTP frontend does not: the engine finishes it regardless).
    cancels_on_close: bool

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream the answer; raises BackendError or BackendUnavailableError."""
        ...

    async def ready(self) -> bool:
        """Whether the server answers and the model is loaded."""
        ...

    async def aclose(self) -> None: ...


def arrived_together(
    events: list[str], parse: Callable[[str], GenerationChunk | None]
) -> Iterator[GenerationChunk]:
    """The chunks of events that arrived in one read, as a single chunk when each carries
    its own token count: when the gateway falls behind, it forwards what piled up in one
    step instead of one per token. An error event still comes after what preceded it."""
    chunks: list[GenerationChunk] = []
    failure: BackendError | None = None
    for data in events:
        try:
            chunk = parse(data)
        except BackendError as error:
            failure = error
            break
        if chunk is not None:
            chunks.append(chunk)
    if len(chunks) > 1 and all(chunk.output_tokens is not None for chunk in chunks):
        prompt_counts = [c.prompt_tokens for c in chunks if c.prompt_tokens is not None]
        yield GenerationChunk(
            text="".join(chunk.text for chunk in chunks),
            output_tokens=sum(chunk.output_tokens or 0 for chunk in chunks),
            prompt_tokens=prompt_counts[-1] if prompt_counts else None,
        )
    else:
        yield from chunks
    if failure is not None:
        raise failure
