"""A governor stand-in for the two-process election test: it only runs `LeaderElection`.

Prints, flushing, one event a line with the wall-clock time last:
`ready <holder> <t>`, `elected <token> <t>`, `lost <t>`. SIGTERM steps down gracefully.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script

from governor.leadership import (
    DEFAULT_RENEW_EVERY_S,
    DEFAULT_TTL_S,
    LeaderElection,
    RedisLeaderLock,
)


def emit(*fields: object) -> None:
    print(*fields, time.time(), flush=True)


async def main(args: argparse.Namespace) -> None:
    async def on_elected(token: int) -> None:
        emit("elected", token)

    async def on_lost() -> None:
        emit("lost")

    lock = RedisLeaderLock(args.redis_url, args.instance, args.holder, ttl_s=args.ttl_s)
    election = LeaderElection(lock, args.renew_every_s, on_elected=on_elected, on_lost=on_lost)
    task = asyncio.create_task(election.run())
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    emit("ready", args.holder)
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await lock.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instance", required=True)
    parser.add_argument("--holder", required=True)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--ttl-s", type=float, default=DEFAULT_TTL_S)
    parser.add_argument("--renew-every-s", type=float, default=DEFAULT_RENEW_EVERY_S)
    asyncio.run(main(parser.parse_args()))
