"""What the twin did, iteration by iteration, and what each cost: the ground truth the
live energy attribution is measured against (`throttllem bench energy`).

Each record spans from the previous record's end to its iteration's end: the energy
the instance's GPUs used over it (the idle gap before the iteration included), the
requests the engine held (running or waiting), those that emitted a token, and those
prefilled with how many tokens. The twin knows these exactly; a real engine does not
tell them. Requests are named by a digest of their prompt text, which the client also
knows, since the engine's own ids never leave the twin.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass
from typing import Any

from simulator.engine import Engine, StepResult

MAX_RECORDS = 400_000  # some three hours of iterations at 30 ms


def prompt_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class IterationRecord:
    started_s: float  # the previous record's end
    ended_s: float
    energy_j: float  # every GPU of the instance
    held: tuple[str, ...]  # running or waiting in the engine
    emitted: tuple[str, ...]  # produced a token
    prefilled: tuple[tuple[str, int], ...]  # (request, tokens prefilled)

    def to_json(self) -> dict[str, Any]:
        return {
            "started_s": self.started_s,
            "ended_s": self.ended_s,
            "energy_j": self.energy_j,
            "held": list(self.held),
            "emitted": list(self.emitted),
            "prefilled": [list(pair) for pair in self.prefilled],
        }


class IterationLog:
    """Bounded; appended to under the twin's engine lock."""

    def __init__(self, engine: Engine, max_records: int = MAX_RECORDS) -> None:
        self.records: deque[IterationRecord] = deque(maxlen=max_records)
        self.idle_power_w = engine.profile.gpu.idle_power_w * len(engine.gpus)
        self._names: dict[str, str] = {}
        self._last_s = engine.started_s
        self._last_mj = self._energy_mj(engine)

    def name(self, request_id: str, prompt: str) -> None:
        """Record the request under its prompt's digest, until it is forgotten."""
        self._names[request_id] = prompt_digest(prompt)

    def forget(self, request_id: str) -> None:
        self._names.pop(request_id, None)

    def since(self, index: int) -> list[IterationRecord]:
        """The records from the `index`-th kept on (0: every one still kept)."""
        return list(self.records)[index:]

    def record(self, engine: Engine, result: StepResult) -> None:
        ended_s = max(result.ended_s, self._last_s)
        energy_mj = self._energy_mj(engine)
        if ended_s == self._last_s and energy_mj == self._last_mj:
            return
        names = self._names
        emitted = tuple(names.get(r, r) for r in result.emitted)
        waiting = tuple(names.get(s.request_id, s.request_id) for s in engine.waiting_sequences())
        scheduled = result.emitted[len(result.emitted) - result.prefill_requests :]
        prefilled = tuple(
            (names.get(r, r), tokens)
            for r, tokens in zip(scheduled, result.prefilled_tokens, strict=True)
        )
        self.records.append(IterationRecord(self._last_s, ended_s,
                                            (energy_mj - self._last_mj) / 1000,
                                            emitted + waiting, emitted, prefilled))  # fmt: skip
        self._last_s, self._last_mj = ended_s, energy_mj

    @staticmethod
    def _energy_mj(engine: Engine) -> float:
        return sum(gpu.energy_mj() for gpu in engine.gpus)
