"""The gripper rule: the chunk's gripper column (0 open .. 1 closed) to an open/close decision."""

from __future__ import annotations

import math

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
