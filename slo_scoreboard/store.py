"""The scoreboard of requests admitted to the engine, behind one small interface.

The planner projects the engine's future from it, the governor picks clocks from it,
the metrics count from it. `MemoryStateStore` serves one process; `RedisStateStore`
(slo_scoreboard/redis_store.py) is shared by every worker and the stand-alone governor.

Admission is compare-and-add: a worker reads a snapshot, asks the planner, then adds its
request only if the set of requests has not changed since (the snapshot's version); if
it has, it reads again and decides again. So two workers never both admit into the same
headroom. Times are wall-clock seconds (`time.time()`), comparable across hosts.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

from slo_scoreboard.roster import Roster, WorkerStatus


class StateStoreError(Exception):
    """The store cannot be reached or answered nonsense."""


@dataclass(frozen=True)
class RequestEntry:
    request_id: str
    arrival_s: float
    prompt_tokens: int
    max_tokens: int
    predicted_tokens: int | None = None  # None: no length model loaded
    # The predicted length at predictor.length.PLANNING_LEVELS, to re-estimate the rest
    # of an answer that outlives its median.
    length_quantiles: tuple[int, ...] | None = None
    ttft_slo_s: float = math.inf
    tbt_slo_s: float = math.inf
    e2e_deadline_s: float = math.inf  # absolute
    generated_tokens: int = 0
    first_token_s: float | None = None
    counted_s: float | None = None  # when `generated_tokens` was counted (a window's lag)
    worker: str = ""  # host:pid of the gateway worker that owns it

    def to_json(self) -> str:
        return json.dumps({k: _finite_or_none(v) for k, v in asdict(self).items()})

    @classmethod
    def from_json(cls, text: str | bytes) -> RequestEntry:
        fields: dict[str, Any] = json.loads(text)
        for name in ("ttft_slo_s", "tbt_slo_s", "e2e_deadline_s"):
            if fields.get(name) is None:
                fields[name] = math.inf
        if fields.get("length_quantiles") is not None:
            fields["length_quantiles"] = tuple(fields["length_quantiles"])
        return cls(**fields)


def _finite_or_none(value: object) -> object:
    """JSON has no infinity: an absent promise is stored as null."""
    return None if isinstance(value, float) and math.isinf(value) else value


@dataclass(frozen=True)
class Snapshot:
    version: int  # changes whenever a request is added or removed
    entries: list[RequestEntry]


class StateStore(Protocol):
    async def snapshot(self) -> Snapshot: ...

    async def admit(self, entry: RequestEntry, expected_version: int) -> bool:
        """Add `entry` if the version is still `expected_version`; False if it moved on."""
        ...

    async def record_tokens(self, request_id: str, generated_tokens: int, now_s: float) -> None:
        """Its generated tokens so far; the first call also stamps its first token."""
        ...

    async def remove(self, request_id: str) -> None: ...

    async def refresh(self, request_ids: Sequence[str]) -> None:
        """The owner is alive: keep these entries from expiring."""
        ...

    async def announce(self, worker: str, plans: bool) -> None:
        """`worker` is alive and its entries are on this store (announced every few
        hundred ms): what the governor reads to trust the board (slo_scoreboard/roster.py)."""
        ...

    async def retire(self, worker: str) -> None:
        """`worker` stops: marked retired, so nobody waits to hear from it again."""
        ...

    async def roster(self) -> Roster: ...

    async def ping(self) -> bool: ...

    async def aclose(self) -> None: ...


class MemoryStateStore:
    """One process's scoreboard. Event-loop confined: no locking needed."""

    def __init__(self) -> None:
        self._entries: dict[str, RequestEntry] = {}
        self._version = 0
        self._workers: dict[str, WorkerStatus] = {}

    async def snapshot(self) -> Snapshot:
        return Snapshot(self._version, list(self._entries.values()))

    async def admit(self, entry: RequestEntry, expected_version: int) -> bool:
        if expected_version != self._version:
            return False
        self._entries[entry.request_id] = entry
        self._version += 1
        return True

    async def record_tokens(self, request_id: str, generated_tokens: int, now_s: float) -> None:
        entry = self._entries.get(request_id)
        if entry is None:
            return
        first_token_s = entry.first_token_s if entry.first_token_s is not None else now_s
        self._entries[request_id] = replace(
            entry,
            generated_tokens=generated_tokens,
            first_token_s=first_token_s,
            counted_s=now_s,
        )

    async def remove(self, request_id: str) -> None:
        if self._entries.pop(request_id, None) is not None:
            self._version += 1

    async def refresh(self, request_ids: Sequence[str]) -> None:
        return None

    async def announce(self, worker: str, plans: bool) -> None:
        self._workers[worker] = WorkerStatus(worker, time.time(), plans)

    async def retire(self, worker: str) -> None:
        self._workers[worker] = WorkerStatus(worker, time.time(), False, retired=True)

    async def roster(self) -> Roster:
        return Roster(time.time(), list(self._workers.values()))

    async def ping(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None
