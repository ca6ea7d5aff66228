"""Time-indexed end-effector target trajectories: one per accepted chunk, blended at chunk switches."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mambavla.spaces import slerp


def smoothstep(x: float) -> float:
    x = min(max(x, 0.0), 1.0)
    return x * x * (3.0 - 2.0 * x)


@dataclass(frozen=True)
class PoseSample:
    position: np.ndarray  # (3,) m, base frame
    quat: np.ndarray  # (4,) x, y, z, w
    gripper: float  # 0 open .. 1 closed


class PoseTrajectory:
    """Targets at absolute times; linear in position and gripper, slerp in orientation between rows.

    Before the first row it holds the first row, after the last row it holds the last row.
    """

    def __init__(self, times: np.ndarray, positions: np.ndarray, quats: np.ndarray, gripper: np.ndarray):
        self.times = np.asarray(times, dtype=np.float64)  # (H,)
        self.positions = np.asarray(positions, dtype=np.float64)  # (H, 3)
        self.quats = np.asarray(quats, dtype=np.float64)  # (H, 4)
        self.gripper = np.asarray(gripper, dtype=np.float64)  # (H,)
        if len(self.times) == 0:
            raise ValueError("empty trajectory")

    @classmethod
    def constant(cls, t: float, position: np.ndarray, quat: np.ndarray, gripper: float) -> "PoseTrajectory":
        return cls(np.array([t]), np.asarray(position)[None], np.asarray(quat)[None], np.array([gripper]))

    @property
    def end_time(self) -> float:
        return float(self.times[-1])

    def sample(self, t: float) -> PoseSample:
        times = self.times
        if t <= times[0]:
            return PoseSample(self.positions[0], self.quats[0], float(self.gripper[0]))
        if t >= times[-1]:
            return PoseSample(self.positions[-1], self.quats[-1], float(self.gripper[-1]))
        k = int(np.searchsorted(times, t, side="right")) - 1
        alpha = (t - times[k]) / (times[k + 1] - times[k])
        position = self.positions[k] + alpha * (self.positions[k + 1] - self.positions[k])
        gripper = self.gripper[k] + alpha * (self.gripper[k + 1] - self.gripper[k])
        return PoseSample(position, slerp(self.quats[k], self.quats[k + 1], alpha), float(gripper))


class BlendedTrajectory:
    """`old` fading into `new` over [t0, t1] with a smoothstep weight, `new` alone after t1."""

    def __init__(self, old, new: PoseTrajectory, t0: float, t1: float):
        self.old, self.new, self.t0, self.t1 = old, new, t0, t1

    @property
    def end_time(self) -> float:
        return self.new.end_time

    def settled(self, t: float) -> bool:
        return t >= self.t1

    def sample(self, t: float) -> PoseSample:
        if t >= self.t1 or self.t1 <= self.t0:
            return self.new.sample(t)
        w = smoothstep((t - self.t0) / (self.t1 - self.t0))
        a, b = self.old.sample(t), self.new.sample(t)
        return PoseSample(
            (1.0 - w) * a.position + w * b.position,
            slerp(a.quat, b.quat, w),
            (1.0 - w) * a.gripper + w * b.gripper,
        )


def blend(old, new: PoseTrajectory, t0: float, window: float):
    """Replace `old` by `new` from t0 on, fading over `window` seconds. Keeps at most one nesting level."""
    if isinstance(old, BlendedTrajectory) and old.settled(t0):
        old = old.new
    if isinstance(old, BlendedTrajectory) and isinstance(old.old, BlendedTrajectory):
        old = BlendedTrajectory(old.old.new, old.new, old.t0, old.t1)  # bound the recursion depth
    if old is None or window <= 0.0:
        return new
    return BlendedTrajectory(old, new, t0, t0 + window)
