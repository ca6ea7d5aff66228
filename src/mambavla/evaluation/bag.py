"""Any rosbag2 recording as replay input: topic roles found by type and name, messages decoded in order.

Roles are the checkpoint's camera names plus `joint_states`, `ee_pose`, `instruction`, `actions`.
A role is taken from `--map ROLE=TOPIC` when given, else found where unambiguous:
    camera NAME    sensor_msgs/Image or CompressedImage whose topic has NAME in it (raw preferred
                   over its image_transport `/compressed` twin)
    joint_states   the only sensor_msgs/JointState topic, or the one named *joint_states*
    ee_pose        the only geometry_msgs/PoseStamped topic, or the one with `ee` / `tcp` / `pose` in its name
    instruction    std_msgs/String named *instruction* / *task* / *prompt* (other String topics, such as
                   /robot_description, are not instructions)
    actions        trajectory_msgs/JointTrajectory whose joint_names are the policy's action names
Anything missing or unreadable raises `ReplayError` with a table of the bag's topics and types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from mambavla import spaces
from mambavla.data.images import image_to_rgb

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
ROLE_TYPES = {
    "joint_states": ("sensor_msgs/msg/JointState",),
    "ee_pose": ("geometry_msgs/msg/PoseStamped",),
    "instruction": ("std_msgs/msg/String",),
    "actions": ("trajectory_msgs/msg/JointTrajectory",),
}
STATE_ROLES = tuple(ROLE_TYPES)


class ReplayError(ValueError):
    """A bag or option that replay cannot use, with what is missing and what the bag has."""


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

    def table(self) -> str:
        width = max([len(t) for t in self.topics] + [5])
        rows = [f"  {'topic'.ljust(width)}  {'type':38s} messages"]
        for topic in sorted(self.topics):
            rows.append(f"  {topic.ljust(width)}  {self.topics[topic]:38s} {self.counts.get(topic, 0)}")
        return "\n".join(rows)


def _typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)


def parse_maps(items: Sequence[str]) -> dict[str, str]:
    maps = {}
    for item in items or ():
        role, sep, topic = item.partition("=")
        if not sep or not role or not topic:
            raise ReplayError(f"--map {item!r}: expected ROLE=TOPIC (e.g. front=/camera/color/image_raw)")
        maps[role.strip()] = topic.strip()
    return maps


def _open(path: Path):
    from rosbags.rosbag2 import Reader

    if not path.exists():
        raise ReplayError(f"{path}: no such bag")
    if not path.is_dir():
        raise ReplayError(f"{path}: not a rosbag2 directory")
    if not (path / "metadata.yaml").exists():
        raise ReplayError(f"{path}: no metadata.yaml: the recording was not closed (truncated bag?)")
    try:
        reader = Reader(path)
        reader.open()
    except Exception as err:  # rosbags raises several types for damaged files
        raise ReplayError(f"{path}: corrupt or unreadable bag ({type(err).__name__}: {err})") from err
    return reader


def inspect(path: str | Path, cameras: Sequence[str], maps: dict[str, str] | None = None,
            action_names: Sequence[str] = spaces.ACTION_NAMES) -> BagInfo:
    """The bag's topics and the topic of each role (ReplayError if a needed role has none)."""
    path = Path(path)
    reader = _open(path)
    try:
        topics = {c.topic: c.msgtype for c in reader.connections}
        counts = {c.topic: 0 for c in reader.connections}
        for c in reader.connections:
            counts[c.topic] += c.msgcount
        info = BagInfo(path, topics, counts, reader.duration / 1e9 if reader.message_count else 0.0)
        maps = dict(maps or {})
        known = list(cameras) + list(STATE_ROLES)
        for role, topic in maps.items():
            if role not in known:
                raise ReplayError(f"--map {role}={topic}: unknown role {role!r}; roles are {', '.join(known)} "
                                  f"(the checkpoint's cameras are {', '.join(cameras)})")
            if topic not in topics:
                raise ReplayError(f"--map {role}={topic}: the bag has no topic {topic}\n{info.table()}")
            allowed = IMAGE_TYPES if role in cameras else ROLE_TYPES[role]
            if topics[topic] not in allowed:
                raise ReplayError(f"--map {role}={topic}: {topic} is {topics[topic]}, a {role} topic must be "
                                  f"{' or '.join(allowed)}\n{info.table()}")
            info.roles[role] = topic
        _discover(info, reader, cameras, action_names)
    finally:
        reader.close()
    missing = [c for c in cameras if c not in info.roles]
    if missing:
        raise ReplayError(f"{path}: no topic for camera(s) {', '.join(missing)} (the checkpoint's cameras, in order: "
                          f"{', '.join(cameras)}); map one with --map CAMERA=TOPIC. The bag has:\n{info.table()}")
    if "joint_states" not in info.roles:
        raise ReplayError(f"{path}: no sensor_msgs/msg/JointState topic with the finger joints (the policy reads the "
                          f"finger positions); map one with --map joint_states=TOPIC. The bag has:\n{info.table()}")
    if "ee_pose" not in info.roles and "actions" not in info.roles:
        raise ReplayError(f"{path}: no end-effector pose (geometry_msgs/msg/PoseStamped) and no recorded actions: "
                          f"nothing to build the policy's input or to score against; map one with --map ee_pose=TOPIC. "
                          f"The bag has:\n{info.table()}")
    if "ee_pose" not in info.roles:
        info.notes.append("no end-effector pose topic: the recorded actions (commanded targets) stand in for the "
                          "pose, both as the policy's input and as the reference")
    return info


def _discover(info: BagInfo, reader, cameras: Sequence[str], action_names: Sequence[str]) -> None:
    taken = set(info.roles.values())
    images = [t for t, m in info.topics.items() if m in IMAGE_TYPES and t not in taken]
    for cam in cameras:
        if cam in info.roles:
            continue
        named = [t for t in images if cam in t.lower()]
        raw = [t for t in named if not (t.endswith("/compressed") and t[: -len("/compressed")] in named)]
        if len(raw) == 1:
            info.roles[cam] = raw[0]
            info.notes.append(f"camera {cam}: {raw[0]} (found by name)")
        elif len(raw) > 1:
            raise ReplayError(f"{info.path}: camera {cam!r} matches several topics ({', '.join(raw)}); choose one with "
                              f"--map {cam}=TOPIC. The bag has:\n{info.table()}")
    hints = {"joint_states": ("joint_states",), "ee_pose": ("ee", "tcp", "pose"), "instruction": ("instruction", "task", "prompt"),
             "actions": ("action",)}
    for role, types in ROLE_TYPES.items():
        if role in info.roles:
            continue
        candidates = [t for t, m in info.topics.items() if m in types and t not in taken]
        if role == "actions":
            candidates = [t for t in candidates if _joint_names(reader, t) == list(action_names)]
        named = [t for t in candidates if any(h in t.lower() for h in hints[role])]
        if role == "instruction":
            candidates = named  # a String topic is an instruction only by name
        pick = candidates if len(candidates) == 1 else named
        if len(pick) == 1:
            info.roles[role] = pick[0]
            info.notes.append(f"{role}: {pick[0]}")
        elif len(pick) > 1:
            raise ReplayError(f"{info.path}: {role} matches several topics ({', '.join(pick)}); choose one with "
                              f"--map {role}=TOPIC. The bag has:\n{info.table()}")


def _joint_names(reader, topic: str) -> list[str]:
    ts = _typestore()
    conns = [c for c in reader.connections if c.topic == topic]
    try:
        for conn, _, raw in reader.messages(connections=conns):
            return list(ts.deserialize_cdr(raw, conn.msgtype).joint_names)
    except Exception:  # an unreadable topic is simply not the actions topic
        return []
    return []


def _stamp(msg, log_ns: int) -> float:
    header = getattr(msg, "header", None)
    if header is None or (header.stamp.sec == 0 and header.stamp.nanosec == 0):
        return log_ns * 1e-9
    return header.stamp.sec + header.stamp.nanosec * 1e-9


def finger_positions(names: Sequence[str], positions: Sequence[float]) -> np.ndarray | None:
    """The two finger joints of a JointState, by name (any prefix: fr3_, panda_ ...), else None."""
    index = {}
    for i, name in enumerate(names):
        for k, suffix in enumerate(("finger_joint1", "finger_joint2")):
            if name.endswith(suffix):
                index[k] = i
    if len(index) != 2 or max(index.values()) >= len(positions):
        return None
    values = np.array([positions[index[0]], positions[index[1]]], dtype=np.float64)
    return values if np.all(np.isfinite(values)) else None


def read_messages(info: BagInfo, roles: Sequence[str], image_size: tuple[int, int] | None = None) -> Iterator[Message]:
    """Messages of `roles` in recording order, decoded; ReplayError for unreadable data."""
    ts = _typestore()
    by_topic = {}
    for role in roles:
        if role in info.roles:
            by_topic.setdefault(info.roles[role], []).append(role)
    reader = _open(info.path)
    try:
        conns = [c for c in reader.connections if c.topic in by_topic]
        try:
            for conn, log_ns, raw in reader.messages(connections=conns):
                try:
                    msg = ts.deserialize_cdr(raw, conn.msgtype)
                except Exception as err:
                    raise ReplayError(f"{info.path}: unreadable {conn.msgtype} message on {conn.topic} "
                                      f"({type(err).__name__}: {err})") from err
                for role in by_topic[conn.topic]:
                    value = _decode(info, role, conn.topic, msg, image_size)
                    if value is not None:
                        yield Message(role, log_ns * 1e-9, _stamp(msg, log_ns), value)
        except ReplayError:
            raise
        except Exception as err:  # damaged chunks surface while iterating
            raise ReplayError(f"{info.path}: corrupt or truncated bag ({type(err).__name__}: {err})") from err
    finally:
        reader.close()


def _decode(info: BagInfo, role: str, topic: str, msg, image_size):
    if role == "joint_states":
        return {"names": list(msg.name), "positions": np.asarray(msg.position, dtype=np.float64)}
    if role == "ee_pose":
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
    try:  # a camera
        return image_to_rgb(msg, image_size)
    except ValueError as err:
        raise ReplayError(f"{info.path}: camera topic {topic} has an image replay cannot decode: {err}") from err
