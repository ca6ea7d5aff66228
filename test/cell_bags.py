"""Bags laid out as `ros2 bag record` writes them on a franka_ros2 + realsense-ros cell, written with rosbags.

Two RealSense cameras at 30 Hz (`camera_name:=front` raw bgr8 with its image_transport `/compressed` twin and
a 16-bit depth stream; `camera_name:=wrist` JPEG only), three JointState topics (the merged /joint_states,
the arm's /franka/joint_states, the gripper's /fr3_gripper/joint_states) and the pose on
franka_robot_state_broadcaster's `current_pose` at 100 Hz, /robot_description; no /action, no /instruction,
no episode.json. Header stamps are wall-clock times with a little jitter on the cameras.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mambavla import spaces

FRONT = "/camera/front/color/image_raw"
FRONT_DEPTH = "/camera/front/depth/image_rect_raw"
WRIST = "/camera/wrist/color/image_raw/compressed"
JOINTS = "/joint_states"
ARM_JOINTS = "/franka/joint_states"
GRIPPER_JOINTS = "/fr3_gripper/joint_states"
POSE = "/franka_robot_state_broadcaster/current_pose"
CAMERA_HZ, STATE_HZ = 30.0, 100.0
SIZE = (60, 80)  # (H, W) recorded
START = 1733500000.0  # s: wall-clock stamps
GRASP_AT = 1.0  # s: the fingers start closing


def pose_at(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The recorded hand: 5 cm/s along x, 2 cm/s down, tilted 0.15 rad about x (the simulator's demonstrations stay
    within +-0.06 rad) and turning 0.2 rad/s about z."""
    t = np.asarray(t, dtype=np.float64)
    position = np.stack([0.45 + 0.05 * t, 0.02 * np.ones_like(t), 0.30 - 0.02 * t], axis=-1)
    vector = np.concatenate([position, np.full((len(t), 1), 0.15), np.zeros((len(t), 1)), 0.2 * t[:, None]], axis=1)
    return spaces.vector_to_pose(vector)


def finger_at(t: np.ndarray) -> np.ndarray:
    """Each finger's opening (m): open 0.04, closing over 0.4 s from GRASP_AT to 0.015 (a cube in the hand)."""
    return 0.04 - 0.025 * np.clip((np.asarray(t) - GRASP_AT) / 0.4, 0.0, 1.0)


def scene(k: int, size=SIZE) -> np.ndarray:
    """RGB frame k: a red field with a green bar that moves, so a swapped channel or a stale frame shows."""
    img = np.zeros((*size, 3), np.uint8)
    img[..., 0] = 200
    img[:, (4 * k) % size[1] : (4 * k) % size[1] + 4] = (0, 220, 0)
    return img


class BagWriter:
    """A rosbag2 MCAP bag written by hand with rosbags, as another cell's drivers would record it: messages built from
    the typestore with header stamps in wall-clock seconds, each logged `log_delay` s after its stamp; `close` writes
    them in log-time order, a topic's connection made at its first message."""

    def __init__(self, path: Path, log_delay: float = 0.0):
        from rosbags.typesys import Stores, get_typestore

        self.path, self.log_delay_ns = Path(path), int(round(log_delay * 1e9))
        self.ts = get_typestore(Stores.ROS2_KILTED)
        self.T = self.ts.types
        self.events: list[tuple[int, str, object]] = []  # (log ns, topic, message)

    def header(self, t: float, frame: str = ""):
        ns = int(round(t * 1e9))
        stamp = self.T["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9)
        return self.T["std_msgs/msg/Header"](stamp=stamp, frame_id=frame)

    def add(self, topic: str, msg, t: float | None = None) -> None:
        """`msg` on `topic`, logged after its header stamp (or at `t` s, for a message without a header)."""
        if t is None:
            ns = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        else:
            ns = int(round(t * 1e9))
        self.events.append((ns + self.log_delay_ns, topic, msg))

    def image(self, header, rgb: np.ndarray, encoding: str = "bgr8"):
        """A raw sensor_msgs/Image of RGB pixels, stored as `encoding` (bgr8, rgb8) or a uint16 frame as 16UC1."""
        if encoding == "16UC1":
            data, step = rgb.view(np.uint8).reshape(-1), rgb.shape[1] * 2
        else:
            pixels = rgb[..., ::-1] if encoding == "bgr8" else rgb
            data, step = np.ascontiguousarray(pixels).reshape(-1), rgb.shape[1] * 3
        return self.T["sensor_msgs/msg/Image"](
            header=header,
            height=rgb.shape[0],
            width=rgb.shape[1],
            encoding=encoding,
            is_bigendian=0,
            step=step,
            data=data,
        )

    def jpeg(self, header, rgb: np.ndarray, fmt: str = "bgr8; jpeg compressed bgr8", cut: bool = False):
        """A sensor_msgs/CompressedImage of RGB pixels as image_transport publishes it; `cut`: cut short (corrupt)."""
        import cv2

        data = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]))[1].reshape(-1)
        return self.T["sensor_msgs/msg/CompressedImage"](
            header=header, format=fmt, data=data[: len(data) // 3] if cut else data
        )

    def joint_state(self, header, names: list[str], positions) -> object:
        return self.T["sensor_msgs/msg/JointState"](
            header=header,
            name=names,
            position=np.asarray(positions, np.float64),
            velocity=np.zeros(0),
            effort=np.zeros(0),
        )

    def pose(self, header, position, quat) -> object:
        return self.T["geometry_msgs/msg/PoseStamped"](
            header=header,
            pose=self.T["geometry_msgs/msg/Pose"](
                position=self.T["geometry_msgs/msg/Point"](x=position[0], y=position[1], z=position[2]),
                orientation=self.T["geometry_msgs/msg/Quaternion"](x=quat[0], y=quat[1], z=quat[2], w=quat[3]),
            ),
        )

    def string(self, text: str) -> object:
        return self.T["std_msgs/msg/String"](data=text)

    def close(self) -> Path:
        from rosbags.rosbag2 import StoragePlugin, Writer

        with Writer(self.path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
            conns = {}
            for ns, topic, msg in sorted(self.events, key=lambda e: e[0]):
                if topic not in conns:
                    conns[topic] = writer.add_connection(topic, msg.__msgtype__, typestore=self.ts)
                writer.write(conns[topic], ns, self.ts.serialize_cdr(msg, msg.__msgtype__))
        return self.path


def write_cell_bag(
    path: Path,
    seconds: float = 2.0,
    camera_hz: float = CAMERA_HZ,
    rate_change_at: float | None = None,
    rate_factor: float = 2.0,
    rate_change_until: float | None = None,
    corrupt_wrist_frame: int | None = None,
    goal_pose: bool = False,
    pose: bool = True,
    instruction: str | list[str] | None = None,
    demonstrations: int = 1,
    pause: float = 2.0,
    pose_pause: tuple[float, float] | None = None,
    depth_offset: float = 0.0,
) -> Path:
    """One demonstration as the cell records it. `rate_change_at`: the cameras drop to 1 / `rate_factor` of their
    rate from then on (until `rate_change_until`); `corrupt_wrist_frame`: that JPEG cut short; `goal_pose`: a
    second PoseStamped topic (/goal_pose); `pose`: False leaves the pose out; `instruction`: also a
    /task_instruction String topic (a list: one per demonstration); `demonstrations`: that many, `pause` s apart,
    the recorder paused in between; `pose_pause`: (from, to) s with no pose message (a driver that stalled);
    `depth_offset`: s the depth frames are stamped after their colour frames (0: aligned depth's own stamp)."""
    bag = BagWriter(path, log_delay=0.002)  # logged 2 ms after the stamp
    rng = np.random.default_rng(0)
    arm = [f"fr3_joint{i}" for i in range(1, 8)]
    fingers = ["fr3_finger_joint1", "fr3_finger_joint2"]
    bag.add("/robot_description", bag.string("<robot name='fr3'/>"), START)
    texts = [instruction] if isinstance(instruction, str) else list(instruction or [])
    for j in range(demonstrations):
        offset = START + j * (seconds + 0.3 + pause)
        if texts:
            bag.add("/task_instruction", bag.string(texts[j % len(texts)]), offset)
        camera_times, t = [], 0.0
        while t < seconds:
            camera_times.append(t)
            slow = rate_change_at is not None and rate_change_at <= t < (rate_change_until or seconds)
            t += (rate_factor if slow else 1.0) / camera_hz
        for k, tk in enumerate(camera_times):
            jitter = float(rng.uniform(-1e-3, 1e-3))
            h = bag.header(offset + tk + jitter, "front_color_optical_frame")
            bag.add(FRONT, bag.image(h, scene(k)))
            bag.add(FRONT + "/compressed", bag.jpeg(h, scene(k)))
            hd = bag.header(offset + tk + jitter + depth_offset, "front_color_optical_frame")
            bag.add(FRONT_DEPTH, bag.image(hd, np.full(SIZE, 800 + k, np.uint16), "16UC1"))
            h = bag.header(offset + tk + 0.004 + jitter, "wrist_color_optical_frame")
            bag.add(WRIST, bag.jpeg(h, scene(k + 7), cut=k == corrupt_wrist_frame))
        state_times = np.arange(0.0, seconds + 0.3, 1.0 / STATE_HZ)  # the state outlasts the cameras, as it does
        positions, quats = pose_at(state_times)
        finger = finger_at(state_times)
        for k, tk in enumerate(state_times):
            q_arm = 0.1 * np.arange(1, 8) + 0.01 * tk
            h = bag.header(offset + tk)
            bag.add(JOINTS, bag.joint_state(h, arm + fingers, np.r_[q_arm, finger[k], finger[k]]))
            bag.add(ARM_JOINTS, bag.joint_state(h, arm, q_arm))
            bag.add(GRIPPER_JOINTS, bag.joint_state(h, fingers, [finger[k], finger[k]]))
            msg = bag.pose(bag.header(offset + tk, "fr3_link0"), positions[k], quats[k])
            if pose and not (pose_pause and pose_pause[0] <= tk < pose_pause[1]):
                bag.add(POSE, msg)
            if goal_pose and k % 50 == 0:
                bag.add("/goal_pose", msg)
    return bag.close()
