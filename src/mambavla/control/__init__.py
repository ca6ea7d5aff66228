"""Chunk execution and safety for the arm, free of ROS and franky so it is unit-testable.

`ControllerCore` takes action chunks (`mambavla.runtime.chunk.ActionChunk`) and measured poses and
returns one end-effector target per control tick. It owns every safety rule: chunk validation,
workspace box, speed and jump limits, the watchdog and the controller state machine.
`mambavla.ros.controller_node` is the thin shell that feeds it from ROS and franky.
"""

from mambavla.control.core import ControllerCore, ControllerState, ControlTarget
from mambavla.control.safety import SafetyLimits
from mambavla.control.trajectory import PoseTrajectory

__all__ = ["ControllerCore", "ControllerState", "ControlTarget", "SafetyLimits", "PoseTrajectory"]
