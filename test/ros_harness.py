"""Shared pieces of the ROS tests: an isolated DDS domain, node processes, and a probe node that plays
operator / camera driver / chunk source and records what the nodes publish."""

from __future__ import annotations

import os

# One DDS domain per test session, loopback only, before rclpy is imported anywhere; 151-232 stay free for
# tests that need a private domain (test_ros_policy_compressed.py: 163, 164).
os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 150))
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("MUJOCO_GL", "osmesa")

import json  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections import deque  # noqa: E402

import numpy as np  # noqa: E402
import rclpy  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import PoseStamped  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import Bool, String  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from mambavla.ros.convert import pose_from_msg, stamp_to_seconds  # noqa: E402
from mambavla.ros.diagnostics import status_values  # noqa: E402
from mambavla.ros.launcher import NodeProcess  # noqa: E402
from mambavla.ros.qos import COMMAND_QOS, DIAGNOSTICS_QOS, LATCHED_QOS, SENSOR_QOS, STATE_QOS  # noqa: E402
from mambavla.ros.spin import BackgroundSpin  # noqa: E402

TIMEOUT = 120.0  # generous: two CI cores shared with other test modules; loading torch alone can take a minute


class Probe:
    """A node in the test process; its executor spins on a background thread."""

    def __init__(self, name: str = "probe"):
        if not rclpy.ok():
            rclpy.init()
        self.node = rclpy.create_node(name)
        self.lock = threading.Lock()
        self.status: dict[str, dict] = {}
        self.status_history: dict[str, deque] = {}
        self.poses: deque = deque(maxlen=5000)  # (receipt, position, quat)
        self.chunks: deque = deque(maxlen=1000)  # (receipt, JointTrajectory)
        self.finger_width = float("nan")
        self.task: dict | None = None
        self.success = False
        n = self.node
        n.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, DIAGNOSTICS_QOS)
        n.create_subscription(PoseStamped, "/ee_pose", self._on_pose, STATE_QOS)
        n.create_subscription(JointTrajectory, "/action_chunk", self._on_chunk, COMMAND_QOS)
        n.create_subscription(JointState, "/joint_states", self._on_joints, STATE_QOS)
        n.create_subscription(String, "/sim/task", lambda m: setattr(self, "task", json.loads(m.data)), LATCHED_QOS)
        n.create_subscription(Bool, "/sim/success", lambda m: setattr(self, "success", m.data), STATE_QOS)
        self.chunk_pub = n.create_publisher(JointTrajectory, "/action_chunk", COMMAND_QOS)
        self.instruction_pub = n.create_publisher(String, "/instruction", LATCHED_QOS)
        self.image_pubs = {
            cam: n.create_publisher(Image, f"/cameras/{cam}/image_raw", SENSOR_QOS) for cam in ("front", "wrist")
        }
        self.pose_pub = n.create_publisher(PoseStamped, "/ee_pose", STATE_QOS)
        self.joint_pub = n.create_publisher(JointState, "/joint_states", STATE_QOS)
        self.spin = BackgroundSpin(n)  # outlives publishers a test destroys while it spins

    def now(self) -> float:
        return self.node.get_clock().now().nanoseconds * 1e-9

    def _on_diag(self, msg: DiagnosticArray) -> None:
        with self.lock:
            for status in msg.status:
                values = status_values(msg, status.name)
                self.status[status.name] = values
                self.status_history.setdefault(status.name, deque(maxlen=2000)).append((time.monotonic(), values))

    def _on_pose(self, msg: PoseStamped) -> None:
        position, quat = pose_from_msg(msg)
        with self.lock:
            self.poses.append((time.monotonic(), position, quat))

    def _on_joints(self, msg: JointState) -> None:
        fingers = [p for name, p in zip(msg.name, msg.position) if "finger_joint" in name]
        if len(fingers) == 2:
            self.finger_width = float(sum(fingers))

    def _on_chunk(self, msg: JointTrajectory) -> None:
        with self.lock:
            self.chunks.append((time.monotonic(), msg))

    def latest(self, name: str) -> dict:
        with self.lock:
            return dict(self.status.get(name) or {})

    def pose(self) -> tuple[np.ndarray, np.ndarray]:
        self.wait_for(lambda: len(self.poses) > 0, "an /ee_pose message")
        with self.lock:
            return self.poses[-1][1].copy(), self.poses[-1][2].copy()

    def wait_for(self, predicate, what: str, timeout: float = TIMEOUT):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            failure = self.spin.failure()
            if failure:
                raise AssertionError(f"the probe's executor thread died ({failure}) while waiting for {what}")
            result = predicate()
            if result:
                return result
            time.sleep(0.02)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    def wait_status(self, name: str, predicate, what: str, timeout: float = TIMEOUT) -> dict:
        return self.wait_for(
            lambda: (lambda s: s if s and predicate(s) else None)(self.latest(name)), f"{name}: {what}", timeout
        )

    def close(self) -> None:
        self.spin.stop()


def chunk_message(
    rows: np.ndarray,
    stamp: float,
    dt: float = 0.05,
    frame_id: str = "fr3_link0",
    names=("x", "y", "z", "rx", "ry", "rz", "gripper"),
) -> JointTrajectory:
    from trajectory_msgs.msg import JointTrajectoryPoint

    from mambavla.ros.convert import seconds_to_duration, seconds_to_stamp

    msg = JointTrajectory()
    msg.header.stamp = seconds_to_stamp(stamp)
    msg.header.frame_id = frame_id
    msg.joint_names = list(names)
    for k, row in enumerate(np.asarray(rows, dtype=np.float64)):
        msg.points.append(JointTrajectoryPoint(positions=row.tolist(), time_from_start=seconds_to_duration(k * dt)))
    return msg


def line_rows(
    position: np.ndarray, quat: np.ndarray, velocity: np.ndarray, rows: int = 16, dt: float = 0.05, gripper: float = 0.0
) -> np.ndarray:
    """Absolute action rows moving from `position` at constant `velocity`, orientation held."""
    from mambavla.spaces import pose_to_vector

    positions = position + np.arange(rows)[:, None] * dt * np.asarray(velocity)
    vec = pose_to_vector(positions, np.broadcast_to(quat, (rows, 4)))
    return np.concatenate([vec, np.full((rows, 1), gripper)], axis=1)


__all__ = ["Probe", "NodeProcess", "TIMEOUT", "chunk_message", "line_rows", "stamp_to_seconds"]
