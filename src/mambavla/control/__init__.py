"""Chunk execution and safety for the arm, free of ROS and franky so it is unit-testable.

`ControllerCore` takes action chunks (`mambavla.runtime.chunk.ActionChunk`) and measured poses and
returns one end-effector target per control tick. It owns every safety rule: chunk validation,
workspace box, speed and jump limits, the watchdog and the controller state machine.
`mambavla.control.loop.ControlLoop` drives a franky arm with it, one tick at a time on a clock passed in;
`mambavla.ros.controller_node` runs that loop behind ROS, `mambavla eval-sim` in simulated time.
"""

from mambavla.control.core import ControllerCore, ControllerState, ControlTarget
from mambavla.control.safety import SafetyLimits
from mambavla.control.trajectory import PoseTrajectory

__all__ = ["ControllerCore", "ControllerState", "ControlTarget", "SafetyLimits", "PoseTrajectory"]
