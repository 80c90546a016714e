"""Honouring a cancel that a library swallowed."""

from __future__ import annotations

import asyncio


def raise_if_cancelled() -> None:
    """Raise CancelledError if this task has been asked to stop.

    redis-py can lose a cancel that arrives mid-command: the task goes on as if nothing
    happened, and a loop that was told to stop (and to reset the clocks on its way out)
    would run forever. Loops call this once per pass.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
