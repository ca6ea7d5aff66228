"""The gripper rule: the chunk's gripper column (0 open .. 1 closed) to an open/close decision."""

from __future__ import annotations

from mambavla.spaces import GRIPPER_CLOSE_THRESHOLD

GRIPPER_HYSTERESIS = 0.1  # command must cross threshold +- this to switch, so noise cannot chatter


def gripper_should_close(value: float, closed: bool) -> bool:
    """Whether the hand should be closed after command `value`, given whether it is closed now."""
    if value > GRIPPER_CLOSE_THRESHOLD + GRIPPER_HYSTERESIS:
        return True
    if value < GRIPPER_CLOSE_THRESHOLD - GRIPPER_HYSTERESIS:
        return False
    return closed
