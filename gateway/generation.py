"""One generation in flight: streams the backend's chunks and keeps the books.

It counts tokens exactly, times TTFT/TBT/E2E, keeps the scoreboard entry current and
removes it when the generation ends for any reason (done, error, client gone).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

from gateway.backends.base import GenerationChunk, GenerationRequest
from gateway.schemas import FinishReason
from gateway.services import Services
from gateway.state import RequestEntry


class Generation:
    def __init__(
        self,
        services: Services,
        request: GenerationRequest,
        prompt_tokens: int,
        predicted_tokens: int | None = None,
    ) -> None:
        self._services = services
        self.request = request
        self.request_id = uuid.uuid4().hex
        self.prompt_tokens = prompt_tokens
        self.predicted_tokens = predicted_tokens
        self.completion_tokens = 0
        self._arrival_s = time.monotonic()
        self._last_token_s: float | None = None

    @property
    def finish_reason(self) -> FinishReason:
        return "length" if self.completion_tokens >= self.request.max_tokens else "stop"

    async def chunks(self) -> AsyncIterator[GenerationChunk]:
        services = self._services
        await services.store.add(
            RequestEntry(
                request_id=self.request_id,
                arrival_s=self._arrival_s,
                prompt_tokens=self.prompt_tokens,
                max_tokens=self.request.max_tokens,
                predicted_tokens=self.predicted_tokens,
            )
        )
        services.metrics.in_flight.inc()
        try:
            async for chunk in services.backend.generate(self.request):
                await self._account(chunk)
                yield chunk
            services.metrics.e2e_s.observe(time.monotonic() - self._arrival_s)
            services.metrics.tokens.labels("prompt").inc(self.prompt_tokens)
            services.metrics.tokens.labels("completion").inc(self.completion_tokens)
        finally:
            services.metrics.in_flight.dec()
            await services.store.remove(self.request_id)
            services.request_finished()

    async def _account(self, chunk: GenerationChunk) -> None:
        now_s = time.monotonic()
        if chunk.prompt_tokens is not None:
            self.prompt_tokens = chunk.prompt_tokens  # the server's own count is exact
        new_tokens = (
            chunk.output_tokens if chunk.output_tokens is not None else int(bool(chunk.text))
        )
        if new_tokens <= 0:
            return
        self.completion_tokens += new_tokens
        metrics = self._services.metrics
        if self._last_token_s is None:
            metrics.ttft_s.observe(now_s - self._arrival_s)
        else:
            metrics.tbt_s.observe(now_s - self._last_token_s)
        self._last_token_s = now_s
        await self._services.store.record_tokens(self.request_id, self.completion_tokens, now_s)
