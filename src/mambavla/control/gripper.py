"""The gripper rule: the chunk's gripper column (0 open .. 1 closed) to an open/close decision; the worker that
carries the decisions out on a Franka Hand."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

from mambavla.spaces import GRIPPER_CLOSE_THRESHOLD

GRIPPER_HYSTERESIS = 0.1  # command must cross threshold +- this to switch, so noise cannot chatter


def gripper_should_close(value: float, closed: bool) -> bool:
    """Whether the hand should be closed after command `value`, given whether it is closed now."""
    if value > GRIPPER_CLOSE_THRESHOLD + GRIPPER_HYSTERESIS:
        return True
    if value < GRIPPER_CLOSE_THRESHOLD - GRIPPER_HYSTERESIS:
        return False
    return closed


class GripperRule:
    """The decision with memory: `gripper_should_close`'s hysteresis, and a closed hand opens only once the
    command has asked for open for `open_delay` seconds without a break (closing is immediate). A policy
    whose chunks ask to open for a moment right after a grasp then keeps what it holds; one that means to
    let go does so `open_delay` later."""

    def __init__(self, open_delay: float = 0.0, closed: bool = False):
        if not (open_delay >= 0 and math.isfinite(open_delay)):
            raise ValueError(f"gripper_open_delay must be >= 0 s, got {open_delay}")
        self.open_delay, self.closed = float(open_delay), closed
        self._open_since: float | None = None  # when the command started asking a closed hand to open

    def update(self, value: float, now: float) -> bool:
        """Command `value` at time `now` (s, any monotonic clock) -> whether the hand should be closed."""
        want = gripper_should_close(value, self.closed)
        if want or not self.closed:
            self.closed, self._open_since = want, None
        elif self._open_since is None or now < self._open_since:  # (a clock that went back, e.g. a sim reset)
            self._open_since = now
        if self._open_since is not None and now - self._open_since >= self.open_delay - 1e-9:
            self.closed, self._open_since = False, None
        return self.closed


GRIPPER_COMMAND_TIMEOUT = 5.0  # s a gripper command may run before it counts as stuck; the next one waits for it
# How far past [0, the open width] a width read from the hand may lie and still be taken (encoder noise, a hand
# that opens slightly wider than its nominal stroke). A read outside is not a finger position (franky-sim's hand
# has answered -1.2e296 for a few polls while grasping): the last plausible width stands, and the reads are counted.
WIDTH_TOLERANCE = 0.005  # m


class GripperWorker:
    """Drives the Franka Hand (`franky.Gripper`) from the gripper column through `GripperRule`: sends an open or
    grasp command whenever the rule's decision changes, never a second one before the first has finished.

    Threaded (controller_node): a thread sends the commands and polls the width, off the arm's control thread,
    and a command still running after `GRIPPER_COMMAND_TIMEOUT` is reported in `error` while the next waits.
    Synchronous (eval-sim, lockstep): `command` sends at once and waits up to `GRIPPER_COMMAND_TIMEOUT` for the
    previous command, raising if it did not finish; `before_send` lets the simulator run physics for the call."""

    def __init__(self, gripper, speed: float, force: float, open_width: float, logger=None, open_delay: float = 0.0,
                 threaded: bool = True, before_send: Callable[[], None] | None = None):
        self._gripper, self._speed, self._force, self._open_width = gripper, speed, force, open_width
        self._logger = logger or logging.getLogger("mambavla.control.gripper")
        self._open_delay = open_delay
        self._rule = GripperRule(open_delay)  # its `closed` is the hand's desired state
        self._commanded_closed: bool | None = None
        self._future = None  # the last command's franky future
        self._sent_at = 0.0
        self._before_send = before_send
        self.commands_sent = 0
        self.width = float("nan")  # the last plausible width the hand reported, m (NaN until one is read)
        self.implausible_widths = 0  # reads outside [0, open width] +- WIDTH_TOLERANCE, not taken
        self.error = ""
        self._running = threaded
        self._wake = threading.Event()
        self._thread = None
        if threaded:
            self._thread = threading.Thread(target=self._loop, name="gripper", daemon=True)
            self._thread.start()

    def reset(self, closed: bool = False) -> None:
        """Start over with the hand known to be `closed` (a simulator reset put it there): nothing is sent until
        the rule decides otherwise."""
        self._rule = GripperRule(self._open_delay, closed=closed)
        self._commanded_closed = closed

    def command(self, value: float, now: float) -> None:
        """The gripper command `value` (0 open .. 1 closed) at controller time `now` (s)."""
        before = self._rule.closed
        if self._rule.update(value, now) == before:
            return
        if self._thread is not None:
            self._wake.set()
            return
        if self._before_send is not None:
            self._before_send()
        self.finish(GRIPPER_COMMAND_TIMEOUT)
        self._send()

    @property
    def closed(self) -> bool:
        return self._rule.closed

    @property
    def pending(self) -> bool:
        """Whether the last command has not finished yet."""
        return not self._previous_finished()

    def finish(self, timeout: float = GRIPPER_COMMAND_TIMEOUT) -> None:
        """Wait up to `timeout` s for the last command; RuntimeError if it has not finished by then (a grasp ends only
        once the fingers settle, which fingers chattering on an object may never do)."""
        if self._future is not None and not self._future.wait(timeout):
            raise RuntimeError(f"gripper: the previous command did not finish within {timeout:g} s "
                               "(the fingers never settled)")
        self._future = None

    def _send(self) -> None:
        closed = self._rule.closed
        if closed:  # wide epsilons: any object between the fingers counts as grasped
            self._future = self._gripper.grasp_async(0.0, self._speed, self._force, epsilon_inner=0.1,
                                                     epsilon_outer=0.1)
        else:
            self._future = self._gripper.move_async(self._open_width, self._speed)
        self._commanded_closed, self._sent_at = closed, time.monotonic()
        self.commands_sent += 1

    def _loop(self) -> None:
        while self._running:
            self._wake.wait(0.1)
            self._wake.clear()
            try:
                waiting = ""
                if self._rule.closed != self._commanded_closed and not self._previous_finished():
                    waited = time.monotonic() - self._sent_at
                    if waited > GRIPPER_COMMAND_TIMEOUT:
                        waiting = (f"the previous gripper command has not finished after {waited:.0f} s; "
                                   "the next waits for it")
                elif self._rule.closed != self._commanded_closed:
                    self._send()
                self._take_width(float(self._gripper.width))
                if waiting and not self.error:
                    self._logger.warning(f"gripper: {waiting}")
                self.error = waiting
            except Exception as err:  # franky raises several exception types; report, keep running
                if str(err) != self.error:
                    self._logger.error(f"gripper: {err}")
                self.error = str(err)

    def _take_width(self, width: float) -> None:
        if math.isfinite(width) and -WIDTH_TOLERANCE <= width <= self._open_width + WIDTH_TOLERANCE:
            self.width = width
            return
        if not self.implausible_widths:  # one line, not one per poll; the count is in the diagnostics
            self._logger.warning(f"gripper: the hand reported a width of {width:g} m, outside "
                                 f"0..{self._open_width:g} m; keeping the last plausible width")
        self.implausible_widths += 1

    def _previous_finished(self) -> bool:
        """franky's next *_async call joins the previous command without a timeout, so the worker polls for it
        instead of blocking in the call."""
        return self._future is None or self._future.wait(0.0)

    def close(self) -> None:
        self._running = False
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
