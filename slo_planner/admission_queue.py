"""The admission queue without I/O: who waits, in which order, and who may go now.

Requests that may not join the board yet wait ordered by their first-token deadline
(ties: first come). Only the head is tried: nobody jumps ahead of the most urgent. The
head goes when the planner admits it on the current board, and also when it would miss
its own promise even at the highest clock (waiting cannot help it: it is served at once
and counted as lost). Without a planner everything goes at once. A request whose client
left is dropped when it reaches the head.

The gateway's admission (gateway/admission.py) drives it on the wall clock against the
scoreboard; the replay drives it on the virtual clock against the twin's engine.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from predictor.board import Board, Requests
from slo_planner.admission import AdmissionPlanner, Verdict

Item = TypeVar("Item")


@dataclass(order=True)
class _Place(Generic[Item]):
    deadline_s: float
    sequence: int
    item: Item = field(compare=False)


class AdmissionQueue(Generic[Item]):
    def __init__(
        self,
        planner: AdmissionPlanner | None,
        rows_of: Callable[[Item], Requests],
        max_waiting: float = math.inf,
        abandoned: Callable[[Item], bool] | None = None,
    ) -> None:
        """`rows_of` gives an item's one row of the board; `abandoned`, whether its client
        left; more than `max_waiting` waiting makes `enqueue` refuse."""
        self.planner = planner
        self._rows_of = rows_of
        self._max_waiting = max_waiting
        self._abandoned = abandoned or _never
        self._heap: list[_Place[Item]] = []
        self._sequence = itertools.count()

    @property
    def empty(self) -> bool:
        """Nobody queued (abandoned ones included): a newcomer may be tried at once."""
        return not self._heap

    @property
    def waiting(self) -> int:
        return sum(1 for place in self._heap if not self._abandoned(place.item))

    def verdict(self, board: Board | None, candidate: Requests) -> Verdict:
        """May the one row `candidate` join `board` now? (`board` may be None only
        without a planner.)"""
        if self.planner is None:
            return Verdict.ADMIT
        if board is None:
            raise ValueError("a planner needs the board to decide on")
        return self.planner.verdict_on(board, candidate)

    def enqueue(self, item: Item, deadline_s: float) -> bool:
        """Queue it by its first-token deadline; False when too many wait already."""
        if len(self._heap) >= self._max_waiting and self.waiting >= self._max_waiting:
            return False  # (the heap's length bounds the count: count only when it may tell)
        heapq.heappush(self._heap, _Place(deadline_s, next(self._sequence), item))
        return True

    def head(self) -> Item | None:
        """The most urgent request still waiting (those whose client left are dropped)."""
        while self._heap and self._abandoned(self._heap[0].item):
            heapq.heappop(self._heap)
        return self._heap[0].item if self._heap else None

    def next_to_admit(self, board: Board | None) -> tuple[Item, Verdict] | None:
        """The head and its verdict if it may go now on `board` (admitted, or lost);
        None if nobody waits or the head must wait. Take it with `pop_head` once sent."""
        head = self.head()
        if head is None:
            return None
        verdict = self.verdict(board, self._rows_of(head))
        return None if verdict is Verdict.WAIT else (head, verdict)

    def pop_head(self) -> Item:
        return heapq.heappop(self._heap).item


def _never(item: object) -> bool:
    return False
