"""The roster of gateway workers, and whether the scoreboard holds every request the
engine is serving.

A gateway worker that loses Redis serves from a board of its own (slo_scoreboard/
failover.py): its new requests and token counts no longer reach the shared board, which
then shows less than the engine holds. A worker without predictors admits everything
unplanned. Either way a clock planned on the shared board would be too low. Every worker
announces itself every `ANNOUNCE_EVERY_S` while it serves from the shared board, saying
whether it plans, and marks itself retired when it stops. The governor trusts the board
only when every worker it knows of plans and has announced within `STALE_AFTER_S` and
since the governor last lost sight of the store (an outage, or a gap in its reads: while
it was not leading, say). A known worker missing from the roster (a Redis restarted empty)
is not trusted until it announces again.

A worker it has not heard from for the scoreboard's entry TTL is forgotten: a dead
worker's entries have expired by then, so the board is whole again. Silence counts only
while the governor could read the store: after its outage, a worker last seen before it
(degraded, not dead: it rejoins within its retry interval, slo_scoreboard/failover.py)
is awaited for a whole TTL again. An entry whose worker
never announced itself (a gateway of an older version) is not trusted either. Until it
has listened for `STALE_AFTER_S` after starting, the governor knows no roster and trusts
nothing. Times are the store's clock (the Redis server's), never the hosts'.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class WorkerStatus:
    """A gateway worker as it last announced itself on the scoreboard."""

    worker: str
    seen_s: float  # the store's clock at its last announcement
    plans: bool  # it plans admission (both predictors loaded); False: it admits everything
    retired: bool = False  # it stopped, its entries with it


@dataclass(frozen=True)
class Roster:
    """The workers that announced themselves, read at `now_s` on the same clock."""

    now_s: float
    workers: list[WorkerStatus]


ANNOUNCE_EVERY_S = 0.25
STALE_AFTER_S = 1.0  # four announcements missed: degraded, stalled or dead


@dataclass
class BoardTrust:
    forget_after_s: float  # the scoreboard's entry TTL
    stale_after_s: float = STALE_AFTER_S
    _last_seen_s: dict[str, float] = field(default_factory=dict)
    _listening_since_s: float | None = None
    _last_read_s: float | None = None
    _outage_ended_s: float = float("-inf")
    _in_outage: bool = False

    def unreadable(self) -> None:
        """The governor could not read the store: announcements made before it reads
        again may come from workers that have since lost it."""
        self._in_outage = True

    def distrust(self, roster: Roster, owners: Iterable[str] = ()) -> str | None:
        """Why the board cannot be trusted now, or None when it can. `owners`: the
        workers of the board's entries (an empty name is no worker's, and not judged)."""
        now_s = roster.now_s
        blind = self._last_read_s is not None and now_s - self._last_read_s > self.stale_after_s
        if self._in_outage or blind:
            self._in_outage = False
            self._outage_ended_s = now_s
        self._last_read_s = now_s
        if self._listening_since_s is None:
            self._listening_since_s = now_s
        listed = {status.worker: status for status in roster.workers}
        for status in roster.workers:
            self._last_seen_s[status.worker] = status.seen_s
        self._last_seen_s = {
            worker: seen_s
            for worker, seen_s in self._last_seen_s.items()
            if now_s - max(seen_s, self._outage_ended_s) <= self.forget_after_s
            and not (worker in listed and listed[worker].retired)
        }
        if now_s - self._listening_since_s < self.stale_after_s:
            return "learning which gateway workers are live"
        fresh_after_s = max(now_s - self.stale_after_s, self._outage_ended_s)
        for worker, seen_s in sorted(self._last_seen_s.items()):
            if worker not in listed:
                return f"gateway worker {worker} is missing from the roster"
            if seen_s < fresh_after_s:
                return f"gateway worker {worker} silent for {now_s - seen_s:.1f} s"
        for status in roster.workers:
            if not status.plans and not status.retired:
                return f"gateway worker {status.worker} admits without planning"
        unknown = sorted(set(owners) - self._last_seen_s.keys() - {""})
        if unknown:
            return f"entries of gateway worker {unknown[0]}, which never announced itself"
        return None
