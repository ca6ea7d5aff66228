"""Message <-> numpy conversion for the nodes: action chunks, poses, stamps, frames out. No model code.

Incoming camera frames are decoded by `mambavla.data.images.image_to_rgb` (shared with the bag
reader and replay).

Action chunks travel as `trajectory_msgs/JointTrajectory`: `joint_names` name the action dimensions,
`header.stamp` is the observation time, point k sits at `time_from_start = k * dt`, and
`header.frame_id` says how to read the pose columns: the base frame name for absolute targets, or
that name + `DELTA_SUFFIX` for targets relative to the end-effector pose at the observation time.
"""

from __future__ import annotations

import math

import numpy as np
from builtin_interfaces.msg import Duration, Time
from geometry_msgs.msg import PoseStamped
from sensor_msgs.msg import Image
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from mambavla.data.images import depth_message_fields
from mambavla.runtime.chunk import ActionChunk

DELTA_SUFFIX = "/ee_at_stamp"
MAX_CHUNK_POINTS = 1000


def stamp_to_seconds(stamp: Time) -> float:
    return float(stamp.sec) + 1e-9 * float(stamp.nanosec)


def seconds_to_stamp(seconds: float) -> Time:
    sec = math.floor(seconds)
    nanosec = min(int(round((seconds - sec) * 1e9)), 999_999_999)
    return Time(sec=int(sec), nanosec=nanosec)


def seconds_to_duration(seconds: float) -> Duration:
    sec = math.floor(seconds)
    return Duration(sec=int(sec), nanosec=min(int(round((seconds - sec) * 1e9)), 999_999_999))


# ---- images (decoding: mambavla.data.images.image_to_rgb) ----


def rgb_to_image(rgb: np.ndarray, stamp: float, frame_id: str) -> Image:
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    msg = Image()
    msg.header.stamp = seconds_to_stamp(stamp)
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(rgb.shape[0]), int(rgb.shape[1])
    msg.encoding = "rgb8"
    msg.is_bigendian = 0
    msg.step = int(rgb.shape[1] * 3)
    msg.data = rgb.tobytes()
    return msg


def depth_to_image(depth_mm: np.ndarray, stamp: float, frame_id: str) -> Image:
    """uint16 [H, W] mm -> sensor_msgs/Image 16UC1, as an RGB-D driver publishes aligned depth."""
    msg = Image(**{k: v.tobytes() if k == "data" else v for k, v in depth_message_fields(depth_mm).items()})
    msg.header.stamp = seconds_to_stamp(stamp)
    msg.header.frame_id = frame_id
    return msg


# ---- action chunks ----


def chunk_to_trajectory(chunk: ActionChunk, base_frame: str) -> JointTrajectory:
    msg = JointTrajectory()
    msg.header.stamp = seconds_to_stamp(chunk.stamp)
    msg.header.frame_id = base_frame + (DELTA_SUFFIX if chunk.action_mode == "delta" else "")
    msg.joint_names = list(chunk.action_names)
    for k, row in enumerate(np.asarray(chunk.actions, dtype=np.float64)):
        point = JointTrajectoryPoint()
        point.positions = row.tolist()
        point.time_from_start = seconds_to_duration(k * chunk.dt)
        msg.points.append(point)
    return msg


def trajectory_to_chunk(msg: JointTrajectory, base_frame: str, dt_tolerance: float = 1e-3) -> ActionChunk:
    """JointTrajectory -> ActionChunk; ValueError says why a message is malformed.

    Names and values are checked by the controller (`ControllerCore.submit`); this checks structure.
    """
    if msg.header.frame_id == base_frame:
        mode = "absolute"
    elif msg.header.frame_id == base_frame + DELTA_SUFFIX:
        mode = "delta"
    else:
        raise ValueError(f"frame_id {msg.header.frame_id!r} is neither {base_frame!r} (absolute) nor "
                         f"{base_frame + DELTA_SUFFIX!r} (delta)")
    names = tuple(msg.joint_names)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"joint_names must be non-empty and unique, got {list(names)}")
    if not msg.points:
        raise ValueError("chunk has no points")
    if len(msg.points) > MAX_CHUNK_POINTS:
        raise ValueError(f"chunk has {len(msg.points)} points > {MAX_CHUNK_POINTS}")
    rows = []
    for k, point in enumerate(msg.points):
        if len(point.positions) != len(names):
            raise ValueError(f"point {k} has {len(point.positions)} positions for {len(names)} joint names")
        rows.append(np.asarray(point.positions, dtype=np.float64))
    times = np.array([p.time_from_start.sec + 1e-9 * p.time_from_start.nanosec for p in msg.points])
    if abs(times[0]) > dt_tolerance:
        raise ValueError(f"first point must be at time_from_start 0, got {times[0]:.4f} s")
    if len(times) > 1:
        steps = np.diff(times)
        if np.any(steps <= 0):
            raise ValueError(f"time_from_start is not strictly increasing: {np.round(times, 4).tolist()}")
        dt = float(times[1])
        if np.any(np.abs(steps - dt) > dt_tolerance):
            raise ValueError(f"time_from_start is not k*dt (steps {np.round(steps, 4).tolist()})")
    else:
        dt = 0.05  # a single row is a hold target; dt only matters between rows
    return ActionChunk(actions=np.stack(rows), dt=dt, stamp=stamp_to_seconds(msg.header.stamp), action_names=names,
                       action_mode=mode)


# ---- poses ----


def pose_to_msg(position: np.ndarray, quat_xyzw: np.ndarray, stamp: float, frame_id: str) -> PoseStamped:
    msg = PoseStamped()
    msg.header.stamp = seconds_to_stamp(stamp)
    msg.header.frame_id = frame_id
    p, q = msg.pose.position, msg.pose.orientation
    p.x, p.y, p.z = (float(v) for v in position)
    q.x, q.y, q.z, q.w = (float(v) for v in quat_xyzw)
    return msg


def pose_from_msg(msg: PoseStamped) -> tuple[np.ndarray, np.ndarray]:
    p, q = msg.pose.position, msg.pose.orientation
    quat = np.array([q.x, q.y, q.z, q.w], dtype=np.float64)
    norm = np.linalg.norm(quat)
    if not np.isfinite(norm) or norm < 1e-6:
        raise ValueError("pose orientation is not a valid quaternion")
    position = np.array([p.x, p.y, p.z], dtype=np.float64)
    if not np.all(np.isfinite(position)):
        raise ValueError("pose position is not finite")
    return position, quat / norm
