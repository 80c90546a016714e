"""The scoreboard of requests in flight, behind one small interface.

The governor projects the engine's future from it; the metrics count from it. The
in-memory store serves one process; the Redis store (shared by workers) comes later.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol


@dataclass(frozen=True)
class RequestEntry:
    request_id: str
    arrival_s: float
    prompt_tokens: int
    max_tokens: int
    predicted_tokens: int | None = None  # None: no length model loaded
    generated_tokens: int = 0
    first_token_s: float | None = None


class StateStore(Protocol):
    async def add(self, entry: RequestEntry) -> None: ...

    async def record_tokens(self, request_id: str, generated_tokens: int, now_s: float) -> None: ...

    async def remove(self, request_id: str) -> None: ...

    async def snapshot(self) -> list[RequestEntry]: ...

    async def ping(self) -> bool: ...


class MemoryStateStore:
    """One process's scoreboard. Event-loop confined: no locking needed."""

    def __init__(self) -> None:
        self._entries: dict[str, RequestEntry] = {}

    async def add(self, entry: RequestEntry) -> None:
        self._entries[entry.request_id] = entry

    async def record_tokens(self, request_id: str, generated_tokens: int, now_s: float) -> None:
        entry = self._entries.get(request_id)
        if entry is None:
            return
        first_token_s = entry.first_token_s if entry.first_token_s is not None else now_s
        self._entries[request_id] = replace(
            entry, generated_tokens=generated_tokens, first_token_s=first_token_s
        )

    async def remove(self, request_id: str) -> None:
        self._entries.pop(request_id, None)

    async def snapshot(self) -> list[RequestEntry]:
        return list(self._entries.values())

    async def ping(self) -> bool:
        return True
