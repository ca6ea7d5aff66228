"""A scripted teleoperator: drives toward the scripted expert's waypoints (`ScriptedExpert.plan`) the way a
person with a SpaceMouse would, through velocity commands (a twist) and a gripper command, reading only the
measured end-effector pose. Free of ROS: a test or a tool publishes what `command` returns as
geometry_msgs/TwistStamped and std_msgs/Float64, so the recording path (controller teleoperation -> recorder)
runs in simulation as on the robot.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mambavla.sim.config import WorkcellConfig
from mambavla.sim.expert import ScriptedExpert, Segment
from mambavla.sim.tasks import sample_episode


@dataclass(frozen=True)
class TeleopCommand:
    linear: np.ndarray  # (3,) m/s, base frame
    angular: np.ndarray  # (3,) rad/s, base frame
    gripper: float  # 0 open .. 1 closed
    segment: str  # what the operator is doing, for progress and tests
    done: bool = False  # the plan is finished


def gripper_yaw(quat: np.ndarray) -> float:
    """Yaw (rad) of the gripper's x axis in the base frame, for a gripper pointing down."""
    x, y, z, w = quat
    axis = np.array([1 - 2 * (y * y + z * z), 2 * (x * y + w * z)])  # first column of the rotation matrix, x and y
    return float(np.arctan2(axis[1], axis[0]))


class ScriptedOperator:
    """`command(position, quat, now)` -> the twist and gripper command toward the current waypoint."""

    def __init__(self, task: str, seed: int, config: WorkcellConfig | None = None, gain: float = 3.0,
                 max_speed: float = 0.12, max_turn: float = 0.8, tolerance: float = 0.006, grip_wait: float = 1.2):
        self.config = config or WorkcellConfig()
        self.spec, self.layout = sample_episode(task, seed, self.config)
        self.seed = seed
        self.gain, self.max_speed, self.max_turn = gain, max_speed, max_turn
        self.tolerance, self.grip_wait = tolerance, grip_wait
        self.segments: list[Segment] | None = None
        self.index = 0
        self.gripper = 0.0
        self._since: float | None = None  # when the current segment started
        self._yaw = 0.0

    def _plan(self, position: np.ndarray) -> list[Segment]:
        expert = ScriptedExpert(cell=None, robot=None, gripper=None, config=self.config)
        # [seed, 7]: the stream ScriptedExpert.run plans with, so the operator follows the expert's plan for the seed
        return expert.plan(self.spec, self.layout, np.random.default_rng([self.seed, 7]), position)

    def command(self, position: np.ndarray, quat: np.ndarray, now: float) -> TeleopCommand:
        position, quat = np.asarray(position, dtype=float), np.asarray(quat, dtype=float)
        if self.segments is None:
            self.segments, self._yaw = self._plan(position), gripper_yaw(quat)
        zero = np.zeros(3)
        while self.index < len(self.segments):
            seg = self.segments[self.index]
            if self._since is None:
                self._since = now
                if seg.kind in ("grasp", "close"):
                    self.gripper = 1.0
                elif seg.kind == "release":
                    self.gripper = 0.0
            elapsed = now - self._since
            if seg.kind in ("move", "settle"):
                self._yaw = seg.yaw if seg.yaw is not None else self._yaw
                error = seg.position - position
                turn = float(np.angle(np.exp(1j * (self._yaw - gripper_yaw(quat)))))
                if np.linalg.norm(error) > self.tolerance or abs(turn) > 0.03:
                    linear = self.gain * error
                    speed = float(np.linalg.norm(linear))
                    if speed > self.max_speed:
                        linear *= self.max_speed / speed
                    angular = np.array([0.0, 0.0, float(np.clip(self.gain * turn, -self.max_turn, self.max_turn))])
                    return TeleopCommand(linear, angular, self.gripper, f"{seg.kind} {self.index}")
            elif seg.kind in ("grasp", "close", "release") and elapsed < self.grip_wait:
                return TeleopCommand(zero, zero, self.gripper, f"{seg.kind} {self.index}")
            elif seg.kind == "hold" and elapsed < seg.duration:
                return TeleopCommand(zero, zero, self.gripper, f"hold {self.index}")
            self.index, self._since = self.index + 1, None
        return TeleopCommand(zero, zero, self.gripper, "done", done=True)
