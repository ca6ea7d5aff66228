"""Episodes as rosbag2 (MCAP) files, written and read with `rosbags` (pure Python, no ROS install).

One episode = one rosbag2 directory (`metadata.yaml` + one `.mcap`), standard messages only:

    /cameras/<name>/image_raw  sensor_msgs/msg/Image            rgb8, one per frame and camera
    /joint_states              sensor_msgs/msg/JointState       fr3_joint1..7 (rad) + two finger joints (m)
    /ee_pose                   geometry_msgs/msg/PoseStamped    end-effector pose, frame `fr3_link0`
    /instruction               std_msgs/msg/String              once, at the start (offered QoS: reliable, transient local)
    /action                    trajectory_msgs/msg/JointTrajectory
                               joint_names = spaces.ACTION_NAMES, one point: the commanded absolute
                               target (x, y, z, rotation vector w.r.t. spaces.EE_REFERENCE_QUAT, gripper)

Frames are written at the policy rate with one stamp shared by all topics of a frame. Beside the
messages, `episode.json` in the bag directory (also copied into the bag's `custom_data`) holds what a
reader needs: task, instruction, seed, success, dt, cameras, image size, frame count.

`read_episode(path)` returns an `Episode` of aligned numpy arrays and raises `EpisodeError` with a
clear reason for anything unusable (not a bag, corrupt or truncated, missing topics, no frames,
inconsistent image sizes). Streams recorded elsewhere with their own stamps are aligned to the
first camera's frames by taking the latest message at or before each frame. A camera recorded as
sensor_msgs/CompressedImage (JPEG/PNG) on `/cameras/<name>/image_raw/compressed`, as image_transport
publishes it, is read when its raw topic is absent; frames decode with `images.image_to_rgb`, as in policy_node.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from mambavla import spaces

FORMAT = "mambavla-episode/1"
SIDECAR = "episode.json"
BASE_FRAME = "fr3_link0"
ARM_JOINTS: tuple[str, ...] = tuple(f"fr3_joint{i}" for i in range(1, 8))
FINGER_JOINTS: tuple[str, ...] = ("fr3_finger_joint1", "fr3_finger_joint2")
JOINT_STATE_TOPIC = "/joint_states"
EE_POSE_TOPIC = "/ee_pose"
INSTRUCTION_TOPIC = "/instruction"
ACTION_TOPIC = "/action"
IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE_TYPE = "sensor_msgs/msg/CompressedImage"
COMPRESSED_SUFFIX = "/compressed"  # image_transport's compressed topic: <base topic>/compressed
TYPES = {
    JOINT_STATE_TOPIC: "sensor_msgs/msg/JointState",
    EE_POSE_TOPIC: "geometry_msgs/msg/PoseStamped",
    INSTRUCTION_TOPIC: "std_msgs/msg/String",
    ACTION_TOPIC: "trajectory_msgs/msg/JointTrajectory",
}


def camera_topic(name: str) -> str:
    return f"/cameras/{name}/image_raw"


def _typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)


def _latched_qos():
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    never = QosTime(0, 0)
    return Qos(QosHistory.KEEP_LAST, 1, QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL, never, never,
               QosLiveliness.AUTOMATIC, never, False)


class EpisodeError(ValueError):
    """An episode that cannot be used, with the reason."""


COMPRESSIONS: tuple[str, ...] = ("message", "file", "none")
IMAGE_FORMATS: tuple[str, ...] = ("raw", "jpeg")


class EpisodeWriter:
    """Writes one episode bag. Use as a context manager or call `close(**final_meta)`.

    `compression` is rosbag2's zstd compression, which `ros2 bag play` and `rosbags` both read:
    "message" (default; a plain .mcap of compressed messages, ~6x smaller for sim images), "file"
    (the whole file, .mcap.zstd, ~20x smaller) or "none".

    `image_format` "raw" records sensor_msgs/Image rgb8 on `/cameras/<name>/image_raw`; "jpeg" records
    sensor_msgs/CompressedImage on `/cameras/<name>/image_raw/compressed`, as image_transport publishes
    it (OpenCV, `jpeg_quality`), which `read_episode` and replay read back.
    """

    def __init__(self, path: str | Path, cameras: Sequence[str], image_size: tuple[int, int], dt: float,
                 meta: dict | None = None, compression: str = "message", image_format: str = "raw",
                 jpeg_quality: int = 90):
        from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer

        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
        if image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
        if not 1 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be within 1..100, got {jpeg_quality}")
        self.image_format, self.jpeg_quality = image_format, int(jpeg_quality)
        self.path = Path(path)
        self.cameras, self.image_size, self.dt = tuple(cameras), tuple(image_size), float(dt)
        self.meta = dict(meta or {})
        self.frames = 0
        self._ts = _typestore()
        self._writer = Writer(self.path, version=9, storage_plugin=StoragePlugin.MCAP)
        if compression != "none":
            self._writer.set_compression(CompressionMode[compression.upper()], CompressionFormat.ZSTD)
        self._writer.open()
        self._image_topics = {c: camera_topic(c) + (COMPRESSED_SUFFIX if image_format == "jpeg" else "") for c in self.cameras}
        image_type = COMPRESSED_IMAGE_TYPE if image_format == "jpeg" else IMAGE_TYPE
        self._conns = {t: self._writer.add_connection(t, image_type, typestore=self._ts) for t in self._image_topics.values()}
        for topic, msgtype in TYPES.items():
            # `ros2 bag play` offers the recorded QoS: the instruction must stay latched (transient local),
            # as policy_node subscribes to it that way.
            qos = [_latched_qos()] if topic == INSTRUCTION_TOPIC else []
            self._conns[topic] = self._writer.add_connection(topic, msgtype, typestore=self._ts, offered_qos_profiles=qos)
        self._last_stamp = 0

    def _header(self, t: float, frame_id: str):
        T = self._ts.types
        ns = int(round(t * 1e9))
        return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9), frame_id=frame_id), ns

    def _write(self, topic: str, msg, ns: int) -> None:
        self._writer.write(self._conns[topic], ns, self._ts.serialize_cdr(msg, msg.__msgtype__))
        self._last_stamp = max(self._last_stamp, ns)

    def write_instruction(self, t: float, text: str) -> None:
        _, ns = self._header(t, "")
        self._write(INSTRUCTION_TOPIC, self._ts.types["std_msgs/msg/String"](data=text), ns)

    def write_frame(
        self,
        t: float,
        images: dict[str, np.ndarray],
        joint_positions: np.ndarray,
        finger_positions: np.ndarray,
        ee_position: np.ndarray,
        ee_quat: np.ndarray,
        action: np.ndarray,
        joint_velocities: np.ndarray | None = None,
    ) -> None:
        """One frame at time t (s): every camera image (uint8[H,W,3]), robot state and the commanded action."""
        T = self._ts.types
        for name in self.cameras:
            img = np.ascontiguousarray(images[name], dtype=np.uint8)
            if img.shape != (*self.image_size, 3):
                raise EpisodeError(f"camera {name!r} gave {img.shape}, expected {(*self.image_size, 3)}")
            header, ns = self._header(t, f"{name}_camera")
            if self.image_format == "jpeg":
                from mambavla.data.images import encode_jpeg

                msg = T["sensor_msgs/msg/CompressedImage"](header=header, format="rgb8; jpeg compressed bgr8",
                                                            data=np.frombuffer(encode_jpeg(img, self.jpeg_quality), np.uint8))
            else:
                msg = T["sensor_msgs/msg/Image"](header=header, height=img.shape[0], width=img.shape[1], encoding="rgb8",
                                                  is_bigendian=0, step=img.shape[1] * 3, data=img.reshape(-1))
            self._write(self._image_topics[name], msg, ns)
        header, ns = self._header(t, BASE_FRAME)
        position = np.concatenate([joint_positions, finger_positions]).astype(np.float64)
        velocity = np.zeros(0) if joint_velocities is None else np.asarray(joint_velocities, dtype=np.float64)
        self._write(JOINT_STATE_TOPIC, T["sensor_msgs/msg/JointState"](header=header, name=list(ARM_JOINTS + FINGER_JOINTS),
                                                                         position=position, velocity=velocity, effort=np.zeros(0)), ns)
        p, q = np.asarray(ee_position, dtype=float), np.asarray(ee_quat, dtype=float)
        pose = T["geometry_msgs/msg/Pose"](position=T["geometry_msgs/msg/Point"](x=p[0], y=p[1], z=p[2]),
                                           orientation=T["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3]))
        self._write(EE_POSE_TOPIC, T["geometry_msgs/msg/PoseStamped"](header=header, pose=pose), ns)
        point = T["trajectory_msgs/msg/JointTrajectoryPoint"](
            positions=np.asarray(action, dtype=np.float64), velocities=np.zeros(0), accelerations=np.zeros(0),
            effort=np.zeros(0), time_from_start=T["builtin_interfaces/msg/Duration"](sec=0, nanosec=0))
        self._write(ACTION_TOPIC, T["trajectory_msgs/msg/JointTrajectory"](header=header, joint_names=list(spaces.ACTION_NAMES), points=[point]), ns)
        self.frames += 1

    def close(self, **final_meta) -> Path:
        meta = {"format": FORMAT, **self.meta, **final_meta, "dt": self.dt, "cameras": list(self.cameras),
                "image_size": list(self.image_size), "image_format": self.image_format, "frames": self.frames}
        self._writer.set_custom_data("mambavla", json.dumps(meta))
        self._writer.close()
        (self.path / SIDECAR).write_text(json.dumps(meta, indent=2) + "\n")
        return self.path

    def abort(self) -> None:
        self._writer.close()

    def __enter__(self) -> "EpisodeWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


@dataclass
class Episode:
    path: Path
    instruction: str
    meta: dict
    times: np.ndarray  # float64[T], s since the first frame
    images: dict[str, np.ndarray]  # camera -> uint8[T, H, W, 3]
    proprio: np.ndarray  # float32[T, 8], spaces layout
    actions: np.ndarray  # float32[T, 7], absolute, spaces layout
    joint_positions: np.ndarray  # float32[T, 9]: 7 arm joints, 2 fingers
    counts: dict[str, int] = field(default_factory=dict)  # messages per topic

    def __len__(self) -> int:
        return len(self.times)

    @property
    def success(self) -> bool | None:
        return self.meta.get("success")

    @property
    def task(self) -> str | None:
        return self.meta.get("task")

    @property
    def image_size(self) -> tuple[int, int]:
        return next(iter(self.images.values())).shape[1:3]


def is_bag_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "metadata.yaml").exists() or any(path.glob("*.mcap*")) or any(path.glob("*.db3*")))


def read_meta(path: str | Path) -> dict:
    """The episode's sidecar metadata ({} if there is none)."""
    sidecar = Path(path) / SIDECAR
    if sidecar.exists():
        try:
            return json.loads(sidecar.read_text())
        except json.JSONDecodeError as err:
            raise EpisodeError(f"{sidecar}: unreadable sidecar JSON ({err})") from err
    return {}


def read_episode(path: str | Path, cameras: Sequence[str] | None = None) -> Episode:
    """Decode a bag into aligned arrays. `cameras` defaults to the sidecar's list or every image topic."""
    from rosbags.rosbag2 import Reader

    path = Path(path)
    if not path.exists():
        raise EpisodeError(f"{path}: no such episode")
    if not path.is_dir() or not is_bag_dir(path):
        raise EpisodeError(f"{path}: not a rosbag2 directory (no metadata.yaml or .mcap file)")
    if not (path / "metadata.yaml").exists():
        raise EpisodeError(f"{path}: no metadata.yaml: the recording was not closed (truncated bag?)")
    meta = read_meta(path)
    ts = _typestore()
    try:
        with Reader(path) as reader:
            if not meta and reader.metadata.get("custom_data"):
                meta = json.loads((reader.metadata.get("custom_data") or {}).get("mambavla", "{}"))
            topics = {c.topic: c.msgtype for c in reader.connections}
            image_topics = sorted(t for t, m in topics.items() if t.startswith("/cameras/") and
                                  (m == IMAGE_TYPE or (m == COMPRESSED_IMAGE_TYPE and t.endswith(COMPRESSED_SUFFIX))))
            names = list(cameras or meta.get("cameras") or dict.fromkeys(t.split("/")[2] for t in image_topics))
            sources = {n: _camera_source(topics, n) for n in names}
            wanted = list(sources.values()) + list(TYPES)
            missing = [t for t in wanted if t not in topics]
            if missing:
                raise EpisodeError(f"{path}: missing topics {', '.join(missing)} (has {', '.join(sorted(topics)) or 'none'})")
            for topic, msgtype in TYPES.items():
                if topics[topic] != msgtype:
                    raise EpisodeError(f"{path}: topic {topic} is {topics[topic]}, expected {msgtype}")
            streams: dict[str, list] = {t: [] for t in wanted}
            conns = [c for c in reader.connections if c.topic in streams]
            for conn, stamp, raw in reader.messages(connections=conns):
                msg = ts.deserialize_cdr(raw, conn.msgtype)
                streams[conn.topic].append((_stamp(msg, stamp), msg))
    except EpisodeError:
        raise
    except Exception as err:  # rosbags raises several types for damaged files
        raise EpisodeError(f"{path}: corrupt or truncated bag ({type(err).__name__}: {err})") from err
    return _assemble(path, meta, sources, streams)


def _camera_source(topics: dict[str, str], name: str) -> str:
    """The camera's raw Image topic, else its image_transport CompressedImage twin (the raw name when neither)."""
    raw = camera_topic(name)
    if topics.get(raw) != IMAGE_TYPE and topics.get(raw + COMPRESSED_SUFFIX) == COMPRESSED_IMAGE_TYPE:
        return raw + COMPRESSED_SUFFIX
    return raw


def _stamp(msg, fallback_ns: int) -> int:
    header = getattr(msg, "header", None)
    if header is None:
        return fallback_ns
    return int(header.stamp.sec) * 10**9 + int(header.stamp.nanosec)


def _align(ref: np.ndarray, stamps: np.ndarray) -> np.ndarray:
    """Index of the latest message at or before each reference stamp (-1 if none)."""
    return np.searchsorted(stamps, ref, side="right") - 1


def _assemble(path: Path, meta: dict, sources: dict[str, str], streams: dict[str, list]) -> Episode:
    """`sources`: camera name -> the topic its frames come from."""
    cameras = list(sources)
    counts = {t: len(v) for t, v in streams.items()}
    empty = [t for t in list(sources.values()) + [JOINT_STATE_TOPIC, EE_POSE_TOPIC, ACTION_TOPIC] if not streams[t]]
    if empty:
        raise EpisodeError(f"{path}: no messages on {', '.join(empty)}")
    for t in streams:
        streams[t].sort(key=lambda item: item[0])
    ref_topic = sources[cameras[0]] if cameras else JOINT_STATE_TOPIC  # state-only bags have no cameras
    ref = np.array([s for s, _ in streams[ref_topic]], dtype=np.int64)
    index = {t: _align(ref, np.array([s for s, _ in v], dtype=np.int64)) for t, v in streams.items() if t != INSTRUCTION_TOPIC}
    valid = np.all([i >= 0 for i in index.values()], axis=0)
    if not valid.any():
        raise EpisodeError(f"{path}: camera frames and robot state never overlap in time")
    keep = np.flatnonzero(valid)

    images = {}
    size = None
    for name in cameras:
        msgs, at = streams[sources[name]], index[sources[name]]
        frames = [_image_array(path, name, msgs[at[k]][1]) for k in keep]
        arr = np.stack(frames)
        if size is not None and arr.shape[1:3] != size:
            raise EpisodeError(f"{path}: camera {name!r} is {arr.shape[2]}x{arr.shape[1]}, other cameras {size[1]}x{size[0]}")
        size = arr.shape[1:3]
        images[name] = arr
    if size is not None and meta.get("image_size") and tuple(meta["image_size"]) != size:  # no cameras read: nothing to check
        raise EpisodeError(f"{path}: images are {size}, the sidecar says {tuple(meta['image_size'])}")

    joints = np.stack([_joint_vector(path, streams[JOINT_STATE_TOPIC][index[JOINT_STATE_TOPIC][k]][1]) for k in keep])
    poses = [streams[EE_POSE_TOPIC][index[EE_POSE_TOPIC][k]][1].pose for k in keep]
    position = np.array([[p.position.x, p.position.y, p.position.z] for p in poses])
    quat = np.array([[p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w] for p in poses])
    proprio = np.concatenate([spaces.pose_to_vector(position, quat), joints[:, 7:9]], axis=1).astype(np.float32)
    actions = np.stack([_action_vector(path, streams[ACTION_TOPIC][index[ACTION_TOPIC][k]][1]) for k in keep]).astype(np.float32)
    if not (np.isfinite(proprio).all() and np.isfinite(actions).all()):
        raise EpisodeError(f"{path}: non-finite robot state or action values")
    instruction = streams[INSTRUCTION_TOPIC][0][1].data if streams[INSTRUCTION_TOPIC] else meta.get("instruction", "")
    if not instruction:
        raise EpisodeError(f"{path}: no instruction (topic {INSTRUCTION_TOPIC} empty and none in the sidecar)")
    times = (ref[keep] - ref[keep][0]) / 1e9
    return Episode(path, instruction, meta, times, images, proprio, actions, joints.astype(np.float32), counts)


def _image_array(path: Path, name: str, msg) -> np.ndarray:
    from mambavla.data.images import image_to_rgb

    try:
        return image_to_rgb(msg)
    except ValueError as err:
        raise EpisodeError(f"{path}: camera {name!r}: {err}") from err


def _joint_vector(path: Path, msg) -> np.ndarray:
    names = list(msg.name)
    try:
        order = [names.index(n) for n in ARM_JOINTS + FINGER_JOINTS]
    except ValueError:
        if len(msg.position) != 9:
            raise EpisodeError(f"{path}: /joint_states names {names} lack the FR3 arm and finger joints") from None
        order = list(range(9))
    return np.asarray(msg.position, dtype=np.float64)[order]


def _action_vector(path: Path, msg) -> np.ndarray:
    if list(msg.joint_names) != list(spaces.ACTION_NAMES) or not msg.points:
        raise EpisodeError(f"{path}: /action joint_names {list(msg.joint_names)} (expected {list(spaces.ACTION_NAMES)}) or no points")
    return np.asarray(msg.points[0].positions, dtype=np.float64)
