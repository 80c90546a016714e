"""The supervisor's side of the watchdog, with small fake governors as children."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable

from governor.watchdog import Heartbeat, supervise

LEADS_THEN_HANGS = "import os, sys, time; os.write(int(sys.argv[1]), b'L'); time.sleep(60)"
FOLLOWS_THEN_EXITS = "import os, sys; os.write(int(sys.argv[1]), b'F')"
REFUSES_ITS_CONFIGURATION = "import sys; sys.exit(2)"
LEADS_FOREVER = (
    "import os, sys, time\nwhile True:\n    os.write(int(sys.argv[1]), b'L'); time.sleep(0.02)"
)


def fake_child(code: str) -> Callable[[int], list[str]]:
    return lambda fd: [sys.executable, "-c", code, str(fd)]


class Resets:
    def __init__(self) -> None:
        self.times_s: list[float] = []

    def __call__(self) -> None:
        self.times_s.append(time.monotonic())


def start(code: str, resets: Resets, stop: threading.Event, **options: float) -> list[int]:
    result: list[int] = []

    def run() -> None:
        result.append(
            supervise(fake_child(code), resets, stop=stop, install_signals=False, **options)
        )

    threading.Thread(target=run, daemon=True).start()
    return result


def wait_until(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline_s = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline_s, "timed out"
        time.sleep(0.01)


def test_a_leader_that_stops_deciding_is_killed_and_the_clocks_reset_within_the_stall_time():
    resets, stop = Resets(), threading.Event()
    started_s = time.monotonic()
    result = start(LEADS_THEN_HANGS, resets, stop, stall_s=0.5, restart_delay_s=30.0)
    wait_until(lambda: len(resets.times_s) >= 1, timeout_s=5.0)
    assert 0.5 <= resets.times_s[0] - started_s < 2.0
    stop.set()
    wait_until(lambda: bool(result), timeout_s=5.0)
    assert result == [0]
    assert len(resets.times_s) == 2  # and once more on the way out, since it led


def test_a_follower_that_dies_resets_nothing_and_is_restarted():
    resets, stop = Resets(), threading.Event()
    starts: list[int] = []

    def command(fd: int) -> list[str]:
        starts.append(fd)
        return fake_child(FOLLOWS_THEN_EXITS)(fd)

    result: list[int] = []
    threading.Thread(
        target=lambda: result.append(
            supervise(command, resets, stop=stop, install_signals=False, restart_delay_s=0.05)
        ),
        daemon=True,
    ).start()
    wait_until(lambda: len(starts) >= 3, timeout_s=5.0)
    stop.set()
    wait_until(lambda: bool(result), timeout_s=5.0)
    assert result == [0]
    assert resets.times_s == []


def test_a_configuration_error_is_not_restarted():
    resets, stop = Resets(), threading.Event()
    result = start(REFUSES_ITS_CONFIGURATION, resets, stop)
    wait_until(lambda: bool(result), timeout_s=5.0)
    assert result == [2]
    assert resets.times_s == []


def test_stopping_the_supervisor_stops_a_healthy_leader_and_resets():
    resets, stop = Resets(), threading.Event()
    result = start(LEADS_FOREVER, resets, stop, stall_s=0.5)
    time.sleep(1.0)  # longer than the stall time: its heartbeats keep it alive
    assert resets.times_s == []
    stop.set()
    wait_until(lambda: bool(result), timeout_s=5.0)
    assert result == [0]
    assert len(resets.times_s) >= 1


def test_a_heartbeat_to_a_dead_supervisor_notices_it():
    read_fd, write_fd = os.pipe()
    heartbeat = Heartbeat(write_fd)
    heartbeat.leading = True
    heartbeat.beat()
    assert os.read(read_fd, 16) == b"L"
    os.close(read_fd)
    heartbeat.beat()
    assert heartbeat.parent_gone
    os.close(write_fd)
