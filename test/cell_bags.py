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
) -> Path:
    """One demonstration as the cell records it. `rate_change_at`: the cameras drop to 1 / `rate_factor` of their
    rate from then on (until `rate_change_until`); `corrupt_wrist_frame`: that JPEG cut short; `goal_pose`: a
    second PoseStamped topic (/goal_pose); `pose`: False leaves the pose out; `instruction`: also a
    /task_instruction String topic (a list: one per demonstration); `demonstrations`: that many, `pause` s apart,
    the recorder paused in between."""
    import cv2
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_KILTED)
    T = ts.types
    rng = np.random.default_rng(0)

    def header(t: float, frame: str):
        ns = int(round((START + t) * 1e9))
        return T["std_msgs/msg/Header"](
            stamp=T["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9), frame_id=frame
        ), ns

    arm = [f"fr3_joint{i}" for i in range(1, 8)]
    fingers = ["fr3_finger_joint1", "fr3_finger_joint2"]
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:

        def conn(topic, msgtype):
            return writer.add_connection(topic, msgtype, typestore=ts)

        c = {
            FRONT: conn(FRONT, "sensor_msgs/msg/Image"),
            FRONT + "/compressed": conn(FRONT + "/compressed", "sensor_msgs/msg/CompressedImage"),
            FRONT_DEPTH: conn(FRONT_DEPTH, "sensor_msgs/msg/Image"),
            WRIST: conn(WRIST, "sensor_msgs/msg/CompressedImage"),
            JOINTS: conn(JOINTS, "sensor_msgs/msg/JointState"),
            ARM_JOINTS: conn(ARM_JOINTS, "sensor_msgs/msg/JointState"),
            GRIPPER_JOINTS: conn(GRIPPER_JOINTS, "sensor_msgs/msg/JointState"),
            "/robot_description": conn("/robot_description", "std_msgs/msg/String"),
        }
        if pose:
            c[POSE] = conn(POSE, "geometry_msgs/msg/PoseStamped")
        if goal_pose:
            c["/goal_pose"] = conn("/goal_pose", "geometry_msgs/msg/PoseStamped")
        if instruction:
            c["/task_instruction"] = conn("/task_instruction", "std_msgs/msg/String")
        events = []  # (log ns, topic, message)
        _, ns0 = header(0.0, "")
        events.append((ns0, "/robot_description", T["std_msgs/msg/String"](data="<robot name='fr3'/>")))
        texts = [instruction] if isinstance(instruction, str) else list(instruction or [])
        for j in range(demonstrations):
            offset = j * (seconds + 0.3 + pause)
            if texts:
                _, ns = header(offset, "")
                events.append((ns, "/task_instruction", T["std_msgs/msg/String"](data=texts[j % len(texts)])))
            camera_times, t = [], 0.0
            while t < seconds:
                camera_times.append(t)
                slow = rate_change_at is not None and rate_change_at <= t < (rate_change_until or seconds)
                t += (rate_factor if slow else 1.0) / camera_hz
            for k, tk in enumerate(camera_times):
                jitter = float(rng.uniform(-1e-3, 1e-3))
                rgb = scene(k)
                h, ns = header(offset + tk + jitter, "front_color_optical_frame")
                bgr = np.ascontiguousarray(rgb[..., ::-1])
                events.append(
                    (
                        ns,
                        FRONT,
                        T["sensor_msgs/msg/Image"](
                            header=h,
                            height=SIZE[0],
                            width=SIZE[1],
                            encoding="bgr8",
                            is_bigendian=0,
                            step=SIZE[1] * 3,
                            data=bgr.reshape(-1),
                        ),
                    )
                )
                events.append(
                    (
                        ns,
                        FRONT + "/compressed",
                        T["sensor_msgs/msg/CompressedImage"](
                            header=h, format="bgr8; jpeg compressed bgr8", data=cv2.imencode(".jpg", bgr)[1].reshape(-1)
                        ),
                    )
                )
                depth = np.full(SIZE, 800 + k, np.uint16)
                events.append(
                    (
                        ns,
                        FRONT_DEPTH,
                        T["sensor_msgs/msg/Image"](
                            header=h,
                            height=SIZE[0],
                            width=SIZE[1],
                            encoding="16UC1",
                            is_bigendian=0,
                            step=SIZE[1] * 2,
                            data=depth.view(np.uint8).reshape(-1),
                        ),
                    )
                )
                h, ns = header(offset + tk + 0.004 + jitter, "wrist_color_optical_frame")
                jpeg = cv2.imencode(".jpg", np.ascontiguousarray(scene(k + 7)[..., ::-1]))[1].reshape(-1)
                if k == corrupt_wrist_frame:
                    jpeg = jpeg[: len(jpeg) // 3]
                events.append(
                    (
                        ns,
                        WRIST,
                        T["sensor_msgs/msg/CompressedImage"](header=h, format="bgr8; jpeg compressed bgr8", data=jpeg),
                    )
                )
            state_times = np.arange(0.0, seconds + 0.3, 1.0 / STATE_HZ)  # the state outlasts the cameras, as it does
            positions, quats = pose_at(state_times)
            finger = finger_at(state_times)
            for k, tk in enumerate(state_times):
                q_arm = 0.1 * np.arange(1, 8) + 0.01 * tk
                h, ns = header(offset + tk, "")
                events.append(
                    (
                        ns,
                        JOINTS,
                        T["sensor_msgs/msg/JointState"](
                            header=h,
                            name=arm + fingers,
                            position=np.r_[q_arm, finger[k], finger[k]],
                            velocity=np.zeros(0),
                            effort=np.zeros(0),
                        ),
                    )
                )
                events.append(
                    (
                        ns,
                        ARM_JOINTS,
                        T["sensor_msgs/msg/JointState"](
                            header=h, name=arm, position=q_arm, velocity=np.zeros(7), effort=np.zeros(7)
                        ),
                    )
                )
                events.append(
                    (
                        ns,
                        GRIPPER_JOINTS,
                        T["sensor_msgs/msg/JointState"](
                            header=h,
                            name=fingers,
                            position=np.r_[finger[k], finger[k]],
                            velocity=np.zeros(0),
                            effort=np.zeros(0),
                        ),
                    )
                )
                p, q = positions[k], quats[k]
                msg = T["geometry_msgs/msg/PoseStamped"](
                    header=T["std_msgs/msg/Header"](stamp=h.stamp, frame_id="fr3_link0"),
                    pose=T["geometry_msgs/msg/Pose"](
                        position=T["geometry_msgs/msg/Point"](x=p[0], y=p[1], z=p[2]),
                        orientation=T["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3]),
                    ),
                )
                if pose:
                    events.append((ns, POSE, msg))
                if goal_pose and k % 50 == 0:
                    events.append((ns, "/goal_pose", msg))
        for ns, topic, msg in sorted(events, key=lambda e: e[0]):
            writer.write(
                c[topic], ns + 2_000_000, ts.serialize_cdr(msg, msg.__msgtype__)
            )  # logged 2 ms after the stamp
    return path
