"""One generation: admitted through the planner, streamed from the backend, accounted.

It counts tokens exactly, times TTFT/TBT/E2E, keeps its scoreboard entry current, checks
its promises at the end, and leaves the board when the engine is done with it, settling
its energy account then (slo_scoreboard/energy_ledger.py): `energy` is its share of the
GPUs' energy, or None where the ledger cannot vouch for one.

The upstream stream is read by a task of its own (`_pump`), not by the client's handler,
so the answer outlives a client that leaves: when the backend cannot cancel a request
(Triton over HTTP finishes it regardless), the pump keeps reading until the engine ends
it, and the request stays on the board meanwhile with its tokens counted, so that the
governor and admission plan for the work the engine really holds. A backend that does
cancel on close has its stream closed at once instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import anyio

from gateway.admission import WORKER, Admitted
from gateway.backends.base import GenerationChunk, GenerationRequest
from gateway.schemas import FinishReason
from gateway.services import Services
from gateway.slo import RequestSlo
from slo_scoreboard.energy_ledger import RequestEnergy, Settlement
from slo_scoreboard.store import RequestEntry, StateStoreError

log = logging.getLogger(__name__)

_END = object()  # the upstream's answer is complete
_abandoned: set[asyncio.Task[None]] = set()  # pumps the engine still feeds; kept referenced


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
        self._admitted_wall_s = self._arrival_wall_s
        self.energy: RequestEnergy | None = None
        self.predicted_energy_j: float | None = None
        self._first_token_s: float | None = None
        self._last_token_s: float | None = None
        self._recorded_s: float | None = None  # when the board last heard its count
        self._finished = False
        self._pump: asyncio.Task[None] | None = None
        self._received: asyncio.Queue[object] = asyncio.Queue()
        self._client_gone = False

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
        self._admitted_wall_s = time.time()
        self._predict_energy(self.admitted)
        self._services.metrics.in_flight.inc()
        self._services.board_changed()

    def _predict_energy(self, admitted: Admitted) -> None:
        parts = self._services.parts
        if parts.energy_forecast is None or parts.ledger is None:
            return
        if admitted.board is None or self.predicted_tokens is None:
            return
        self.predicted_energy_j = parts.energy_forecast.predict_j(
            admitted.board, self.prompt_tokens, self.predicted_tokens, parts.planned_clock_mhz()
        )

    async def chunks(self) -> AsyncIterator[GenerationChunk]:
        """The answer as the upstream sends it; its errors raised here, in order."""
        if self._pump is None:
            self._pump = asyncio.create_task(self._read_upstream(), name=self.request_id)
        while True:
            item = await self._received.get()
            if item is _END:
                self._finished = True
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, GenerationChunk)
            yield item

    async def close(self) -> None:
        """The client is done with it (answered, failed, or gone). Off the board now,
        unless the engine keeps working on it: then once the engine is done."""
        if self.admitted is None:
            return
        pump = self._pump
        if pump is None or pump.done() or self._finished:
            if pump is not None:
                await asyncio.shield(pump)  # done, or ending after the answer's last part
            await self._leave_board()
            return
        self._client_gone = True  # the pump reads on, but keeps nothing for us
        if self._services.backend.cancels_on_close:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
            await self._leave_board()
            return
        _abandoned.add(pump)
        pump.add_done_callback(_abandoned.discard)

    async def _read_upstream(self) -> None:
        """Read the whole answer; leave the board at its end if the client left before."""
        try:
            async for chunk in self._services.backend.generate(self.request):
                await self._account(chunk)
                if not self._client_gone:
                    self._received.put_nowait(chunk)
            self._received.put_nowait(_END)
        except Exception as error:  # the client's handler raises it, in order
            self._received.put_nowait(error)
            if self._client_gone:
                log.warning("request %s, abandoned by its client: upstream failed: %s",
                            self.request_id, error)  # fmt: skip
        finally:
            if self._client_gone:
                with anyio.CancelScope(shield=True):
                    await self._leave_board()

    async def _leave_board(self) -> None:
        services = self._services
        if self.admitted is None:
            return
        self.admitted = None  # once
        services.metrics.in_flight.dec()
        await services.admission.release(self.request_id)
        services.board_changed()
        await self._settle_energy()
        if self._finished:
            self._judge()
        else:
            services.metrics.cancelled.inc()

    async def _settle_energy(self) -> None:
        """Close its energy account, off the board (so no window bills it again)."""
        ledger = self._services.parts.ledger
        if ledger is None:
            return
        settlement = Settlement(self.request_id, self.completion_tokens, self.prompt_tokens,
                                self._admitted_wall_s, time.time())  # fmt: skip
        try:
            energy = await ledger.settle(settlement)
        except StateStoreError as error:
            log.debug("request %s: energy not settled: %s", self.request_id, error)
            return
        if self._finished:
            self.energy = energy

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
        if self.energy is not None:
            model = self._services.settings.served_model_name
            metrics.energy_j.labels(model).observe(self.energy.total_j)
            if self.completion_tokens > 0:
                metrics.energy_per_token_j.labels(model).observe(
                    self.energy.total_j / self.completion_tokens
                )
            if self.predicted_energy_j is not None and self.energy.total_j > 0:
                metrics.energy_prediction_error.labels(model).observe(
                    self.predicted_energy_j / self.energy.total_j - 1
                )
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
