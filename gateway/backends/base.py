"""The contract every inference-server client meets.

A backend always streams upstream, even when the client asked for one response, so
the gateway knows how many tokens each request has generated so far.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol


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
    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream the answer; raises BackendError or BackendUnavailableError."""
        ...

    async def ready(self) -> bool:
        """Whether the server answers and the model is loaded."""
        ...

    async def aclose(self) -> None: ...
