"""A gateway worker whose master died stops, and the last one out removes the metrics
folder the master made.

`throttllem serve --workers N` is uvicorn's master process; the workers are its children.
When the master is killed outright (SIGKILL, the OOM killer) nothing stops them: they
keep serving on a port no supervisor watches, and the master's private metrics folder
stays behind. Each worker therefore watches its parent and, once re-parented, stops as
if asked to (SIGTERM: uvicorn finishes the requests in flight).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path

log = logging.getLogger(__name__)

MASTER_PID_VARIABLE = "THROTTLLEM_MASTER_PID"
PRIVATE_METRICS_VARIABLE = "THROTTLLEM_PRIVATE_METRICS_DIR"  # set: the master made it
_CHECK_EVERY_S = 0.5


def master_pid() -> int | None:
    """The master's pid when this process is one of `throttllem serve`'s workers."""
    value = os.environ.get(MASTER_PID_VARIABLE)
    return int(value) if value and int(value) != os.getpid() else None


async def stop_when_orphaned(master: int) -> None:
    """Wait until the master is gone, then ask this worker to stop."""
    while True:  # nothing to wait on: the kernel re-parents us without a word
        if os.getppid() != master:
            break
        await asyncio.sleep(_CHECK_EVERY_S)
    log.error("the gateway's master process %d is gone: this worker stops", master)
    os.kill(os.getpid(), signal.SIGTERM)


def remove_own_metrics() -> None:
    """This worker's files in the master's private metrics folder, and the folder itself
    once it is empty (whichever worker leaves last removes it)."""
    directory = os.environ.get(PRIVATE_METRICS_VARIABLE)
    if not directory:
        return
    for path in Path(directory).glob(f"*_{os.getpid()}.db"):
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # another worker's files remain, or it is gone
        Path(directory).rmdir()
