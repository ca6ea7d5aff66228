"""Episodes as rosbag2 (MCAP) files, written and read with `rosbags` (pure Python, no ROS install).

One episode = one rosbag2 directory (`metadata.yaml` + one `.mcap`), standard messages only:

    /cameras/<name>/image_raw  sensor_msgs/msg/Image            rgb8, one per frame and camera
    /joint_states              sensor_msgs/msg/JointState       fr3_joint1..7 (rad) + two finger joints (m)
    /ee_pose                   geometry_msgs/msg/PoseStamped    end-effector pose, frame `fr3_link0`
    /instruction               std_msgs/msg/String              once, at the start (QoS: reliable, transient local)
    /action                    trajectory_msgs/msg/JointTrajectory
                               joint_names = spaces.ACTION_NAMES, one point: the commanded absolute
                               target (x, y, z, rotation vector w.r.t. spaces.EE_REFERENCE_QUAT, gripper)

Frames are written at the policy rate with one stamp shared by all topics of a frame. Beside the
messages, `episode.json` in the bag directory (also copied into the bag's `custom_data`) holds what a
reader needs: task, instruction, seed, success, dt, cameras, image size, frame count.

`read_episode(path, cameras, options)` reads any rosbag2 recording, ours or another cell's, through the
role finder replay uses (`mambavla.data.roles`: topics by type and name, or `--map ROLE=TOPIC`); the
sidecar is optional. It returns an `Episode` of rows at one interval and raises `EpisodeError` naming
the topic for anything unusable (not a bag, corrupt or truncated, a role missing or matched twice, a frame
that does not decode, a rate that changes or is irregular, a camera or robot state that pauses, no instruction):

- dt is the first camera's median interval between header stamps (`options.dt` resamples to another);
  rows are the times t0 + k dt where every stream has started, each stream's message nearest in time.
- frames are decoded and resized to `options.image_size` as they are read, so a 640x480 camera costs
  the policy's resolution in memory and in the decode cache.
- actions are the recorded command in force at each row (`actions` role), else derived from the
  measured trajectory: the pose `options.action_lead` s ahead as the absolute target, the gripper closed
  where the finger width that far ahead is below GRIPPER_CLOSED_BELOW of the episode's widest.
- the instruction is the recorded one (topic or sidecar), else `options.instruction`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from mambavla import spaces
from mambavla.data.roles import (
    FINGER_POSITION_LIMIT,
    BagError,
    BagInfo,
    arm_joint_order,
    depth_role,
    finger_positions,
    typestore,
)
from mambavla.runtime.depth_frames import MAX_OFFSET as DEPTH_OFFSET  # a row's depth, as policy_node pairs it

FORMAT = "mambavla-episode/1"
SIDECAR = "episode.json"
# episode.json fields EpisodeWriter.close sets from the bag itself
WRITER_FIELDS = frozenset({"format", "dt", "cameras", "image_size", "image_format", "frames", "depth_cameras"})
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


def depth_topic(name: str) -> str:
    """A camera's depth aligned to its colour frames (uint16 mm, 16UC1): beside its colour topic, by the one rule
    the nodes follow (`depth_topic_of`, as realsense-ros names it)."""
    from mambavla.runtime.policy_config import depth_topic_of

    return depth_topic_of(camera_topic(name))


def _latched_qos():
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    never = QosTime(0, 0)
    return Qos(
        QosHistory.KEEP_LAST,
        1,
        QosReliability.RELIABLE,
        QosDurability.TRANSIENT_LOCAL,
        never,
        never,
        QosLiveliness.AUTOMATIC,
        never,
        False,
    )


EpisodeError = BagError  # an episode that cannot be used, with the reason: the role finder's error, one class
# s: where no command was recorded, the measured pose this far ahead is a row's target. On franky-sim's expert lift it
# is nearer the commanded targets than half or 1.5 times it (test_data_bags); a real FR3's lag is not measured
ACTION_LEAD = 0.1
# finger width, as a fraction of the widest seen, under which the hand counts as closed: the one threshold for
# derived training actions and replay's gripper reference (evaluation/recording.py). It agrees with the commanded
# gripper on franky-sim's expert lift (test_data_bags); not checked on a real hand
GRIPPER_CLOSED_BELOW = 0.9
RATE_TOLERANCE = 0.25  # a stretch of the recording whose median interval is this far off the whole's: the rate moved
RATE_CHANGE = 1.9  # stretches whose rates differ by this factor: the rate changed (refused; less: a warning)
IRREGULAR_FRACTION = 0.1  # more intervals than this more than half off the median: irregular (a warning)
GAP_LIMIT = (5, 0.25)  # an interval this many times the median and this many s long: a pause, not dropped frames


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

    def __init__(
        self,
        path: str | Path,
        cameras: Sequence[str],
        image_size: tuple[int, int],
        dt: float,
        meta: dict | None = None,
        compression: str = "message",
        image_format: str = "raw",
        jpeg_quality: int = 90,
        depth_cameras: Sequence[str] = (),
    ):
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
        self._ts = typestore()
        self._writer = Writer(self.path, version=9, storage_plugin=StoragePlugin.MCAP)
        if compression != "none":
            self._writer.set_compression(CompressionMode[compression.upper()], CompressionFormat.ZSTD)
        self._writer.open()
        self._image_topics = {
            c: camera_topic(c) + (COMPRESSED_SUFFIX if image_format == "jpeg" else "") for c in self.cameras
        }
        image_type = COMPRESSED_IMAGE_TYPE if image_format == "jpeg" else IMAGE_TYPE
        self._conns = {
            t: self._writer.add_connection(t, image_type, typestore=self._ts) for t in self._image_topics.values()
        }
        unknown = [c for c in depth_cameras if c not in self.cameras]
        if unknown:
            raise ValueError(f"depth for camera(s) {unknown} that the episode does not record ({list(self.cameras)})")
        self.depth_cameras = tuple(depth_cameras)
        for c in self.depth_cameras:
            self._conns[depth_topic(c)] = self._writer.add_connection(depth_topic(c), IMAGE_TYPE, typestore=self._ts)
        for topic, msgtype in TYPES.items():
            # `ros2 bag play` offers the recorded QoS: the instruction must stay latched (transient local),
            # as policy_node subscribes to it that way.
            qos = [_latched_qos()] if topic == INSTRUCTION_TOPIC else []
            self._conns[topic] = self._writer.add_connection(
                topic, msgtype, typestore=self._ts, offered_qos_profiles=qos
            )

    def _header(self, t: float, frame_id: str):
        T = self._ts.types
        ns = int(round(t * 1e9))
        return T["std_msgs/msg/Header"](
            stamp=T["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9), frame_id=frame_id
        ), ns

    def _write(self, topic: str, msg, ns: int) -> None:
        self._writer.write(self._conns[topic], ns, self._ts.serialize_cdr(msg, msg.__msgtype__))

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
        depth: dict[str, np.ndarray] | None = None,
    ) -> None:
        """One frame at time t (s): every camera image (uint8[H,W,3]), robot state and the commanded action;
        `depth` {camera: uint16[H,W] mm} for the episode's depth cameras."""
        from mambavla.data.images import depth_message_fields

        T = self._ts.types
        for name in self.cameras:  # every frame checked before any is written: no half-written row in the bag
            shape = np.shape(images[name]) if name in images else None
            if shape != (*self.image_size, 3):
                raise EpisodeError(f"camera {name!r} gave {shape}, expected {(*self.image_size, 3)}")
        for name in self.depth_cameras:
            frame = (depth or {}).get(name)
            if frame is None or frame.shape != self.image_size or frame.dtype != np.uint16:
                got = "none" if frame is None else f"{frame.dtype} {frame.shape}"
                raise EpisodeError(f"depth of camera {name!r}: expected uint16 {self.image_size} mm, got {got}")
        for name in self.depth_cameras:
            header, ns = self._header(t, f"{name}_camera")
            self._write(depth_topic(name), T[IMAGE_TYPE](header=header, **depth_message_fields(depth[name])), ns)
        for name in self.cameras:
            img = np.ascontiguousarray(images[name], dtype=np.uint8)
            header, ns = self._header(t, f"{name}_camera")
            if self.image_format == "jpeg":
                from mambavla.data.images import encode_jpeg

                msg = T["sensor_msgs/msg/CompressedImage"](
                    header=header,
                    format="rgb8; jpeg compressed bgr8",
                    data=np.frombuffer(encode_jpeg(img, self.jpeg_quality), np.uint8),
                )
            else:
                msg = T["sensor_msgs/msg/Image"](
                    header=header,
                    height=img.shape[0],
                    width=img.shape[1],
                    encoding="rgb8",
                    is_bigendian=0,
                    step=img.shape[1] * 3,
                    data=img.reshape(-1),
                )
            self._write(self._image_topics[name], msg, ns)
        header, ns = self._header(t, BASE_FRAME)
        position = np.concatenate([joint_positions, finger_positions]).astype(np.float64)
        velocity = np.zeros(0) if joint_velocities is None else np.asarray(joint_velocities, dtype=np.float64)
        self._write(
            JOINT_STATE_TOPIC,
            T["sensor_msgs/msg/JointState"](
                header=header,
                name=list(ARM_JOINTS + FINGER_JOINTS),
                position=position,
                velocity=velocity,
                effort=np.zeros(0),
            ),
            ns,
        )
        p, q = np.asarray(ee_position, dtype=float), np.asarray(ee_quat, dtype=float)
        pose = T["geometry_msgs/msg/Pose"](
            position=T["geometry_msgs/msg/Point"](x=p[0], y=p[1], z=p[2]),
            orientation=T["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3]),
        )
        self._write(EE_POSE_TOPIC, T["geometry_msgs/msg/PoseStamped"](header=header, pose=pose), ns)
        point = T["trajectory_msgs/msg/JointTrajectoryPoint"](
            positions=np.asarray(action, dtype=np.float64),
            velocities=np.zeros(0),
            accelerations=np.zeros(0),
            effort=np.zeros(0),
            time_from_start=T["builtin_interfaces/msg/Duration"](sec=0, nanosec=0),
        )
        self._write(
            ACTION_TOPIC,
            T["trajectory_msgs/msg/JointTrajectory"](
                header=header, joint_names=list(spaces.ACTION_NAMES), points=[point]
            ),
            ns,
        )
        self.frames += 1

    def close(self, **final_meta) -> Path:
        own = {
            "format": FORMAT,
            "dt": self.dt,
            "cameras": list(self.cameras),
            "image_size": list(self.image_size),
            "image_format": self.image_format,
            "frames": self.frames,
            **({"depth_cameras": list(self.depth_cameras)} if self.depth_cameras else {}),
        }
        # every WRITER_FIELDS name from the bag itself, none from the caller (a caller's depth_cameras on a bag
        # without depth would misdescribe it to training)
        meta = {k: v for k, v in {**self.meta, **final_meta}.items() if k not in WRITER_FIELDS} | own
        self._writer.set_custom_data("mambavla", json.dumps(meta))
        self._writer.close()
        (self.path / SIDECAR).write_text(json.dumps(meta, indent=2) + "\n")
        return self.path

    def write_serialized(self, topic: str, ns: int, data: bytes) -> None:
        """A message already serialised as CDR (as rclpy hands a raw subscription's messages over) on one of the
        episode's topics, at `ns` nanoseconds: what a recorder on the robot stores without decoding."""
        if topic not in self._conns:
            raise EpisodeError(f"{topic} is not a topic of this episode ({', '.join(sorted(self._conns))})")
        self._writer.write(self._conns[topic], ns, data)

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
    meta: dict  # the sidecar's (or the bag's custom_data) plus what reading found: dt, roles, action source
    times: np.ndarray  # float64[T], s since the first row
    images: dict[str, np.ndarray]  # camera -> uint8[T, H, W, 3]
    proprio: np.ndarray  # float32[T, 8], spaces layout
    actions: np.ndarray  # float32[T, 7], absolute, spaces layout
    joint_positions: np.ndarray  # float32[T, 9]: 7 arm joints (NaN where not recorded), 2 fingers
    counts: dict[str, int] = field(default_factory=dict)  # messages per topic
    depth: dict[str, np.ndarray] = field(default_factory=dict)  # camera -> uint16[T, H, W] mm (ReadOptions.depth)

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
    return path.is_dir() and (
        (path / "metadata.yaml").exists() or any(path.glob("*.mcap*")) or any(path.glob("*.db3*"))
    )


def read_meta(path: str | Path) -> dict:
    """The episode's sidecar metadata ({} if there is none)."""
    sidecar = Path(path) / SIDECAR
    if sidecar.exists():
        try:
            return json.loads(sidecar.read_text())
        except json.JSONDecodeError as err:
            raise EpisodeError(f"{sidecar}: unreadable sidecar JSON ({err})") from err
    return {}


@dataclass(frozen=True)
class ReadOptions:
    """How a bag becomes training rows; part of the decode cache's key.

    maps:         role -> topic, as `--map` (see `mambavla.data.roles`)
    instruction:  for bags that recorded none (no instruction topic, nothing in the sidecar)
    image_size:   (H, W) every frame is resized to as it is read (None: as recorded)
    dt:           s between rows; None: the first camera's recorded interval (refused when irregular)
    action_lead:  s ahead of a row whose measured pose is its action, where no action topic was recorded
    default_cameras: the camera roles to look for when neither the caller, the sidecar, our /cameras/<name>/
                  layout nor `maps` names any (the policy's: a cell's topics are found by these names)
    split_gap:    s: a gap longer than this in the first camera's stream ends one demonstration (0: a bag is one)
    depth:        read each camera's aligned depth too (`Episode.depth`; roles NAME_depth, `mambavla.data.roles`)
    """

    maps: tuple[tuple[str, str], ...] = ()
    instruction: str = ""
    image_size: tuple[int, int] | None = None
    dt: float | None = None
    action_lead: float = ACTION_LEAD
    default_cameras: tuple[str, ...] = ()
    split_gap: float = 0.0
    depth: bool = False

    def __post_init__(self) -> None:
        if not self.split_gap >= 0:
            raise ValueError(f"split gap must be >= 0 s (0: one demonstration per bag), got {self.split_gap}")
        if self.dt is not None and not self.dt > 0:
            raise ValueError(f"dt must be > 0 s, got {self.dt}")
        if not self.action_lead >= 0:
            raise ValueError(f"action lead must be >= 0 s, got {self.action_lead}")
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise ValueError(f"image size must be two positive numbers (H, W), got {self.image_size}")

    @classmethod
    def make(
        cls,
        maps: dict | None = None,
        instruction: str | None = None,
        image_size=None,
        dt: float | None = None,
        action_lead: float = ACTION_LEAD,
        default_cameras=(),
        split_gap: float = 0.0,
        depth: bool = False,
    ) -> "ReadOptions":
        return cls(
            tuple(sorted((maps or {}).items())),
            instruction or "",
            tuple(image_size) if image_size else None,
            dt or None,
            float(action_lead),
            tuple(default_cameras or ()),
            float(split_gap or 0.0),
            bool(depth),
        )

    def key(self) -> str:
        fields = [self.maps, self.instruction, self.image_size, self.dt, self.action_lead, self.default_cameras]
        extra = ([self.split_gap] if self.split_gap or self.depth else []) + (["depth"] if self.depth else [])
        return json.dumps(fields + extra)


def read_episode(path: str | Path, cameras: Sequence[str] | None = None, options: ReadOptions | None = None) -> Episode:
    """Decode a bag into rows at a regular interval. `cameras` defaults to the sidecar's list, else the bag's
    /cameras/<name>/ topics, else the camera roles of `options.maps`; [] reads no camera."""
    options = options or ReadOptions()
    episodes = read_episodes(path, cameras, options)
    if len(episodes) > 1:
        raise EpisodeError(
            f"{path}: {len(episodes)} demonstrations (split at gaps over {options.split_gap} s); "
            f"read them with read_episodes"
        )
    return episodes[0]


def read_episodes(
    path: str | Path, cameras: Sequence[str] | None = None, options: ReadOptions | None = None
) -> list[Episode]:
    """`read_episode`, for a bag that may hold several demonstrations: with `options.split_gap`, one episode per
    stretch of the first camera's stream between gaps longer than that (a recorder paused between demonstrations)."""
    from mambavla.data.roles import custom_meta, inspect, read_messages

    options = options or ReadOptions()
    path = Path(path)
    if not path.exists():
        raise EpisodeError(f"{path}: no such episode")
    if not path.is_dir() or not is_bag_dir(path):
        raise EpisodeError(f"{path}: not a rosbag2 directory (no metadata.yaml or .mcap file)")
    meta = read_meta(path)
    if cameras is None and meta.get("cameras") is not None:
        cameras = list(meta["cameras"])
    info = inspect(path, cameras, dict(options.maps), require_pose=True, default_cameras=options.default_cameras,
                   depth=options.depth)
    meta = meta or custom_meta(info)
    cameras = list(cameras) if cameras is not None else info.cameras
    optional = ("actions", "target_pose", "instruction")
    roles = cameras + info.depth_roles + ["joint_states", "ee_pose"] + [r for r in optional if r in info.roles]
    streams: dict[str, list] = {r: [] for r in roles}
    for message in read_messages(info, roles, options.image_size):
        streams[message.role].append((message.stamp, message.value))
    counts = {info.roles[r]: len(v) for r, v in streams.items()}
    empty = [f"{info.roles[r]} ({r})" for r in roles if r != "instruction" and not streams[r]]
    if empty:
        raise EpisodeError(f"{path}: no usable messages on {', '.join(empty)}")
    for r in streams:
        streams[r].sort(key=lambda item: item[0])
    stamps = {r: np.array([round(s * 1e9) for s, _ in v], dtype=np.int64) for r, v in streams.items()}
    reference = (cameras or ["joint_states"])[0]
    windows = _split(stamps[reference], options.split_gap)
    episodes = []
    if len(windows) == 1:
        return [_episode(str(path), path, info, meta, cameras, roles, streams, stamps, counts, options)]
    margin = int(options.split_gap * 0.5e9)  # the other streams may start and end a little apart from the reference
    episodes = []
    for k, (lo, hi) in enumerate(windows):
        label = f"{path} [demonstration {k + 1} of {len(windows)}, from {lo / 1e9:.3f} s]"
        parts, part_stamps = {}, {}
        for r in roles:
            if r == "instruction":  # the last one given before the demonstration ends, else the first
                before = np.flatnonzero(stamps[r] <= hi)
                keep = before[-1:] if len(before) else np.arange(min(1, len(stamps[r])))
            else:
                pad = 0 if r == reference else margin
                keep = np.flatnonzero((stamps[r] >= lo - pad) & (stamps[r] <= hi + pad))
            parts[r], part_stamps[r] = [streams[r][i] for i in keep], stamps[r][keep]
        part_meta = {**meta, "demonstration": k, "demonstrations": len(windows)}
        episodes.append(_episode(label, path, info, part_meta, cameras, roles, parts, part_stamps, counts, options))
    return episodes


def _split(reference: np.ndarray, gap: float) -> list[tuple[int, int]]:
    """(first, last) stamps (ns) of each stretch of `reference` between gaps longer than `gap` s (0: one stretch)."""
    if not gap or len(reference) < 2:
        return [(int(reference[0]), int(reference[-1]))]
    cuts = np.flatnonzero(np.diff(reference) > gap * 1e9)
    starts, ends = np.r_[0, cuts + 1], np.r_[cuts, len(reference) - 1]
    return [(int(reference[a]), int(reference[b])) for a, b in zip(starts, ends)]


def _episode(
    label: str,
    path: Path,
    info: BagInfo,
    meta: dict,
    cameras: list[str],
    roles: list[str],
    streams: dict,
    stamps: dict,
    counts: dict,
    options: ReadOptions,
) -> Episode:
    """One episode's rows from its streams ((stamp, value) lists, sorted) and their int64 ns stamps."""
    empty = [f"{info.roles[r]} ({r})" for r in roles if r != "instruction" and not streams[r]]
    if empty:
        raise EpisodeError(f"{label}: no usable messages on {', '.join(empty)}")

    rated = cameras or ["joint_states"]  # every camera keeps one rate; the first one's is the recording's
    intervals = [recorded_interval(stamps[r], info.roles[r], label) for r in rated]
    recorded_dt, warnings = intervals[0][0], [w for _, found in intervals for w in found]
    dt = options.dt or recorded_dt
    dt_ns = int(round(dt * 1e9))
    timed = [r for r in roles if r != "instruction"]
    held = ("actions", "target_pose")  # commands: the last one stays in force, so they do not end the rows
    t0 = max(int(stamps[r][0]) for r in timed)
    t_end = min(int(stamps[r][-1]) for r in timed if r not in held)
    if t_end < t0:
        spans = ", ".join(f"{info.roles[r]} {stamps[r][0] / 1e9:.3f}..{stamps[r][-1] / 1e9:.3f} s" for r in timed)
        raise EpisodeError(f"{label}: the streams never overlap in time ({spans})")
    # a grid point up to a quarter interval past the last stamp still counts: stamps rounded to whole ns (15 Hz,
    # 60 Hz) or a little jitter put the last frame just short of its exact grid time
    rows = int(np.floor((t_end - t0) / dt_ns + 0.25)) + 1
    grid = t0 + np.round(np.arange(rows) * (dt * 1e9)).astype(np.int64)
    for r in ("joint_states", "ee_pose"):  # rows inside a pause would take a stale robot state
        _refuse_pause(stamps[r], grid, info.roles[r], label)

    images = {}
    for name in cameras:
        at = _nearest(stamps[name], grid)
        frames = [streams[name][k][1] for k in at]
        shapes = {f.shape for f in frames}
        if len(shapes) > 1:
            raise EpisodeError(
                f"{label}: camera {name!r} changes size on {info.roles[name]} ({sorted(shapes)}); "
                f"train with --image-size H W to resize every frame"
            )
        images[name] = np.stack(frames)
    sizes = {n: images[n].shape[1:3] for n in cameras}
    if len(set(sizes.values())) > 1:
        a, b = cameras[0], next(n for n in cameras if sizes[n] != sizes[cameras[0]])
        raise EpisodeError(
            f"{label}: camera {b!r} is {sizes[b][1]}x{sizes[b][0]}, camera {a!r} {sizes[a][1]}x{sizes[a][0]}; "
            f"train with --image-size H W to resize them to one size"
        )
    depth = {}
    for name in cameras:
        role = depth_role(name)
        if role not in info.depth_roles:
            continue
        # each row's depth is the one stamped nearest its colour frame (as policy_node pairs them), and that close
        colour = stamps[name][_nearest(stamps[name], grid)]
        at = _nearest(stamps[role], colour)
        offset = np.abs(stamps[role][at] - colour)
        if offset.max() > DEPTH_OFFSET * 1e9:
            k = int(offset.argmax())
            raise EpisodeError(
                f"{label}: depth of camera {name!r} on {info.roles[role]}: the depth nearest the colour frame at "
                f"{colour[k] / 1e9:.3f} s is {offset[k] / 1e6:.1f} ms from it (at most {DEPTH_OFFSET * 1e3:g} ms: "
                f"aligned depth carries its colour frame's stamp; a stalled or unsynchronised depth stream)"
            )
        frames = [streams[role][k][1] for k in at]
        shapes = {f.shape for f in frames}
        if shapes != {images[name].shape[1:3]}:
            raise EpisodeError(
                f"{label}: depth of camera {name!r} on {info.roles[role]} is {sorted(shapes)}, its colour frames "
                f"{images[name].shape[1:3]}: record depth aligned to colour (realsense-ros align_depth), or train "
                f"with --image-size H W to resize both"
            )
        depth[name] = np.stack(frames)
    recorded_sizes = {n: list(info.source_sizes[n]) for n in cameras if n in info.source_sizes}
    if meta.get("image_size") and any(s != list(meta["image_size"]) for s in recorded_sizes.values()):
        raise EpisodeError(f"{label}: images are {recorded_sizes}, the sidecar says {tuple(meta['image_size'])}")

    joint_msgs = [streams["joint_states"][k][1] for k in _nearest(stamps["joint_states"], grid)]
    fingers = np.stack([_fingers(label, info.roles["joint_states"], m) for m in joint_msgs])
    arms = np.stack([_arm(m) for m in joint_msgs])
    position, quat = _poses(streams["ee_pose"], _nearest(stamps["ee_pose"], grid))
    proprio = np.concatenate([spaces.pose_to_vector(position, quat), fingers], axis=1).astype(np.float32)
    if "actions" in info.roles:
        at = np.searchsorted(stamps["actions"], grid, side="right") - 1  # the command in force at each row
        if at[0] < 0:
            raise EpisodeError(f"{label}: no command on {info.roles['actions']} before {grid[0] / 1e9:.3f} s")
        actions = np.stack([_action_vector(label, info.roles["actions"], streams["actions"][k][1]) for k in at])
        actions_from = f"recorded on {info.roles['actions']}"
    elif "target_pose" in info.roles:
        at = np.searchsorted(stamps["target_pose"], grid, side="right") - 1  # the target in force at each row
        target_position, target_quat = _poses(streams["target_pose"], at)
        gripper = derived_actions(stamps, streams, grid, options.action_lead)[:, 6:]
        actions = np.concatenate([spaces.pose_to_vector(target_position, target_quat), gripper], axis=1)
        actions_from = (
            f"recorded target poses on {info.roles['target_pose']}; gripper closed where the finger width on "
            f"{info.roles['joint_states']} {options.action_lead:g} s ahead is below {GRIPPER_CLOSED_BELOW:g} of the "
            f"widest in the episode"
        )
    else:
        actions = derived_actions(stamps, streams, grid, options.action_lead)
        actions_from = (
            f"derived: the pose on {info.roles['ee_pose']} {options.action_lead:g} s ahead as the target; "
            f"gripper closed where the finger width on {info.roles['joint_states']} {options.action_lead:g} s "
            f"ahead is below {GRIPPER_CLOSED_BELOW:g} of the widest in the episode"
        )
    actions = actions.astype(np.float32)
    if not (np.isfinite(proprio).all() and np.isfinite(actions).all()):
        raise EpisodeError(
            f"{label}: non-finite robot state or action values on "
            f"{', '.join(info.roles[r] for r in ('ee_pose', 'joint_states', 'actions') if r in info.roles)}"
        )

    recorded_text = streams["instruction"][0][1] if streams.get("instruction") else ""
    instruction = recorded_text or meta.get("instruction") or options.instruction
    if not instruction:
        raise EpisodeError(
            f"{label}: no instruction (no instruction topic, none in the sidecar); give one with "
            f"--instruction TEXT, or map a std_msgs/String topic with --map instruction=TOPIC"
        )
    meta = {
        **meta,
        "dt": dt,
        "recorded_dt": recorded_dt,
        "start_stamp": grid[0] / 1e9,
        "roles": dict(info.roles),
        "actions_from": actions_from,
        "recorded_image_size": recorded_sizes,
        "warnings": warnings,
    }
    if cameras:
        meta["cameras"] = cameras
    return Episode(
        path,
        instruction,
        meta,
        (grid - grid[0]) / 1e9,
        images,
        proprio,
        actions,
        np.concatenate([arms, fingers], axis=1).astype(np.float32),
        counts,
        depth,
    )


def recorded_interval(stamps: np.ndarray, topic: str, path: Path) -> tuple[float, list[str]]:
    """(the median interval in s between the stamps (int64 ns) of `topic`, warnings). EpisodeError naming the topic
    where rows would be read wrong: stamps that do not increase, a pause, a stretch at another rate (half or double,
    or further). A rate that wobbles less, or jitter, is a warning: rows stay on their times, the nearest frame of
    each is a little older or newer (a few dropped frames are neither)."""
    if len(stamps) < 3:
        raise EpisodeError(f"{path}: {topic} has {len(stamps)} message(s): too few to tell its rate")
    gaps = np.diff(stamps).astype(np.float64)
    if (gaps <= 0).any():
        raise EpisodeError(
            f"{path}: {topic} has {int((gaps <= 0).sum())} message(s) stamped no later than the one before: "
            f"the stamps must increase"
        )
    median = float(np.median(gaps))
    pauses = np.flatnonzero(gaps > _pause_limit(median))
    if len(pauses):
        first = pauses[0]
        raise EpisodeError(
            f"{path}: {topic} pauses {len(pauses)} time(s), first for {gaps[first] / 1e9:.2f} s at "
            f"{stamps[first] / 1e9:.3f} s (its interval is {median / 1e6:.1f} ms): rows would bridge the pause; "
            f"a bag of several demonstrations is split with --split-gap SECONDS"
        )
    windows = [float(np.median(w)) for w in np.array_split(gaps, max(1, min(10, len(gaps) // 10)))]
    stretches = windows[:1]  # the rate of each stretch in recording order
    for w in windows[1:]:
        if abs(w - stretches[-1]) > RATE_TOLERANCE * stretches[-1]:
            stretches.append(w)
    rates = ", then ".join(f"{1e9 / w:.0f} Hz" for w in stretches)
    warnings = []
    if max(stretches + [median]) / min(stretches + [median]) >= RATE_CHANGE:
        raise EpisodeError(
            f"{path}: the rate on {topic} changes during the recording ({rates}): the rows' interval would fit only "
            f"part of it; record at one rate, or split the bag where it changes"
        )
    if len(stretches) > 1 or abs(stretches[0] - median) > RATE_TOLERANCE * median:
        warnings.append(
            f"the rate on {topic} wobbles ({rates}): rows every {median / 1e6:.1f} ms take the nearest frame"
        )
    off = float(np.mean(np.abs(gaps - median) > 0.5 * median))
    if off > IRREGULAR_FRACTION:
        warnings.append(
            f"{topic} is irregular: {off:.0%} of its intervals are more than half off the median "
            f"{median / 1e6:.1f} ms; rows take the nearest frame"
        )
    return median / 1e9, warnings


def _pause_limit(median: float) -> float:
    """ns: an interval longer than this, for a stream whose median interval is `median` ns, is a pause."""
    return max(GAP_LIMIT[0] * median, GAP_LIMIT[1] * 1e9)


def _refuse_pause(stamps: np.ndarray, grid: np.ndarray, topic: str, path) -> None:
    """EpisodeError naming `topic` where its stream (int64 ns stamps) pauses between the first and the last row."""
    if len(stamps) < 3:
        return
    gaps = np.diff(stamps).astype(np.float64)
    inside = (stamps[1:] > grid[0]) & (stamps[:-1] < grid[-1])
    pauses = np.flatnonzero((gaps > _pause_limit(float(np.median(gaps)))) & inside)
    if len(pauses):
        first = pauses[0]
        raise EpisodeError(
            f"{path}: {topic} pauses {len(pauses)} time(s) within the rows, first for {gaps[first] / 1e9:.2f} s at "
            f"{stamps[first] / 1e9:.3f} s: rows there would take a robot state up to {gaps[first] / 2e9:.2f} s old"
        )


def derived_actions(stamps: dict, streams: dict, grid: np.ndarray, lead: float) -> np.ndarray:
    """[T, 7] absolute targets from the measured trajectory: the pose `lead` s after each row (an impedance
    controller's pose trails its target), and the gripper closed (1) where the finger width `lead` s later is
    below GRIPPER_CLOSED_BELOW of the episode's widest (the command precedes the fingers' motion)."""
    ahead = grid + int(round(lead * 1e9))  # past the end: the last measurement (the arm at rest)
    position, quat = _poses(streams["ee_pose"], _nearest(stamps["ee_pose"], ahead))
    fingers = [finger_positions(v["names"], v["positions"]) for _, v in streams["joint_states"]]
    widths = np.array([np.nan if f is None else float(f.sum()) for f in fingers])
    closed = gripper_closed(widths[_nearest(stamps["joint_states"], ahead)], np.nanmax(widths))
    return np.concatenate([spaces.pose_to_vector(position, quat), closed[:, None]], axis=1)


def gripper_closed(width: np.ndarray, widest: float) -> np.ndarray:
    """1.0 where the finger width is below GRIPPER_CLOSED_BELOW of the episode's widest (the hand closed, on an
    object or not), else 0.0: the gripper label of a step without a commanded one."""
    return (np.asarray(width) < GRIPPER_CLOSED_BELOW * widest).astype(np.float64)


def _nearest(stamps: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Index of the stamp nearest each time in `at` (earlier on a tie)."""
    if len(stamps) == 1:
        return np.zeros(len(at), dtype=np.int64)
    right = np.clip(np.searchsorted(stamps, at), 1, len(stamps) - 1)
    left = right - 1
    return np.where(at - stamps[left] <= stamps[right] - at, left, right)


def _poses(stream: list, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.array([stream[k][1][0] for k in index]).reshape(-1, 3),
        np.array([stream[k][1][1] for k in index]).reshape(-1, 4),
    )


def _fingers(path: Path | str, topic: str, value: dict) -> np.ndarray:
    fingers = finger_positions(value["names"], value["positions"])
    if fingers is None and any(n.endswith(("finger_joint1", "finger_joint2")) for n in value["names"]):
        raise EpisodeError(f"{path}: a message on {topic} has finger positions that are not finite or lie past "
                           f"+-{FINGER_POSITION_LIMIT:g} ({value['positions']})")
    if fingers is None:
        raise EpisodeError(
            f"{path}: a message on {topic} lacks the finger joints (names ending in finger_joint1 / "
            f"finger_joint2; it has {value['names']}); map a JointState topic that has them with "
            f"--map joint_states=TOPIC"
        )
    return fingers


def _arm(value: dict) -> np.ndarray:
    order = arm_joint_order(value["names"])
    if not order or max(order) >= len(value["positions"]):
        return np.full(7, np.nan)
    return np.asarray(value["positions"], dtype=np.float64)[order]


def _action_vector(path: Path, topic: str, value: np.ndarray) -> np.ndarray:
    if value.shape != (len(spaces.ACTION_NAMES),):
        raise EpisodeError(
            f"{path}: a command on {topic} has {value.shape[0]} positions, expected {len(spaces.ACTION_NAMES)}"
        )
    return value
