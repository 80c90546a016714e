"""One generation: admitted through the planner, streamed from the backend, accounted.

It counts tokens exactly, times TTFT/TBT/E2E, keeps its scoreboard entry current, checks
its promises at the end, and leaves the board whenever it ends (done, error, client gone).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from gateway.admission import WORKER, Admitted
from gateway.backends.base import GenerationChunk, GenerationRequest
from gateway.schemas import FinishReason
from gateway.services import Services
from gateway.slo import RequestSlo
from slo_scoreboard.store import RequestEntry


class Generation:
    def __init__(
        self,
        services: Services,
        request: GenerationRequest,
        request_id: str,
        prompt_tokens: int,
        predicted_tokens: int | None,
        slo: RequestSlo,
        length_quantiles: tuple[int, ...] | None = None,
    ) -> None:
        self._services = services
        self.request = request
        self.request_id = request_id
        self.prompt_tokens = prompt_tokens
        self.predicted_tokens = predicted_tokens
        self.length_quantiles = length_quantiles
        self.slo = slo
        self.completion_tokens = 0
        self.admitted: Admitted | None = None
        self._arrival_wall_s = time.time()
        self._arrival_s = time.monotonic()
        self._first_token_s: float | None = None
        self._last_token_s: float | None = None
        self._recorded_s: float | None = None  # when the board last heard its count
        self._finished = False

    @property
    def finish_reason(self) -> FinishReason:
        return "length" if self.completion_tokens >= self.request.max_tokens else "stop"

    async def admit(self) -> None:
        """Wait for the planner's yes (QueueFullError if the queue is full)."""
        entry = RequestEntry(
            request_id=self.request_id,
            arrival_s=self._arrival_wall_s,
            prompt_tokens=self.prompt_tokens,
            max_tokens=self.request.max_tokens,
            predicted_tokens=self.predicted_tokens,
            length_quantiles=self.length_quantiles,
            ttft_slo_s=self.slo.ttft_s,
            tbt_slo_s=self.slo.tpot_s,
            e2e_deadline_s=self._arrival_wall_s + self.slo.e2e_s,
            worker=WORKER,
        )
        self.admitted = await self._services.admission.enter(entry)
        self._services.metrics.in_flight.inc()
        self._services.board_changed()

    async def chunks(self) -> AsyncIterator[GenerationChunk]:
        async for chunk in self._services.backend.generate(self.request):
            await self._account(chunk)
            yield chunk
        self._finished = True

    async def close(self) -> None:
        """Off the board, whatever happened; the books for a finished answer."""
        services = self._services
        if self.admitted is None:
            return
        self.admitted = None  # once
        services.metrics.in_flight.dec()
        await services.admission.release(self.request_id)
        services.board_changed()
        if self._finished:
            self._judge()
        else:
            services.metrics.cancelled.inc()

    def _judge(self) -> None:
        metrics, now_s = self._services.metrics, time.monotonic()
        metrics.e2e_s.observe(now_s - self._arrival_s)
        metrics.tokens.labels("prompt").inc(self.prompt_tokens)
        metrics.tokens.labels("completion").inc(self.completion_tokens)
        misses = []
        if (
            self._first_token_s is not None
            and self._first_token_s - self._arrival_s > self.slo.ttft_s
        ):
            misses.append("ttft")
        if self.completion_tokens > 1 and self._first_token_s is not None:
            assert self._last_token_s is not None
            tpot_s = (self._last_token_s - self._first_token_s) / (self.completion_tokens - 1)
            if tpot_s > self.slo.tpot_s:
                misses.append("tpot")
        if now_s - self._arrival_s > self.slo.e2e_s:
            misses.append("e2e")
        for slo in misses:
            metrics.slo_misses.labels(slo).inc()
        metrics.slo_requests.labels("missed" if misses else "met").inc()

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
            self._first_token_s = now_s
            metrics.ttft_s.observe(now_s - self._arrival_s)
        else:
            metrics.tbt_s.observe(now_s - self._last_token_s)
        self._last_token_s = now_s
        # The first token moves it from queued to running; after that, the board needs its
        # count once per decision window, not once per token (a Redis write each).
        window_s = self._services.parts.decision_window_s
        if self._recorded_s is None or now_s - self._recorded_s >= window_s:
            self._recorded_s = now_s
            wall_s = self._arrival_wall_s + (now_s - self._arrival_s)
            await self._services.store.record_tokens(
                self.request_id, self.completion_tokens, wall_s
            )
