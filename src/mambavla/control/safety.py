"""Safety limits and the checks that use them. Every number comes from node parameters (config/*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mambavla.control.trajectory import slerp
from mambavla.spaces import quat_angle_between


@dataclass(frozen=True)
class SafetyLimits:
    workspace_min: tuple[float, float, float] = (0.25, -0.45, 0.01)  # m, base frame
    workspace_max: tuple[float, float, float] = (0.80, 0.45, 0.70)
    max_linear_speed: float = 0.25  # m/s, streamed target
    max_angular_speed: float = 1.0  # rad/s, streamed target
    max_jump: float = 0.05  # m between consecutive chunk rows
    max_jump_angle: float = 0.35  # rad between consecutive chunk rows
    max_start_offset: float = 0.10  # m from the current target to the chunk's target now
    max_start_offset_angle: float = 0.6  # rad
    max_chunk_age: float = 1.0  # s: observation older than this is stale
    max_chunk_future: float = 0.25  # s: stamp further ahead than this is a clock error
    max_tilt: float = 1.0  # rad between the gripper axis and straight down (yaw is free)
    min_chunk_dt: float = 0.005  # s between chunk rows: closer rows are a unit error (ms for s)
    max_chunk_dt: float = 0.5  # s between chunk rows: further apart, one chunk would steer for minutes
    workspace_clamp: float = 0.02  # m: rows this far outside the box are moved onto it, further ones reject the chunk

    def __post_init__(self) -> None:
        lo, hi = np.asarray(self.workspace_min), np.asarray(self.workspace_max)
        if lo.shape != (3,) or hi.shape != (3,) or not np.all(lo < hi):
            raise ValueError(f"workspace box must satisfy min < max per axis, got {self.workspace_min} .. "
                             f"{self.workspace_max}")
        for name in ("max_linear_speed", "max_angular_speed", "max_jump", "max_jump_angle", "max_start_offset",
                     "max_start_offset_angle", "max_chunk_age", "max_chunk_future", "max_tilt", "min_chunk_dt",
                     "max_chunk_dt"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.workspace_clamp >= 0:
            raise ValueError(f"workspace_clamp must be >= 0, got {self.workspace_clamp}")
        if not self.min_chunk_dt < self.max_chunk_dt:
            raise ValueError(f"need min_chunk_dt < max_chunk_dt, got {self.min_chunk_dt}, {self.max_chunk_dt}")

    def clamp_to_workspace(self, positions: np.ndarray) -> tuple[np.ndarray, int]:
        """[N, 3] -> (rows moved onto the box where they lie outside it by at most `workspace_clamp`, how
        many were moved). Rows further out are left for `check_rows` to reject: a policy aiming that far
        out of the box is not noise at its edge."""
        p = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
        clamped = np.clip(p, self.workspace_min, self.workspace_max)
        near = np.all(np.abs(p - clamped) <= self.workspace_clamp, axis=1)
        moved = near & np.any(p != clamped, axis=1)
        return np.where(near[:, None], clamped, p), int(moved.sum())

    def outside_workspace(self, positions: np.ndarray) -> np.ndarray:
        """[N, 3] -> bool [N]: rows outside the box."""
        p = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
        return np.any((p < np.asarray(self.workspace_min)) | (p > np.asarray(self.workspace_max)), axis=1)


def tilt(quats: np.ndarray) -> np.ndarray:
    """[N, 4] (x, y, z, w) -> [N] angle (rad) between the end effector's z axis and straight down."""
    x, y, z, w = np.moveaxis(np.asarray(quats, dtype=np.float64).reshape(-1, 4), -1, 0)
    axis_z = 1.0 - 2.0 * (x * x + y * y)  # base-frame z component of the rotated z axis
    return np.arccos(np.clip(-axis_z, -1.0, 1.0))


def check_rows(limits: SafetyLimits, positions: np.ndarray, quats: np.ndarray) -> str | None:
    """Workspace, tilt and row-to-row jump checks on absolute targets; the rejection reason or None."""
    outside = limits.outside_workspace(positions)
    if outside.any():
        k = int(np.argmax(outside))
        return (f"row {k} target {np.round(positions[k], 3).tolist()} outside workspace box "
                f"{list(limits.workspace_min)}..{list(limits.workspace_max)} by more than workspace_clamp "
                f"{limits.workspace_clamp} m")
    tilts = tilt(quats)
    if tilts.max() > limits.max_tilt:
        k = int(np.argmax(tilts))
        return f"row {k} tilts the gripper {tilts[k]:.2f} rad from pointing down > max_tilt {limits.max_tilt} rad"
    if len(positions) > 1:
        steps = np.linalg.norm(np.diff(positions, axis=0), axis=1)
        k = int(np.argmax(steps))
        if steps[k] > limits.max_jump:
            return f"jump of {steps[k]:.3f} m between rows {k} and {k + 1} exceeds max_jump {limits.max_jump} m"
        angles = quat_angle_between(quats[:-1], quats[1:])
        k = int(np.argmax(angles))
        if angles[k] > limits.max_jump_angle:
            return (f"jump of {angles[k]:.3f} rad between rows {k} and {k + 1} exceeds max_jump_angle "
                    f"{limits.max_jump_angle} rad")
    return None


def rate_limit(prev_pos: np.ndarray, prev_quat: np.ndarray, pos: np.ndarray, quat: np.ndarray, dt: float,
               limits: SafetyLimits) -> tuple[np.ndarray, np.ndarray, bool]:
    """Move from the previous streamed target toward the desired one at no more than the speed limits.

    Returns (position, quaternion, limited) where `limited` says a limit was active this tick.
    """
    limited = False
    step = np.asarray(pos, dtype=np.float64) - prev_pos
    dist = float(np.linalg.norm(step))
    max_step = limits.max_linear_speed * dt
    if dist > max_step:
        pos = prev_pos + step * (max_step / dist)
        limited = True
    angle = float(quat_angle_between(prev_quat, quat))
    max_angle = limits.max_angular_speed * dt
    if angle > max_angle:
        quat = slerp(prev_quat, quat, max_angle / angle)
        limited = True
    return np.asarray(pos, dtype=np.float64), np.asarray(quat, dtype=np.float64), limited
