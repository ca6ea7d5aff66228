"""The robot-facing vocabulary shared by data, model, runtime and nodes: action and proprio layouts
and the pose <-> vector conversions and quaternion helpers. Pure numpy: importable everywhere (no torch, no rclpy).

Action (7-D, one row of a chunk): end-effector target position (m, base frame), target orientation
as a rotation vector (rad) relative to `EE_REFERENCE_QUAT`, gripper command (0 = open, 1 = closed).
Orientations are stored relative to the gripper-pointing-down reference because a plain base-frame
rotation vector of that pose sits at |r| = pi, where the vector flips sign: a policy would have to
learn a discontinuity at the most common pose.
In `delta` mode the first six are relative to the end-effector pose at observation time:
p_target = p_obs + d_p, R_target = exp(d_r) * R_obs.

Proprio (8-D): end-effector position, end-effector rotation vector (relative to the reference, as
above), the two finger positions (m). The same layout as LIBERO's `ee_states` (6) + `gripper_states`
(2); LIBERO's base-frame axis-angle converts with `pose_to_vector(p, rotvec_to_quat(aa))`.

Always go through `pose_to_vector` / `vector_to_pose`: they apply the reference.
"""

from __future__ import annotations

import numpy as np

ACTION_NAMES: tuple[str, ...] = ("x", "y", "z", "rx", "ry", "rz", "gripper")
PROPRIO_NAMES: tuple[str, ...] = ("ee_x", "ee_y", "ee_z", "ee_rx", "ee_ry", "ee_rz", "finger_left", "finger_right")
ACTION_MODES: tuple[str, ...] = ("absolute", "delta")
GRIPPER_CLOSE_THRESHOLD = 0.5  # gripper command above this means "grasp"
FRANKA_MAX_FINGER_WIDTH = 0.08  # m, both fingers together
EE_REFERENCE_QUAT = np.array([1.0, 0.0, 0.0, 0.0])  # (x, y, z, w): pi about base x, gripper pointing down


def quat_to_rotvec(quat_xyzw: np.ndarray) -> np.ndarray:
    """[..., 4] unit quaternion (x, y, z, w) -> [..., 3] rotation vector (angle in [0, pi])."""
    q = np.asarray(quat_xyzw, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    q = np.where(q[..., 3:4] < 0, -q, q)  # shortest rotation
    xyz, w = q[..., :3], np.clip(q[..., 3], -1.0, 1.0)
    sin_half = np.linalg.norm(xyz, axis=-1)
    angle = 2.0 * np.arctan2(sin_half, w)
    scale = np.where(sin_half > 1e-12, angle / np.maximum(sin_half, 1e-12), 2.0)  # small-angle limit
    return xyz * scale[..., None]


def rotvec_to_quat(rotvec: np.ndarray) -> np.ndarray:
    """[..., 3] rotation vector -> [..., 4] unit quaternion (x, y, z, w)."""
    r = np.asarray(rotvec, dtype=np.float64)
    angle = np.linalg.norm(r, axis=-1)
    half = 0.5 * angle
    scale = np.where(angle > 1e-12, np.sin(half) / np.maximum(angle, 1e-12), 0.5)
    return np.concatenate([r * scale[..., None], np.cos(half)[..., None]], axis=-1)


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a * b of (x, y, z, w) quaternions (apply b, then a)."""
    ax, ay, az, aw = np.moveaxis(np.asarray(a, dtype=np.float64), -1, 0)
    bx, by, bz, bw = np.moveaxis(np.asarray(b, dtype=np.float64), -1, 0)
    return np.stack(
        [
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz,
        ],
        axis=-1,
    )


def quat_angle_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rotation angle (rad) taking orientation a to orientation b."""
    dot = np.abs(np.sum(np.asarray(a, dtype=np.float64) * np.asarray(b, dtype=np.float64), axis=-1))
    return 2.0 * np.arccos(np.clip(dot, -1.0, 1.0))


def slerp(q0: np.ndarray, q1: np.ndarray, alpha: float) -> np.ndarray:
    """Spherical interpolation between unit (x, y, z, w) quaternions, shortest path."""
    q0 = np.asarray(q0, dtype=np.float64)
    q1 = np.asarray(q1, dtype=np.float64)
    dot = float(np.dot(q0, q1))
    if dot < 0.0:
        q1, dot = -q1, -dot
    if dot > 0.9995:  # nearly parallel: normalised lerp is exact enough and avoids 0/0
        q = q0 + alpha * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = np.arccos(np.clip(dot, -1.0, 1.0))
    s = np.sin(theta)
    return (np.sin((1.0 - alpha) * theta) * q0 + np.sin(alpha * theta) * q1) / s


def quat_conjugate(quat_xyzw: np.ndarray) -> np.ndarray:
    return np.asarray(quat_xyzw, dtype=np.float64) * np.array([-1.0, -1.0, -1.0, 1.0])


def pose_to_vector(position: np.ndarray, quat_xyzw: np.ndarray) -> np.ndarray:
    """Base-frame position [..., 3] and quaternion [..., 4] -> [..., 6] (position, rotation vector
    of the orientation relative to EE_REFERENCE_QUAT)."""
    q = np.asarray(quat_xyzw, dtype=np.float64)
    relative = quat_multiply(np.broadcast_to(quat_conjugate(EE_REFERENCE_QUAT), q.shape), q)
    return np.concatenate([np.asarray(position, dtype=np.float64), quat_to_rotvec(relative)], axis=-1)


def vector_to_pose(vector: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `pose_to_vector`: [..., 6] -> base-frame position [..., 3], quaternion (x, y, z, w) [..., 4]."""
    v = np.asarray(vector, dtype=np.float64)
    relative = rotvec_to_quat(v[..., 3:6])
    return v[..., :3], quat_multiply(np.broadcast_to(EE_REFERENCE_QUAT, relative.shape), relative)


def delta_to_absolute(delta: np.ndarray, obs_position: np.ndarray,
                      obs_quat_xyzw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Delta actions [..., 6] relative to the observed pose -> absolute position [..., 3], quaternion [..., 4]."""
    d = np.asarray(delta, dtype=np.float64)
    position = np.asarray(obs_position, dtype=np.float64) + d[..., :3]
    quat = quat_multiply(rotvec_to_quat(d[..., 3:6]), np.broadcast_to(obs_quat_xyzw, d[..., 3:6].shape[:-1] + (4,)))
    return position, quat


def absolute_to_delta(position: np.ndarray, quat_xyzw: np.ndarray, obs_position: np.ndarray,
                      obs_quat_xyzw: np.ndarray) -> np.ndarray:
    """Inverse of `delta_to_absolute`: absolute target poses -> [..., 6] deltas from the observed pose."""
    rel = quat_multiply(quat_xyzw, np.broadcast_to(quat_conjugate(obs_quat_xyzw), np.shape(quat_xyzw)))
    return np.concatenate([np.asarray(position) - np.asarray(obs_position), quat_to_rotvec(rel)], axis=-1)
