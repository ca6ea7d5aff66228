"""Any rosbag2 recording: topic roles found by type and name, messages decoded in recording order.

The one role finder and message reader behind training (`read_episode`, `mambavla train`, `dataset stats`)
and replay (`mambavla replay`). Roles are camera names (the policy's: front, wrist ...) plus
`joint_states`, `ee_pose`, `instruction` and `actions`. A role is taken from `--map ROLE=TOPIC` when
given, else found where unambiguous:

    camera NAME    sensor_msgs/Image or CompressedImage with NAME in its topic; depth and infrared streams
                   (`depth`, `infra`, `/ir/` in the name) are not colour cameras, and a raw topic is preferred
                   over its image_transport `/compressed` twin
    joint_states   a sensor_msgs/JointState topic whose messages carry both finger joints (any prefix: fr3_,
                   panda_); of several, the one that also carries the seven arm joints, else the one named
                   *joint_states*
    ee_pose        the only geometry_msgs/PoseStamped topic, or the one with `ee` / `tcp` / `pose` in its name
    instruction    std_msgs/String named *instruction* / *task* / *prompt* (other String topics, such as
                   /robot_description, are not instructions)
    actions        trajectory_msgs/JointTrajectory whose joint_names are the policy's action names
    target_pose    geometry_msgs/PoseStamped a controller was commanded to (e.g. an impedance controller's
                   equilibrium pose): only with --map, as it cannot be told from the measured pose by its type
    NAME_depth     read only when depth is asked for: camera NAME's depth aligned to its colour frames
                   (sensor_msgs/Image 16UC1 / mono16 mm or 32FC1 m, or compressedDepth), found as the image topic
                   with `depth` and NAME in its name, an `aligned` one preferred (realsense-ros:
                   .../aligned_depth_to_color/image_raw); so no camera is itself named *_depth

`cameras=None` asks the bag for its camera names: `/cameras/<name>/...` topics (our layout), else the
caller's defaults (the policy's), with any other camera role given with `--map`. Anything missing, ambiguous or
unreadable raises `BagError` naming the topic, with a table of the bag's topics and types.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from mambavla import spaces
from mambavla.data.images import depth_to_mm, image_to_rgb, source_size

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
ROLE_TYPES = {
    "joint_states": ("sensor_msgs/msg/JointState",),
    "ee_pose": ("geometry_msgs/msg/PoseStamped",),
    "instruction": ("std_msgs/msg/String",),
    "actions": ("trajectory_msgs/msg/JointTrajectory",),
    "target_pose": ("geometry_msgs/msg/PoseStamped",),  # a controller's commanded pose: only with --map
}
STATE_ROLES = tuple(ROLE_TYPES)
NOT_COLOUR = ("depth", "infra", "/ir/", "confidence")  # image streams of a camera that are not its colour frames
DEPTH_SUFFIX = "_depth"  # camera NAME's depth is the role NAME_depth
HINTS = {
    "joint_states": ("joint_states",),
    "ee_pose": ("ee", "tcp", "pose"),
    "instruction": ("instruction", "task", "prompt"),
    "actions": ("action",),
    "target_pose": (),
}


def depth_role(camera: str) -> str:
    return camera + DEPTH_SUFFIX


class BagError(ValueError):
    """A bag or option that cannot be used, with the topic at fault and what the bag has."""


@dataclass
class Message:
    role: str
    receipt: float  # s: when the recorder got it (the bag's log time)
    stamp: float  # s: header stamp, or the log time for messages without a header
    value: object  # camera: uint8 [H, W, 3]; ee_pose: (position, quat); joint_states: {name: position}; ...


@dataclass
class BagInfo:
    path: Path
    topics: dict[str, str]  # topic -> type
    counts: dict[str, int]
    duration: float  # s
    roles: dict[str, str] = field(default_factory=dict)  # role -> topic
    notes: list[str] = field(default_factory=list)  # what discovery decided, for the report
    custom: dict = field(default_factory=dict)  # the bag's custom_data (metadata.yaml)
    source_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # camera -> (H, W) as recorded
    depth_roles: list[str] = field(default_factory=list)  # NAME_depth roles asked for

    def table(self) -> str:
        width = max([len(t) for t in self.topics] + [5])
        rows = [f"  {'topic'.ljust(width)}  {'type':38s} messages"]
        for topic in sorted(self.topics):
            rows.append(f"  {topic.ljust(width)}  {self.topics[topic]:38s} {self.counts.get(topic, 0)}")
        return "\n".join(rows)

    @property
    def cameras(self) -> list[str]:
        return [r for r in self.roles if r not in STATE_ROLES and r not in self.depth_roles]


def typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)


def parse_maps(items: Sequence[str]) -> dict[str, str]:
    maps = {}
    for item in items or ():
        role, sep, topic = item.partition("=")
        if not sep or not role.strip() or not topic.strip():
            raise BagError(f"--map {item!r}: expected ROLE=TOPIC (e.g. front=/camera/color/image_raw)")
        maps[role.strip()] = topic.strip()
    return maps


def open_bag(path: Path):
    """An opened rosbags Reader, or BagError saying why the directory is not a usable bag."""
    from rosbags.rosbag2 import Reader

    if not path.exists():
        raise BagError(f"{path}: no such bag")
    if not path.is_dir():
        raise BagError(f"{path}: not a rosbag2 directory")
    if not (path / "metadata.yaml").exists():
        raise BagError(f"{path}: no metadata.yaml: the recording was not closed (truncated bag?)")
    try:
        reader = Reader(path)
        reader.open()
    except Exception as err:  # rosbags raises several types for damaged files
        raise BagError(f"{path}: corrupt or truncated bag ({type(err).__name__}: {err})") from err
    return reader


def _custom_data(reader) -> dict:
    """metadata.yaml's custom_data (rosbag2 >= version 6); rosbags keeps it on the storage's metadata."""
    metadata = getattr(getattr(reader, "storage", None), "metadata", None)
    return dict(getattr(metadata, "custom", None) or {})


def inspect(
    path: str | Path,
    cameras: Sequence[str] | None,
    maps: dict[str, str] | None = None,
    action_names: Sequence[str] = spaces.ACTION_NAMES,
    require_pose: bool = False,
    default_cameras: Sequence[str] = (),
    depth: bool = False,
) -> BagInfo:
    """The bag's topics and the topic of each role (BagError if a needed role has none, or several).
    `cameras=None`: the bag's own names (module docstring), else `default_cameras`. `depth`: every camera's
    depth role is needed too."""
    path = Path(path)
    reader = open_bag(path)
    try:
        topics = {c.topic: c.msgtype for c in reader.connections}
        counts = {c.topic: 0 for c in reader.connections}
        for c in reader.connections:
            counts[c.topic] += c.msgcount
        info = BagInfo(
            path, topics, counts, reader.duration / 1e9 if reader.message_count else 0.0, custom=_custom_data(reader)
        )
        maps = dict(maps or {})
        if cameras is None:
            cameras = _camera_names(topics, maps, default_cameras)
        info.depth_roles = [depth_role(c) for c in cameras] if depth else []
        known = list(cameras) + info.depth_roles + list(STATE_ROLES)
        for role, topic in maps.items():
            if role not in known:
                raise BagError(
                    f"--map {role}={topic}: unknown role {role!r}; roles are {', '.join(known)} "
                    f"(the policy's cameras are {', '.join(cameras) or 'none'})"
                )
            if topic not in topics:
                raise BagError(f"--map {role}={topic}: the bag {path} has no topic {topic}\n{info.table()}")
            allowed = IMAGE_TYPES if role in cameras or role in info.depth_roles else ROLE_TYPES[role]
            if topics[topic] not in allowed:
                raise BagError(
                    f"--map {role}={topic}: {topic} is {topics[topic]}, a {role} topic must be "
                    f"{' or '.join(allowed)}\n{info.table()}"
                )
            info.roles[role] = topic
        _discover(info, reader, cameras, action_names)
    finally:
        reader.close()
    missing = [c for c in cameras if c not in info.roles]
    if missing:
        raise BagError(
            f"{path}: no topic for camera(s) {', '.join(missing)} (the policy's cameras, in order: "
            f"{', '.join(cameras)}); map one with --map CAMERA=TOPIC (when training, --cameras NAME ... chooses "
            f"the policy's cameras). The bag has:\n{info.table()}"
        )
    missing = [r for r in info.depth_roles if r not in info.roles]
    if missing:
        raise BagError(
            f"{path}: no depth topic for {', '.join(missing)} (an image topic with 'depth' and the camera's name in "
            f"it); map one with --map {missing[0]}=TOPIC, e.g. a RealSense's "
            f".../aligned_depth_to_color/image_raw. The bag has:\n{info.table()}"
        )
    if "joint_states" not in info.roles:
        raise BagError(
            f"{path}: no sensor_msgs/msg/JointState topic with the finger joints (names ending in "
            f"finger_joint1 / finger_joint2: the policy reads the finger positions); map one with "
            f"--map joint_states=TOPIC. The bag has:\n{info.table()}"
        )
    if "ee_pose" not in info.roles and (require_pose or "actions" not in info.roles):
        alone = "" if require_pose else " and no recorded actions"
        raise BagError(
            f"{path}: no end-effector pose (geometry_msgs/msg/PoseStamped){alone}: the policy's input is "
            f"the measured pose; map one with --map ee_pose=TOPIC. The bag has:\n{info.table()}"
        )
    if "ee_pose" not in info.roles:
        info.notes.append(
            "no end-effector pose topic: the recorded actions (commanded targets) stand in for the "
            "pose, both as the policy's input and as the reference"
        )
    return info


def _camera_names(topics: dict[str, str], maps: dict[str, str], default: Sequence[str]) -> list[str]:
    """Camera names of a bag when the caller has none: our /cameras/<name>/ layout's, else `default`; and every
    other camera role given with --map."""
    ours = [
        t.split("/")[2]
        for t, m in sorted(topics.items())
        if m in IMAGE_TYPES and t.startswith("/cameras/") and t.count("/") >= 3 and not _not_colour(t)
    ]
    names = list(dict.fromkeys(ours)) or list(default)
    return names + [r for r in maps if r not in STATE_ROLES and r not in names and not r.endswith(DEPTH_SUFFIX)]


def _not_colour(topic: str) -> bool:
    return any(word in topic.lower() for word in NOT_COLOUR)


def _discover(info: BagInfo, reader, cameras: Sequence[str], action_names: Sequence[str]) -> None:
    taken = set(info.roles.values())
    images = [t for t, m in info.topics.items() if m in IMAGE_TYPES and t not in taken and not _not_colour(t)]
    for cam in cameras:
        if cam in info.roles:
            continue
        named = [t for t in images if cam.lower() in t.lower()]
        raw = [t for t in named if not (t.endswith("/compressed") and t[: -len("/compressed")] in named)]
        _assign(info, cam, raw, f"camera {cam}", " (found by name)")
    for role in info.depth_roles:
        if role in info.roles:
            continue
        cam = role[: -len(DEPTH_SUFFIX)].lower()
        # depth streams; image_transport's `compressed` (JPEG or PNG of 8 bits) and `theora` twins lose the depth
        named = [t for t, m in info.topics.items() if m in IMAGE_TYPES and t not in taken and "depth" in t.lower()
                 and cam in t.lower() and not t.endswith(("/compressed", "/theora"))]
        aligned = [t for t in named if "aligned" in t.lower()] or named
        raw = [t for t in aligned if not (t.endswith("/compressedDepth") and t[: -len("/compressedDepth")] in aligned)]
        _assign(info, role, raw, f"depth of camera {cam}", " (found by name)")
    for role, types in ROLE_TYPES.items():
        if role in info.roles or role == "target_pose":  # a target pose looks like the measured one: never guessed
            continue
        candidates = [t for t, m in info.topics.items() if m in types and t not in taken]
        named = [t for t in candidates if any(h in t.lower() for h in HINTS[role])]
        if role == "actions":
            candidates = [
                t for t in candidates if list(getattr(_first(info, reader, t), "joint_names", [])) == list(action_names)
            ]
            named = [t for t in named if t in candidates]
        elif role == "joint_states":
            names = {t: list(getattr(_first(info, reader, t), "name", [])) for t in candidates}
            candidates = [t for t in candidates if finger_positions(names[t], [0.0] * len(names[t])) is not None]
            whole = [t for t in candidates if len(arm_joint_order(names[t])) == 7]
            named = whole if len(candidates) > 1 and len(whole) >= 1 else [t for t in named if t in candidates]
        elif role == "instruction":
            candidates = named  # a String topic is an instruction only by name
        _assign(info, role, candidates if len(candidates) == 1 else named, role)


def _assign(info: BagInfo, role: str, topics: list[str], label: str, how: str = "") -> None:
    """The one topic found for `role` fills it (noted as `label`: topic`how`); several are refused; none leave it."""
    if len(topics) == 1:
        info.roles[role] = topics[0]
        info.notes.append(f"{label}: {topics[0]}{how}")
    elif len(topics) > 1:
        raise BagError(
            f"{info.path}: {label} matches several topics ({', '.join(topics)}); choose one with "
            f"--map {role}=TOPIC. The bag has:\n{info.table()}"
        )


def _first(info: BagInfo, reader, topic: str):
    """The first message on `topic`, deserialised (None if it has none or cannot be read, with a note saying why)."""
    ts = typestore()
    conns = [c for c in reader.connections if c.topic == topic]
    try:
        for conn, _, raw in reader.messages(connections=conns):
            return ts.deserialize_cdr(raw, conn.msgtype)
    except Exception as err:  # an unreadable topic fills no role; the note says which and why
        info.notes.append(f"{topic}: unreadable ({type(err).__name__}: {err}), not considered for a role")
    return None


def _stamp(msg, log_ns: int) -> float:
    header = getattr(msg, "header", None)
    if header is None or (header.stamp.sec == 0 and header.stamp.nanosec == 0):
        return log_ns * 1e-9
    return header.stamp.sec + header.stamp.nanosec * 1e-9


# No hand's finger joint lies further than this from zero (a Franka finger: 0..0.04 m; a revolute finger: under a
# turn's worth of radians); a value past it is a driver's garbage (a hand has answered -1.2e296), not a position.
FINGER_POSITION_LIMIT = 1.0


def finger_positions(names: Sequence[str], positions: Sequence[float]) -> np.ndarray | None:
    """The two finger joints of a JointState, by name (any prefix: fr3_, panda_ ...), else None (also where either
    is not finite or lies past +-FINGER_POSITION_LIMIT)."""
    index = {}
    for i, name in enumerate(names):
        for k, suffix in enumerate(("finger_joint1", "finger_joint2")):
            if name.endswith(suffix):
                index[k] = i
    if len(index) != 2 or max(index.values()) >= len(positions):
        return None
    values = np.array([positions[index[0]], positions[index[1]]], dtype=np.float64)
    return values if np.all(np.abs(values) <= FINGER_POSITION_LIMIT) else None  # (False for NaN)


def arm_joint_order(names: Sequence[str]) -> list[int]:
    """Indices of the arm joints 1..7 (names ending in `_joint1` ... `_joint7`, not fingers), where all seven exist."""
    index = {}
    for i, name in enumerate(names):
        for k in range(1, 8):
            if name.endswith(f"_joint{k}") and "finger" not in name:
                index[k] = i
    return [index[k] for k in range(1, 8)] if len(index) == 7 else []


def read_messages(info: BagInfo, roles: Sequence[str], image_size: tuple[int, int] | None = None) -> Iterator[Message]:
    """Messages of `roles` in recording order, decoded (camera frames resized to `image_size` as they are read);
    BagError naming the topic for data that cannot be used."""
    ts = typestore()
    by_topic: dict[str, list[str]] = {}
    for role in roles:
        if role in info.roles:
            by_topic.setdefault(info.roles[role], []).append(role)
    reader = open_bag(info.path)
    try:
        conns = [c for c in reader.connections if c.topic in by_topic]
        try:
            for conn, log_ns, raw in reader.messages(connections=conns):
                try:
                    msg = ts.deserialize_cdr(raw, conn.msgtype)
                except Exception as err:
                    raise BagError(
                        f"{info.path}: unreadable {conn.msgtype} message on {conn.topic} ({type(err).__name__}: {err})"
                    ) from err
                for role in by_topic[conn.topic]:
                    value = _decode(info, role, conn.topic, msg, image_size, log_ns)
                    if value is not None:
                        yield Message(role, log_ns * 1e-9, _stamp(msg, log_ns), value)
        except BagError:
            raise
        except Exception as err:  # damaged chunks surface while iterating
            raise BagError(f"{info.path}: corrupt or truncated bag ({type(err).__name__}: {err})") from err
    finally:
        reader.close()


def _decode(info: BagInfo, role: str, topic: str, msg, image_size, log_ns: int):
    if role == "joint_states":
        return {"names": list(msg.name), "positions": np.asarray(msg.position, dtype=np.float64)}
    if role in ("ee_pose", "target_pose"):
        p, q = msg.pose.position, msg.pose.orientation
        quat = np.array([q.x, q.y, q.z, q.w], dtype=np.float64)
        position = np.array([p.x, p.y, p.z], dtype=np.float64)
        norm = np.linalg.norm(quat)
        if not (np.isfinite(norm) and norm > 1e-6 and np.all(np.isfinite(position))):
            return None  # policy_node rejects such a pose too
        return position, quat / norm
    if role == "instruction":
        return " ".join(str(msg.data).split()) or None
    if role == "actions":
        if list(msg.joint_names) != list(spaces.ACTION_NAMES) or not msg.points:
            return None
        return np.asarray(msg.points[0].positions, dtype=np.float64)
    if role in info.depth_roles:
        try:
            return depth_to_mm(msg, image_size)
        except ValueError as err:
            raise BagError(
                f"{info.path}: {role}: a depth frame on {topic} at {_stamp(msg, log_ns):.3f} s cannot be used: {err}"
            ) from err
    try:  # a camera
        rgb = image_to_rgb(msg, image_size)
    except ValueError as err:
        raise BagError(
            f"{info.path}: camera {role!r}: a frame on {topic} at {_stamp(msg, log_ns):.3f} s cannot be decoded: {err}"
        ) from err
    if role not in info.source_sizes:
        info.source_sizes[role] = source_size(msg)
    return rgb


def custom_meta(info: BagInfo) -> dict:
    """Our episode metadata kept in the bag's custom_data ({} when there is none)."""
    text = info.custom.get("mambavla")
    try:
        return json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {}
