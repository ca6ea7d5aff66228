"""What replay collects: the recorded reference (what the robot did) and the chunks the policy produced.

Both replay modes fill the same two objects, so offline and live runs are scored by one function.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mambavla import spaces
from mambavla.data.bags import GRIPPER_CLOSED_BELOW
from mambavla.evaluation.bag import finger_positions


@dataclass
class PredictedChunk:
    stamp: float  # s, bag clock: time of the observation the chunk was computed from
    published: float  # s, bag clock: when the chunk came out (the controller would switch to it then)
    receipt: float  # s, bag clock: when the newest frame of its observation arrived
    dt: float
    actions: np.ndarray  # [H, A] as the policy gave them (delta or absolute)
    action_mode: str
    absolute: np.ndarray  # [H, 7] absolute targets: position (m), rotation vector (rad, spaces layout), gripper
    inference_ms: float  # runtime step time (nan where unknown, e.g. live)
    images: dict[str, np.ndarray]  # the observation's frames at policy resolution

    def times(self) -> np.ndarray:
        return self.stamp + self.dt * np.arange(len(self.actions))


def absolute_targets(actions: np.ndarray, action_mode: str, proprio: np.ndarray) -> np.ndarray:
    """Chunk rows -> absolute [H, 7] (pose vector, gripper); delta rows are taken from the observed pose."""
    actions = np.asarray(actions, dtype=np.float64)
    if action_mode == "absolute":
        return actions.copy()
    position, quat = spaces.vector_to_pose(np.asarray(proprio[:6], dtype=np.float64))
    p, q = spaces.delta_to_absolute(actions[:, :6], position, quat)
    return np.concatenate([spaces.pose_to_vector(p, q), actions[:, 6:7]], axis=1)


@dataclass
class Recording:
    """The bag's robot state and actions as time series on the bag's clock (stamps)."""

    pose_t: list = field(default_factory=list)
    pose: list = field(default_factory=list)  # (position, quat)
    action_t: list = field(default_factory=list)
    action: list = field(default_factory=list)  # [7]
    finger_t: list = field(default_factory=list)
    finger_width: list = field(default_factory=list)
    start: float | None = None
    end: float | None = None

    def add(self, role: str, stamp: float, value) -> None:
        self.start = stamp if self.start is None else min(self.start, stamp)
        self.end = stamp if self.end is None else max(self.end, stamp)
        if role == "ee_pose":
            self.pose_t.append(stamp)
            self.pose.append(value)
        elif role == "actions":
            self.action_t.append(stamp)
            self.action.append(value)
        elif role == "joint_states":
            fingers = finger_positions(value["names"], value["positions"])
            if fingers is not None:
                self.finger_t.append(stamp)
                self.finger_width.append(float(fingers.sum()))

    @property
    def reference_source(self) -> str:
        return "ee_pose" if self.pose_t else "actions"

    @property
    def gripper_source(self) -> str:
        return "actions" if self.action_t else "finger joints"

    def _sorted(self, t: list, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = np.asarray(t, dtype=np.float64)
        order = np.argsort(t, kind="stable")
        return t[order], values[order]

    def pose_series(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(times, pose vectors [N, 6], quats [N, 4]) of the measured pose, else of the commanded targets."""
        if self.pose_t:
            positions = np.array([p for p, _ in self.pose])
            quats = np.array([q for _, q in self.pose])
            t, stacked = self._sorted(self.pose_t, np.concatenate([positions, quats], axis=1))
            return t, spaces.pose_to_vector(stacked[:, :3], stacked[:, 3:]), stacked[:, 3:]
        t, actions = self._sorted(self.action_t, np.array(self.action).reshape(-1, 7))
        _, quats = spaces.vector_to_pose(actions[:, :6])
        return t, actions[:, :6], quats

    def gripper_series(self) -> tuple[np.ndarray, np.ndarray]:
        """(times, gripper command 0 open .. 1 closed): recorded commands, else closed fingers."""
        if self.action_t:
            t, actions = self._sorted(self.action_t, np.array(self.action).reshape(-1, 7))
            return t, actions[:, 6]
        if not self.finger_t:
            return np.zeros(0), np.zeros(0)
        t, width = self._sorted(self.finger_t, np.array(self.finger_width))
        return t, (width < GRIPPER_CLOSED_BELOW * width.max()).astype(np.float64)


def interpolate(t: np.ndarray, values: np.ndarray, at: np.ndarray) -> np.ndarray:
    """values [N, D] sampled at t, linearly interpolated at `at` [M]; NaN outside the recording."""
    values = values.reshape(len(t), -1)
    out = np.full((len(at), values.shape[1]), np.nan)
    if len(t) == 0:
        return out
    inside = (at >= t[0]) & (at <= t[-1])
    for d in range(values.shape[1]):
        out[inside, d] = np.interp(at[inside], t, values[:, d])
    return out
