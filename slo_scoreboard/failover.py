"""Keep serving when the shared scoreboard (Redis) is down: fall back to a local one.

`FailoverStateStore` forwards to the primary store and mirrors this worker's own entries
in a local `MemoryStateStore`. When the primary fails, it warns once, sets `degraded`
and serves from the mirror: the scoreboard then holds only this worker's requests, and
the governor, reading `degraded`, holds the highest clock. Every `retry_every_s`
(checked lazily on calls) it pings the primary; once it answers, the still-live local
entries are pushed back, the ids removed meanwhile are removed there too, and it
switches back. No call raises `StateStoreError`. `on_degraded` hears of each switch
(True when it degrades, False when it recovers).

Versions: a snapshot's version is `2 * v` when read from the primary and `2 * v + 1`
from the local store, so a version read on one side never matches on the other, and an
`admit` planned against the other side's scoreboard is refused (the caller re-reads).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from slo_scoreboard.roster import Roster
from slo_scoreboard.store import (
    MemoryStateStore,
    RequestEntry,
    Snapshot,
    StateStore,
    StateStoreError,
)

logger = logging.getLogger(__name__)

_PRIMARY, _LOCAL = 0, 1
_PUSH_ATTEMPTS = 8  # per entry, on version conflicts with other workers
_RECOVERY_PASSES = 4  # push rounds while calls keep changing the local entries


class FailoverStateStore:
    def __init__(
        self,
        primary: StateStore,
        fallback: MemoryStateStore | None = None,
        retry_every_s: float = 2.0,
        on_degraded: Callable[[bool], None] | None = None,
    ) -> None:
        self._primary = primary
        self._on_degraded = on_degraded
        self._local = fallback if fallback is not None else MemoryStateStore()
        self._retry_every_s = retry_every_s
        self._degraded = False
        self._recovering = False
        self._next_retry_s = 0.0
        # While degraded: ids that may still be in the primary, and those of them removed
        # locally (to remove from the primary on recovery).
        self._maybe_on_primary: set[str] = set()
        self._pending_removals: set[str] = set()

    @property
    def degraded(self) -> bool:
        """True while serving from the local store (the primary is unreachable)."""
        return self._degraded

    async def snapshot(self) -> Snapshot:
        await self._maybe_recover()
        if not self._degraded:
            try:
                snap = await self._primary.snapshot()
                return Snapshot(2 * snap.version + _PRIMARY, snap.entries)
            except StateStoreError as exc:
                await self._degrade(exc)
        snap = await self._local.snapshot()
        return Snapshot(2 * snap.version + _LOCAL, snap.entries)

    async def admit(self, entry: RequestEntry, expected_version: int) -> bool:
        await self._maybe_recover()
        side = _LOCAL if self._degraded else _PRIMARY
        if expected_version % 2 != side:
            return False  # planned against the other side's scoreboard
        if side == _PRIMARY:
            try:
                if not await self._primary.admit(entry, expected_version // 2):
                    return False
            except StateStoreError as exc:
                await self._degrade(exc)
                self._maybe_on_primary.add(entry.request_id)  # it may have landed
                return False  # the caller re-reads, now from the local store
            await _force_add(self._local, entry)
            return True
        return await self._local.admit(entry, expected_version // 2)

    async def record_tokens(self, request_id: str, generated_tokens: int, now_s: float) -> None:
        await self._maybe_recover()
        if not self._degraded:
            try:
                await self._primary.record_tokens(request_id, generated_tokens, now_s)
            except StateStoreError as exc:
                await self._degrade(exc)
        await self._local.record_tokens(request_id, generated_tokens, now_s)

    async def remove(self, request_id: str) -> None:
        await self._maybe_recover()
        if not self._degraded:
            try:
                await self._primary.remove(request_id)
            except StateStoreError as exc:
                await self._degrade(exc)
                self._maybe_on_primary.add(request_id)
        if self._degraded and request_id in self._maybe_on_primary:
            self._pending_removals.add(request_id)
        await self._local.remove(request_id)

    async def refresh(self, request_ids: Sequence[str]) -> None:
        await self._maybe_recover()
        if self._degraded:
            return  # local entries do not expire; recovery re-arms the primary's TTLs
        try:
            await self._primary.refresh(request_ids)
        except StateStoreError as exc:
            await self._degrade(exc)

    async def announce(self, worker: str, plans: bool) -> None:
        """On the primary only while serving from it: a degraded worker goes silent
        there, which is how the governor learns that the board misses its requests."""
        await self._maybe_recover()
        if not self._degraded:
            try:
                await self._primary.announce(worker, plans)
            except StateStoreError as exc:
                await self._degrade(exc)
        await self._local.announce(worker, plans)

    async def retire(self, worker: str) -> None:
        if not self._degraded:
            try:
                await self._primary.retire(worker)
            except StateStoreError as exc:
                logger.debug("retiring %s from the primary failed: %s", worker, exc)
        await self._local.retire(worker)

    async def roster(self) -> Roster:
        if not self._degraded:
            try:
                return await self._primary.roster()
            except StateStoreError as exc:
                await self._degrade(exc)
        return await self._local.roster()

    async def ping(self) -> bool:
        """The primary's health, not ours: serving locally still reports unreachable,
        so the readiness probe shows the shared store is down."""
        try:
            return await self._primary.ping()
        except StateStoreError:
            return False

    async def aclose(self) -> None:
        try:
            await self._primary.aclose()
        except StateStoreError as exc:
            logger.debug("closing the primary state store failed: %s", exc)
        await self._local.aclose()

    async def _degrade(self, exc: StateStoreError) -> None:
        if self._degraded:
            return
        self._set_degraded(True)
        self._next_retry_s = time.monotonic() + self._retry_every_s
        local = await self._local.snapshot()
        self._maybe_on_primary = {entry.request_id for entry in local.entries}
        self._pending_removals = set()
        logger.error(
            "shared state store unreachable (%s): the scoreboard is now local to this worker, "
            "which no longer sees other workers' requests, and the governor will hold the "
            "highest clock until it is back; retrying every %.1f s",
            exc,
            self._retry_every_s,
        )

    def _set_degraded(self, degraded: bool) -> None:
        self._degraded = degraded
        if self._on_degraded is not None:
            self._on_degraded(degraded)

    async def _maybe_recover(self) -> None:
        if not self._degraded or self._recovering or time.monotonic() < self._next_retry_s:
            return
        self._recovering = True
        try:
            if await self.ping():
                await self._push_back()
        except StateStoreError as exc:
            logger.debug("state store still unreachable: %s", exc)
        finally:
            self._recovering = False
            self._next_retry_s = time.monotonic() + self._retry_every_s

    async def _push_back(self) -> None:
        """Give the primary this worker's live entries and removals, then switch to it.

        Calls keep serving locally meanwhile, so it pushes in passes until one finds
        nothing new. Token counts that moved on meanwhile are not re-pushed: the next
        `record_tokens` sets them on the primary; a first token stamped meanwhile is.
        """
        pushed: dict[str, RequestEntry] = {}
        for _ in range(_RECOVERY_PASSES):
            for request_id in list(self._pending_removals):
                await self._primary.remove(request_id)
                self._pending_removals.discard(request_id)
            live = (await self._local.snapshot()).entries
            todo = [entry for entry in live if _needs_push(pushed.get(entry.request_id), entry)]
            if not todo and not self._pending_removals:
                self._set_degraded(False)
                self._maybe_on_primary = set()
                logger.warning(
                    "shared state store is back: pushed %d live entries of this worker, "
                    "serving from it again",
                    len(pushed),
                )
                return
            self._maybe_on_primary.update(entry.request_id for entry in todo)
            await self._push(todo)
            pushed.update((entry.request_id, entry) for entry in todo)
        logger.debug("local entries kept changing during recovery; trying again later")

    async def _push(self, entries: list[RequestEntry]) -> None:
        if not entries:
            return
        version = (await self._primary.snapshot()).version
        for entry in entries:
            for _ in range(_PUSH_ATTEMPTS):
                if await self._primary.admit(entry, version):
                    version += 1
                    break
                version = (await self._primary.snapshot()).version
            else:
                logger.warning(
                    "could not push request %s back to the shared state store: it stayed "
                    "busy for %d attempts",
                    entry.request_id,
                    _PUSH_ATTEMPTS,
                )


def _needs_push(pushed: RequestEntry | None, live: RequestEntry) -> bool:
    return pushed is None or pushed.first_token_s != live.first_token_s


async def _force_add(store: MemoryStateStore, entry: RequestEntry) -> None:
    """Mirror an entry the primary accepted; the local version is not checked."""
    while not await store.admit(entry, (await store.snapshot()).version):
        pass
