"""The governor's watchdog: a supervisor process that resets the clocks when the governor
cannot, and a heartbeat the governor (its child process) writes to it.

A governed GPU left at a low clock by a dead governor would break every SLO, so:

- The child writes one byte down a pipe after each decision: `L` while it leads (it
  may have locked a clock), `F` while it follows (it has not, or has reset it).
- The supervisor resets the clocks when the child exits for any reason, or has not
  written for `stall_s` (then it kills it first), if the child's last word was `L`. It
  then restarts the child after `restart_delay_s`, except after a configuration error
  (exit 2), where it exits 2 too. The promise is the clock back at its default within
  `RESET_WITHIN_S` of the last decision, so the stall limit leaves room for the reset
  and the GPU's clock switch (`stall_limit_s`). A follower's death resets nothing: the
  clocks are another governor's.
- The child watches its parent (`ParentWatch`) and, if the supervisor dies, resets the
  clocks itself and exits.
- SIGTERM/SIGINT on the supervisor: SIGTERM to the child (which resets on its way
  out), then one more reset if a child ever led, and exit 0.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

RESET_WITHIN_S = 2.0  # a stalled governor's clocks are back at default within this
RESET_ALLOWANCE_S = 0.4  # killing the child, opening the GPUs afresh, ordering the reset
STALL_S = RESET_WITHIN_S - RESET_ALLOWANCE_S  # with an instant clock switch
STARTUP_S = 60.0  # before its first heartbeat, the child may be loading its models
RESTART_DELAY_S = 1.0
GRACEFUL_STOP_S = 10.0
CONFIG_ERROR_EXIT_CODE = 2
LEADING, FOLLOWING = b"L", b"F"


def stall_limit_s(switch_latency_s: float) -> float:
    """How long the child may go without a decision, so that its clocks are back at
    default within `RESET_WITHIN_S` after a switch of `switch_latency_s`."""
    return max(0.5, RESET_WITHIN_S - RESET_ALLOWANCE_S - switch_latency_s)


class Heartbeat:
    """The child's end of the pipe. A write to a dead supervisor marks `parent_gone`."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd
        self.leading = False
        self.parent_gone = False

    def beat(self) -> None:
        if self._fd is None or self.parent_gone:
            return
        try:
            os.write(self._fd, LEADING if self.leading else FOLLOWING)
        except (BrokenPipeError, OSError):
            self.parent_gone = True


class ParentWatch:
    """Did our parent die? Then we have been re-parented and `os.getppid()` changed."""

    def __init__(self) -> None:
        self._parent_pid = os.getppid()

    def parent_alive(self) -> bool:
        return os.getppid() == self._parent_pid


@dataclass(frozen=True)
class ChildEnd:
    returncode: int | None
    leading: bool  # the child's last word
    led: bool  # it said `L` at least once
    stalled: bool


def supervise(
    child_command: Callable[[int], list[str]],
    reset_clocks: Callable[[], None],
    *,
    stall_s: float = STALL_S,
    startup_s: float = STARTUP_S,
    restart_delay_s: float = RESTART_DELAY_S,
    stop: threading.Event | None = None,
    install_signals: bool = True,
) -> int:
    """Run the child (`child_command(heartbeat_fd)`) until stopped; the exit code."""
    stop = stop or threading.Event()
    if install_signals:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    ever_led = False
    while not stop.is_set():
        end = _run_child(child_command, stop, stall_s, startup_s)
        ever_led = ever_led or end.led
        if end.leading:
            log.warning(
                "watchdog: the governor is gone (exit %s): resetting clocks", end.returncode
            )
            _reset(reset_clocks)
        if stop.is_set():
            break
        if end.returncode == CONFIG_ERROR_EXIT_CODE:
            log.error("watchdog: the governor refused its configuration; not restarting")
            return CONFIG_ERROR_EXIT_CODE
        log.info("watchdog: restarting the governor in %.1f s", restart_delay_s)
        stop.wait(restart_delay_s)
    if ever_led:
        _reset(reset_clocks)
    log.info("watchdog: stopped")
    return 0


def _run_child(
    child_command: Callable[[int], list[str]], stop: threading.Event, stall_s: float,
    startup_s: float,
) -> ChildEnd:  # fmt: skip
    read_fd, write_fd = os.pipe()
    try:
        child = subprocess.Popen(child_command(write_fd), pass_fds=(write_fd,))
    finally:
        os.close(write_fd)  # ours closed: EOF as soon as the child is gone
    log.info("watchdog: governor started as process %d", child.pid)
    leading = led = stalled = False
    last_beat_s, allowance_s = time.monotonic(), startup_s
    try:
        while True:
            if stop.is_set():
                _stop_gracefully(child)
                break
            ready, _, _ = select.select([read_fd], [], [], 0.05)
            if ready:
                data = os.read(read_fd, 4096)
                if not data:  # the child is gone, or closed our pipe: either way, done
                    break
                leading = data[-1:] == LEADING
                led = led or LEADING in data
                last_beat_s, allowance_s = time.monotonic(), stall_s
            elif child.poll() is not None:
                break
            if time.monotonic() - last_beat_s > allowance_s:
                log.error("watchdog: no decision for %.1f s: killing the governor", allowance_s)
                stalled = True
                break
    finally:
        os.close(read_fd)
        if child.poll() is None:
            child.kill()
        child.wait()
    return ChildEnd(child.returncode, leading, led, stalled)


def _stop_gracefully(child: subprocess.Popen[bytes]) -> None:
    child.terminate()
    try:
        child.wait(GRACEFUL_STOP_S)
    except subprocess.TimeoutExpired:
        log.error("watchdog: the governor ignored SIGTERM for %.0f s: killing it", GRACEFUL_STOP_S)


def _reset(reset_clocks: Callable[[], None]) -> None:
    try:
        reset_clocks()
    except Exception:
        log.exception("watchdog: could not reset the clocks")
