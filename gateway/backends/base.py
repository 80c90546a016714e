"""The contract every inference-server client meets.

A backend always streams upstream, even when the client asked for one response, so
the gateway knows how many tokens each request has generated so far.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

import httpx

# The gateway's admission bounds the streams in flight. httpx's default of 100 connections
# would queue the rest inside the client, out of the gateway's sight, and a full pool can
# wedge for good once cancelled requests leak its slots (encode/httpcore#1093).
POOL_SHARDS = 16
POOL_LIMITS = httpx.Limits(max_connections=None, max_keepalive_connections=512 // POOL_SHARDS)


class ShardedTransport(httpx.AsyncBaseTransport):
    """Requests spread in turn over several connection pools of `POOL_LIMITS` each.

    httpcore's pool walks every connection it holds whenever a request starts or ends,
    polling each idle one's socket (encode/httpx#3215). With one pool, the connections a
    burst leaves behind make every later request slower, and an overloaded gateway falls
    further behind; with 16, each walk is a sixteenth as long.
    """

    def __init__(self, shards: int = POOL_SHARDS, limits: httpx.Limits = POOL_LIMITS) -> None:
        self._pools = [httpx.AsyncHTTPTransport(limits=limits) for _ in range(shards)]
        self._turns = itertools.cycle(self._pools)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await next(self._turns).handle_async_request(request)

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()


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
