"""A LeRobotDataset v3 folder -> episode bags (`mambavla dataset import-lerobot`), with pyarrow and PyAV.

Any v3 dataset whose feature names say what each dimension is (see `docs/lerobot.md`): cameras from
`observation.images.*` (video or image features), the end-effector pose from position + orientation names
(x/y/z with roll/pitch/yaw, rx/ry/rz or qx/qy/qz/qw) or, failing that, from 7 arm joints through FR3 forward
kinematics, the fingers from finger joints or a gripper value, the action as a Cartesian or joint-space target,
absolute or per-step delta (integrated from the first measured state), with the gripper flipped when the
dataset uses 1 = open (CRISP's FR3 sets do).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from mambavla import spaces
from mambavla.data.bags import EpisodeWriter
from mambavla.data.lerobot.layout import (
    ACTION_KEY,
    DATA_PATH,
    EPISODES_DIR,
    IMAGE_PREFIX,
    INDEX_KEYS,
    MARKER_FORMAT,
    MARKER_PATH,
    STATE_KEY,
    TASKS_PATH,
    VIDEO_PATH,
    LeRobotError,
    load_info,
)

GRIPPER_CONVENTIONS: tuple[str, ...] = ("auto", "open-is-1", "closed-is-1")
ACTION_TYPES: tuple[str, ...] = ("auto", "absolute", "delta")


_POSITION_PREFIX = re.compile(r"^(?:ee|eef|tcp|cartesian|pose|pos|position)[_.]")
_JOINT = re.compile(r"^(?:[a-z0-9]+_)?joint[_.]?(?:pos(?:ition)?[_.])?(\d+)(?:[_.](?:pos|position))?$")
_QUAT = re.compile(r"^(?:ee_|eef_|tcp_)?(?:q|quat_|orientation_)([xyzw])$")
_COMPONENTS = {"pos": ("x", "y", "z"), "euler": ("roll", "pitch", "yaw"), "rotvec": ("rx", "ry", "rz")}
FINGER_OPEN_M = spaces.FRANKA_MAX_FINGER_WIDTH / 2  # one finger fully open


def _classify(name: str) -> tuple[str, object] | None:
    """A dimension name -> (quantity, component), or None for what import does not use (targets, sensors...)."""
    n = str(name).strip().lower()
    if n.startswith(("target", "desired", "cmd", "command")):
        return None
    if "finger" in n:
        return "finger", n
    if "gripper" in n:
        return ("gripper_width" if "width" in n else "gripper"), 0
    m = _JOINT.match(n)
    if m:
        return "joint", int(m.group(1))
    m = _QUAT.match(n)
    if m:
        return "quat", "xyzw".index(m.group(1))
    n = _POSITION_PREFIX.sub("", n)
    for kind, comps in _COMPONENTS.items():
        if n in comps:
            return kind, comps.index(n)
    return None


def _feature_names(features: dict, key: str) -> list[str]:
    feature = features[key]
    names = feature.get("names")
    if isinstance(names, dict):  # LeRobot also writes {"motors": [...]} or {"axes": [...]}
        names = next(iter(names.values()), None)
    shape = feature.get("shape") or [1]
    if not names or len(names) != int(np.prod(shape)):
        raise LeRobotError(f"feature {key!r} (shape {list(shape)}) has no per-dimension names in meta/info.json, so "
                           f"which dimension is what cannot be told: add them as features[{key!r}]['names'] "
                           f"(e.g. [\"x\", \"y\", \"z\", \"roll\", \"pitch\", \"yaw\", \"gripper\"]); "
                           f"see docs/lerobot.md")
    return [str(n) for n in names]


@dataclass
class Layout:
    """Where each quantity the bags need sits: quantity -> {component: (feature key, column)}."""

    parts: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def of(cls, features: dict, keys: Iterable[str]) -> "Layout":
        parts: dict[str, dict] = {}
        for key in keys:
            for col, name in enumerate(_feature_names(features, key)):
                found = _classify(name)
                if found is not None:
                    parts.setdefault(found[0], {}).setdefault(found[1], (key, col))  # the first feature wins
        return cls(parts)

    def complete(self, kind: str) -> bool:
        need = 4 if kind == "quat" else 3
        return kind in self.parts and set(range(need)) <= set(self.parts[kind])

    @property
    def position(self) -> list | None:
        return [self.parts["pos"][i] for i in range(3)] if self.complete("pos") else None

    @property
    def rotation(self) -> tuple[str, list] | None:
        for kind in ("quat", "rotvec", "euler"):
            if self.complete(kind):
                return kind, [self.parts[kind][i] for i in range(4 if kind == "quat" else 3)]
        return None

    @property
    def joints(self) -> list | None:
        numbers = sorted(self.parts.get("joint", {}))
        for first in (0, 1):
            if set(range(first, first + 7)) <= set(numbers):
                return [self.parts["joint"][i] for i in range(first, first + 7)]
        return None

    @property
    def fingers(self) -> list | None:
        found = list(self.parts.get("finger", {}).values())
        return found[:2] if found else None

    @property
    def gripper(self) -> tuple[str, tuple] | None:
        for kind in ("gripper_width", "gripper"):
            if kind in self.parts:
                return kind, self.parts[kind][0]
        return None

    def describe(self) -> str:
        return ", ".join(f"{k} ({len(v)})" for k, v in self.parts.items()) or "nothing recognised"


def _take(columns: dict[str, np.ndarray], where: list) -> np.ndarray:
    return np.stack([columns[key][:, col] for key, col in where], axis=-1)


def _rotation_to_quat(kind: str, values: np.ndarray, reference_relative: bool) -> np.ndarray:
    """[T, 3|4] orientations in the dataset's representation -> base-frame quaternions (x, y, z, w)."""
    if kind == "quat":
        return values / np.linalg.norm(values, axis=-1, keepdims=True)
    if kind == "euler":
        from scipy.spatial.transform import Rotation

        return Rotation.from_euler("xyz", values).as_quat()  # extrinsic x-y-z: roll, pitch, yaw
    if reference_relative:
        return spaces.vector_to_pose(np.concatenate([np.zeros_like(values), values], axis=-1))[1]
    return spaces.rotvec_to_quat(values)


def _gripper_to_closed(values: np.ndarray, convention: str, width: bool, signed: bool = False) -> np.ndarray:
    """Gripper values in the dataset's convention -> ours: 0 = open, 1 = closed. `signed`: the dataset's values
    span [-1, 1] (decided over all its episodes: one that never goes below 0 reads as the others do)."""
    if width:  # metres between the fingers
        return np.clip(1.0 - values / spaces.FRANKA_MAX_FINGER_WIDTH, 0.0, 1.0)
    if signed:
        values = (values + 1.0) / 2.0
    return np.clip(1.0 - values if convention == "open-is-1" else values, 0.0, 1.0)


def _signed(numeric: list[dict[str, np.ndarray]], where: tuple[str, int]) -> bool:
    """Whether a gripper value goes below 0 in any episode: [-1, 1] rather than [0, 1]."""
    key, col = where
    return any(np.nanmin(c[key][:, col], initial=np.inf) < -0.01 for c in numeric)


def _detect_gripper(first_values: list[float], signed: bool, what: str, flag: str) -> tuple[str, str]:
    """Episodes start with the gripper open (LeRobot's and CRISP's recorders open it at reset). Four in five
    agreeing decides, so one in five may start holding something; the reason gives the count, since with few
    episodes chosen (--episodes) one or two decide alone."""
    first = np.asarray(first_values, dtype=np.float64)
    first = first[np.isfinite(first)]
    n, k = len(first), int(np.sum(first > (0.0 if signed else 0.5)))
    high = k / n if n else 0.5  # none finite: cannot tell
    if high >= 0.8:
        return "open-is-1", f"{what} high in the first frame of {k} of {n} episodes (they start open)"
    if high <= 0.2:
        return "closed-is-1", f"{what} low in the first frame of {n - k} of {n} episodes (they start open)"
    raise LeRobotError(f"cannot tell the {what} convention: it is high at the start of {high:.0%} of the episodes; "
                       f"say which with {flag} open-is-1 or {flag} closed-is-1")


def parse_episodes(spec: Sequence[str] | None, total: int) -> list[int]:
    """["0", "3,5-9"] -> [0, 3, 5, 6, 7, 8, 9]; None -> every episode."""
    if not spec:
        return list(range(total))
    chosen: list[int] = []
    for part in ",".join(spec).split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise LeRobotError(f"--episodes {part!r}: expected indices and ranges such as 0,3,5-9")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo or hi >= total:
            raise LeRobotError(f"--episodes {part}: the dataset has episodes 0..{total - 1}")
        chosen.extend(i for i in range(lo, hi + 1) if i not in chosen)
    return chosen


def parse_map(items: Sequence[str]) -> dict[str, list[str]]:
    """["front=observation.images.primary", "state=observation.state.joint"] -> {role: [keys]}."""
    mapping: dict[str, list[str]] = {}
    for item in items:
        role, sep, key = item.partition("=")
        if not sep or not role or not key:
            raise LeRobotError(f"--map {item!r}: expected ROLE=FEATURE (e.g. front=observation.images.primary, "
                               f"state=observation.state, action=action)")
        mapping.setdefault(role, []).append(key)
    return mapping


@dataclass
class _Source:
    """What import reads from a dataset: cameras, state features, the action feature, and their layouts."""

    cameras: dict[str, str]  # camera name -> feature key
    state_keys: list[str]
    action_key: str
    state: Layout
    action: Layout
    ignored: list[str]


def _resolve(features: dict, mapping: dict[str, list[str]]) -> _Source:
    visual = {k for k, f in features.items() if f.get("dtype") in ("video", "image")
              and not (f.get("info") or {}).get("video.is_depth_map") and not (f.get("info") or {}).get("is_depth_map")}
    for role, keys in mapping.items():
        for key in keys:
            if key not in features:
                raise LeRobotError(f"--map {role}={key}: the dataset has no feature {key!r}; its features are "
                                   f"{', '.join(sorted(features))}")
            if role not in ("state", "action") and key not in visual:
                raise LeRobotError(f"--map {role}={key}: {key!r} is {features[key].get('dtype')}, a camera must be an "
                                   f"RGB video or image feature "
                                   f"({', '.join(sorted(visual)) or 'none in this dataset'})")
    if len(mapping.get("action", [])) > 1:
        raise LeRobotError("--map action=... given twice: name one action feature")
    camera_roles = {r: k[0] for r, k in mapping.items() if r not in ("state", "action")}
    cameras = camera_roles or {k.removeprefix(IMAGE_PREFIX): k for k in sorted(visual)}
    state_keys = mapping.get("state") or [k for k in features if (k == STATE_KEY or k.startswith(STATE_KEY + "."))
                                          and not k.endswith(".target") and features[k].get("dtype") not in
                                          ("video", "image", "string")]
    if not state_keys:
        raise LeRobotError(f"no robot state: the dataset has no {STATE_KEY}* feature; map one with --map state=FEATURE "
                           f"(features: {', '.join(sorted(features))})")
    action_key = (mapping.get("action") or [ACTION_KEY])[0]
    if action_key not in features:
        raise LeRobotError(f"no {ACTION_KEY!r} feature; map one with --map action=FEATURE "
                           f"(features: {', '.join(sorted(features))})")
    used = set(cameras.values()) | set(state_keys) | {action_key} | set(INDEX_KEYS)
    return _Source(cameras, state_keys, action_key, Layout.of(features, state_keys),
                   Layout.of(features, [action_key]), sorted(set(features) - used))


def _read_episodes_meta(root: Path) -> list[dict]:
    import pyarrow.parquet as pq

    files = sorted((root / EPISODES_DIR).glob("*/*.parquet"))
    if not files:
        raise LeRobotError(f"{root / EPISODES_DIR}: no episode metadata (chunk-*/file-*.parquet); the dataset is "
                           f"incomplete or older than v3: download it again or convert it with LeRobot")
    rows: list[dict] = []
    for path in files:
        names = [n for n in pq.read_schema(str(path)).names if not n.startswith("stats/")]
        missing = [n for n in ("episode_index", "length", "data/chunk_index", "data/file_index") if n not in names]
        if missing:
            raise LeRobotError(f"{path}: no column {', '.join(missing)}; a v3 dataset's episode metadata has them")
        rows.extend(pq.read_table(str(path), columns=names).to_pylist())
    rows.sort(key=lambda r: r["episode_index"])
    for i, row in enumerate(rows):
        if row["episode_index"] != i:
            raise LeRobotError(f"{root / EPISODES_DIR}: episode indices are not 0..{len(rows) - 1} "
                               f"(found {row['episode_index']} at position {i})")
    return rows


def _read_tasks(root: Path) -> dict[int, str]:
    import pyarrow.parquet as pq

    path = root / TASKS_PATH
    if not path.exists():
        raise LeRobotError(f"{path} is missing: the instructions (LeRobot's tasks) live there")
    table = pq.read_table(str(path))
    text = next((c for c in ("task", "__index_level_0__") if c in table.column_names), None)
    if text is None or "task_index" not in table.column_names:
        raise LeRobotError(f"{path}: expected columns task and task_index, found {table.column_names}")
    return dict(zip(table.column("task_index").to_pylist(), table.column(text).to_pylist()))


def _column_array(column, width: int) -> np.ndarray:
    """A parquet column of scalars or fixed-length lists -> float64 [N, width]."""
    import pyarrow as pa

    column = column.combine_chunks()
    if pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type) or pa.types.is_large_list(column.type):
        values = column.flatten().to_numpy(zero_copy_only=False)
    else:
        values = column.to_numpy(zero_copy_only=False)
    if values.size != len(column) * width:
        raise LeRobotError(f"a column holds {values.size} values for {len(column)} frames of width {width}")
    return values.astype(np.float64).reshape(len(column), width)


class _DataReader:
    """Frames of one episode from data/chunk-*/file-*.parquet, reading each file once while episodes go in order."""

    def __init__(self, root: Path, info: dict, keys: list[str]):
        self.root, self.info, self.keys = root, info, keys
        self._path: Path | None = None
        self._table = None

    def episode(self, meta: dict) -> tuple[dict[str, object], Path]:
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        template = self.info.get("data_path") or DATA_PATH
        path = self.root / template.format(chunk_index=meta["data/chunk_index"], file_index=meta["data/file_index"])
        if path != self._path:
            if not path.exists():
                raise LeRobotError(f"{path} is missing (episode {meta['episode_index']}'s frames): the dataset is "
                                   f"incomplete, download it again")
            schema = pq.read_schema(str(path))
            missing = [k for k in self.keys + ["episode_index", "frame_index"] if k not in schema.names]
            if missing:
                raise LeRobotError(f"{path}: no column {', '.join(missing)} although meta/info.json declares it")
            self._table = pq.read_table(str(path), columns=list(dict.fromkeys(self.keys + ["episode_index",
                                                                                          "frame_index"])))
            self._path = path
        rows = self._table.filter(pc.equal(self._table.column("episode_index"), meta["episode_index"]))
        order = np.argsort(rows.column("frame_index").to_numpy(), kind="stable")
        return {k: rows.column(k).take(order) for k in self.keys}, path


class _VideoReader:
    """Frames of one episode from a video file with many episodes: seek to the keyframe before it, decode forward."""

    def __init__(self, root: Path, info: dict):
        self.root, self.info = root, info
        self._open: dict[Path, object] = {}

    def frames(self, key: str, meta: dict, length: int, fps: int) -> np.ndarray:
        import av

        template = self.info.get("video_path") or VIDEO_PATH
        prefix = f"videos/{key}/"
        if prefix + "chunk_index" not in meta:
            raise LeRobotError(f"meta/episodes has no {prefix}chunk_index for episode {meta['episode_index']}")
        path = self.root / template.format(video_key=key, chunk_index=meta[prefix + "chunk_index"],
                                           file_index=meta[prefix + "file_index"])
        if path not in self._open:
            if not path.exists():
                raise LeRobotError(f"{path} is missing (camera {key} of episode {meta['episode_index']}): download "
                                   f"the dataset's videos/ too")
            self._open[path] = av.open(str(path))
        container = self._open[path]
        stream = container.streams.video[0]
        start = float(meta.get(prefix + "from_timestamp") or 0.0)
        tolerance = 0.25 / fps
        container.seek(max(0, int(start / stream.time_base) - 1), backward=True, any_frame=False, stream=stream)
        out: list[np.ndarray | None] = [None] * length
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            offset = (float(frame.pts * stream.time_base) - start) * fps
            k = int(round(offset))
            if k >= length or offset > length - 0.5:
                break
            if k >= 0 and abs(offset - k) <= tolerance * fps and out[k] is None:
                out[k] = frame.to_ndarray(format="rgb24")
        missing = sum(f is None for f in out)
        if missing:
            raise LeRobotError(f"{path}: episode {meta['episode_index']} has {length} frames in the data but only "
                               f"{length - missing} in the video from {start:.3f} s (mismatched lengths: the files do "
                               f"not belong together or the video is truncated)")
        return np.stack(out)

    def close(self) -> None:
        for container in self._open.values():
            container.close()
        self._open.clear()


def _decode_images(column, key: str, episode: int) -> np.ndarray:
    """An `image` feature (PNG/JPEG bytes in the parquet row) -> uint8 [T, H, W, 3] RGB."""
    import cv2

    frames = []
    for cell in column.to_pylist():
        data = cell.get("bytes") if isinstance(cell, dict) else cell
        img = cv2.imdecode(np.frombuffer(data or b"", np.uint8), cv2.IMREAD_COLOR) if data else None
        if img is None:
            raise LeRobotError(f"{key}: episode {episode} holds an image that does not decode (or only a file path)")
        frames.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    return np.stack(frames)


@dataclass
class Conventions:
    """How the dataset's numbers map onto ours; each choice with the reason it was made."""

    gripper: str = "closed-is-1"  # the action's gripper
    gripper_state: str = "closed-is-1"  # a normalised gripper value in the state
    gripper_signed: bool = False  # the action's gripper value spans [-1, 1]
    gripper_state_signed: bool = False  # the state's
    actions: str = "absolute"  # or "delta": per-step increments, integrated from the first measured state
    ours: bool = False  # exported by mambavla: rotation vectors relative to the gripper-down reference
    reasons: dict[str, str] = field(default_factory=dict)


def _state_pose(cols: dict, src: _Source, ours: bool) -> tuple[np.ndarray, np.ndarray]:
    st = src.state
    if st.position and st.rotation:
        kind, where = st.rotation
        return _take(cols, st.position), _rotation_to_quat(kind, _take(cols, where), ours)
    from mambavla.data.fr3_kinematics import forward_kinematics

    return forward_kinematics(_take(cols, st.joints))


def _episode_arrays(cols: dict[str, np.ndarray], src: _Source, conv: Conventions) -> dict[str, np.ndarray]:
    """One episode's dataset columns -> ee pose, joints, fingers and absolute actions in our conventions."""
    st, act = src.state, src.action
    position, quat = _state_pose(cols, src, conv.ours)
    T = len(position)
    joints = _take(cols, st.joints) if st.joints else np.full((T, 7), np.nan)

    if act.gripper:
        kind, (key, col) = act.gripper
        grip = _gripper_to_closed(cols[key][:, col], conv.gripper, kind == "gripper_width", conv.gripper_signed)
    else:
        grip = np.zeros(T)
    if act.position and act.rotation:
        kind, where = act.rotation
        target, rotation = _take(cols, act.position), _take(cols, where)
        if conv.actions == "absolute" and conv.ours and kind == "rotvec":
            pose = np.concatenate([target, rotation], axis=1)  # already our vector: keep it bit for bit
        elif conv.actions == "absolute":
            pose = spaces.pose_to_vector(target, _rotation_to_quat(kind, rotation, conv.ours))
        else:
            step = _rotation_to_quat(kind, rotation, False)
            p, q = position[0].copy(), quat[0].copy()
            targets_p, targets_q = np.empty((T, 3)), np.empty((T, 4))
            for t in range(T):  # each delta moves the previous target (CRISP's relative actions)
                p = p + target[t]
                q = spaces.quat_multiply(step[t], q)
                q /= np.linalg.norm(q)
                targets_p[t], targets_q[t] = p, q
            pose = spaces.pose_to_vector(targets_p, targets_q)
    else:
        from mambavla.data.fr3_kinematics import forward_kinematics

        commanded = _take(cols, act.joints)
        if conv.actions == "delta":
            commanded = joints[0] + np.cumsum(commanded, axis=0)
        pose = spaces.pose_to_vector(*forward_kinematics(commanded))

    if st.fingers:
        fingers = _take(cols, st.fingers)
        fingers = np.repeat(fingers, 2, axis=1) if fingers.shape[1] == 1 else fingers
    elif st.gripper:
        kind, (key, col) = st.gripper
        g = cols[key][:, col]
        opening = g / spaces.FRANKA_MAX_FINGER_WIDTH if kind == "gripper_width" else \
            1.0 - _gripper_to_closed(g, conv.gripper_state, False, conv.gripper_state_signed)
        fingers = np.repeat((opening * FINGER_OPEN_M)[:, None], 2, axis=1)
    else:  # no measured opening: the commanded one is the best guess
        fingers = np.repeat(((1.0 - grip) * FINGER_OPEN_M)[:, None], 2, axis=1)
    actions = np.concatenate([pose, grip[:, None]], axis=1)
    # arm joints may be NaN (a dataset without them); anything a training row is made of may not
    for what, values in (("end-effector position", position), ("end-effector orientation", quat),
                         ("finger opening", fingers), ("action", actions)):
        bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
        if len(bad):
            raise LeRobotError(f"non-finite {what} in {len(bad)} of {T} frames (first: frame {bad[0]})")
    return {"position": position, "quat": quat, "joints": joints, "fingers": fingers, "actions": actions}


def _marker(root: Path) -> dict | None:
    path = root / MARKER_PATH
    if not path.exists():
        return None
    marker = json.loads(path.read_text())
    return marker if marker.get("format") == MARKER_FORMAT else None


def _conventions(src: _Source, numeric: list[dict[str, np.ndarray]], marker: dict | None, gripper: str,
                 gripper_state: str, actions: str, features: dict) -> Conventions:
    conv = Conventions(ours=marker is not None)
    ours = "meta/mambavla.json (exported by mambavla)"
    act, st = src.action, src.state
    conv.gripper_signed = bool(act.gripper) and act.gripper[0] == "gripper" and _signed(numeric, act.gripper[1])
    conv.gripper_state_signed = bool(st.gripper) and st.gripper[0] == "gripper" and _signed(numeric, st.gripper[1])
    if gripper != "auto":
        conv.gripper, conv.reasons["gripper"] = gripper, "--gripper"
    elif marker:
        conv.gripper, conv.reasons["gripper"] = "closed-is-1", ours
    elif act.gripper:
        key, col = act.gripper[1]
        name = _feature_names(features, key)[col].lower()
        if "open" in name or "close" in name:
            conv.gripper = "open-is-1" if "open" in name else "closed-is-1"
            conv.reasons["gripper"] = f"the action dimension is named {name!r}"
        else:
            conv.gripper, conv.reasons["gripper"] = _detect_gripper([c[key][0, col] for c in numeric],
                                                                    conv.gripper_signed, "action gripper", "--gripper")
    if gripper_state != "auto":
        conv.gripper_state, conv.reasons["gripper_state"] = gripper_state, "--gripper-state"
    elif st.gripper and st.gripper[0] == "gripper" and not st.fingers:
        key, col = st.gripper[1]
        conv.gripper_state, conv.reasons["gripper_state"] = _detect_gripper(
            [c[key][0, col] for c in numeric], conv.gripper_state_signed, "state gripper", "--gripper-state")
    if actions != "auto":
        conv.actions, conv.reasons["actions"] = actions, "--actions"
    elif marker:
        conv.actions, conv.reasons["actions"] = "absolute", ours
    else:
        if act.position and act.rotation:
            commanded = np.concatenate([_take(c, act.position) for c in numeric])
            measured = np.concatenate([_state_pose(c, src, False)[0] for c in numeric])
            unit = "m"
        elif st.joints:
            commanded = np.concatenate([_take(c, act.joints) for c in numeric])
            measured = np.concatenate([_take(c, st.joints) for c in numeric])
            unit = "rad"
        else:
            raise LeRobotError("joint-space actions need the measured joints in the state to tell absolute from delta "
                               "and to integrate deltas; map a state feature with the 7 arm joints (--map state=...)")
        # nanmedian: a non-finite frame must not decide (its episode is refused with the frame named)
        to_state = float(np.nanmedian(np.linalg.norm(commanded - measured, axis=1)))
        to_zero = float(np.nanmedian(np.linalg.norm(commanded, axis=1)))
        conv.actions = "absolute" if to_state < to_zero else "delta"
        conv.reasons["actions"] = (f"median distance to the measured state {to_state:.4f} {unit}, "
                                   f"to zero {to_zero:.4f} {unit}")
    return conv


def import_lerobot(root: str | Path, out: str | Path, episodes: Sequence[str] | None = None,
                   mapping: Sequence[str] = (), gripper: str = "auto", gripper_state: str = "auto",
                   actions: str = "auto", image_format: str = "jpeg", image_size: tuple[int, int] | None = None,
                   progress: bool = True) -> dict:
    """Write each chosen episode of the LeRobotDataset v3 at `root` as an episode bag in `out`; returns a summary."""
    from tqdm import tqdm

    for value, choices, flag in ((gripper, GRIPPER_CONVENTIONS, "--gripper"),
                                 (gripper_state, GRIPPER_CONVENTIONS, "--gripper-state"),
                                 (actions, ACTION_TYPES, "--actions")):
        if value not in choices:
            raise LeRobotError(f"{flag} {value!r}: choose one of {', '.join(choices)}")
    root, out = Path(root), Path(out)
    info = load_info(root)
    features, fps = info["features"], int(info["fps"])
    src = _resolve(features, parse_map(mapping))
    st, act = src.state, src.action
    if not ((st.position and st.rotation) or st.joints):
        raise LeRobotError(f"the state ({', '.join(src.state_keys)}) gives neither an end-effector pose (x, y, z and "
                           f"roll/pitch/yaw, rx/ry/rz or qx/qy/qz/qw) nor 7 arm joints; found: {st.describe()}. "
                           f"Name the dimensions in meta/info.json or map another feature with --map state=FEATURE")
    if not ((act.position and act.rotation) or act.joints):
        raise LeRobotError(f"the action ({src.action_key}) is neither a Cartesian target (x, y, z + rotation) nor 7 "
                           f"joint targets; found: {act.describe()}. Name its dimensions in meta/info.json")
    metas = _read_episodes_meta(root)
    tasks = _read_tasks(root)
    chosen = parse_episodes(episodes, len(metas))
    marker = _marker(root)
    marker_episodes = {e["episode_index"]: e for e in (marker or {}).get("episodes", [])}
    widths = {k: int(np.prod(features[k].get("shape") or [1])) for k in src.state_keys + [src.action_key]}

    data = _DataReader(root, info, list(widths) + ["task_index"])
    numeric: list[dict[str, np.ndarray]] = []
    task_of: list[int] = []
    for index in tqdm(chosen, desc="read LeRobot data", unit="episode", disable=not progress, leave=False):
        meta = metas[index]
        columns, path = data.episode(meta)
        length = int(meta["length"])
        rows = len(columns["task_index"])
        if rows != length:
            raise LeRobotError(f"{path}: episode {index} has {rows} frames but meta/episodes says length {length} "
                               f"(mismatched lengths: the dataset is incomplete or was edited by hand)")
        if rows == 0:
            raise LeRobotError(f"{path}: episode {index} has no frames")
        numeric.append({k: _column_array(columns[k], w) for k, w in widths.items()})
        task_of.append(int(columns["task_index"][0].as_py()))
    conv = _conventions(src, numeric, marker, gripper, gripper_state, actions, features)

    names = {i: f"{root.name}_episode_{i:06d}" for i in chosen}
    clashes = [n for n in names.values() if (out / n).exists()]
    if clashes:
        raise LeRobotError(f"{out / clashes[0]} exists: import into an empty --out folder")
    out.mkdir(parents=True, exist_ok=True)
    image_keys = [k for k in src.cameras.values() if features[k]["dtype"] == "image"]
    images = _DataReader(root, info, image_keys) if image_keys else None
    videos = _VideoReader(root, info)
    written, frames = [], 0
    try:
        for n, index in enumerate(tqdm(chosen, desc="import LeRobot", unit="episode", disable=not progress)):
            meta = metas[index]
            try:
                arrays = _episode_arrays(numeric[n], src, conv)
            except LeRobotError as err:
                raise LeRobotError(f"episode {index}: {err}") from None
            length = len(arrays["actions"])
            image_columns = images.episode(meta)[0] if images else {}
            camera_frames = {}
            for name, key in src.cameras.items():
                if features[key]["dtype"] == "image":
                    camera_frames[name] = _decode_images(image_columns[key], key, index)
                else:
                    camera_frames[name] = videos.frames(key, meta, length, fps)
            if image_size is not None:
                from mambavla.data.images import resize_rgb

                camera_frames = {c: np.stack([resize_rgb(f, image_size) for f in v]) for c, v in camera_frames.items()}
            instruction = tasks.get(task_of[n])
            if not instruction:
                raise LeRobotError(f"episode {index}: task_index {task_of[n]} is not in {TASKS_PATH}")
            own = marker_episodes.get(index, {})
            size = next(iter(camera_frames.values())).shape[1:3] if camera_frames else (0, 0)
            bag_meta = {"task": own.get("task") or instruction, "instruction": instruction, "seed": own.get("seed"),
                        "success": own.get("success"), "source": f"lerobot:{root.name}:{index}"}
            path = out / names[index]
            try:
                with EpisodeWriter(path, tuple(camera_frames), size, 1.0 / fps, bag_meta,
                                   image_format=image_format) as w:
                    w.write_instruction(0.0, instruction)
                    for t in range(length):
                        w.write_frame(t / fps, {c: f[t] for c, f in camera_frames.items()}, arrays["joints"][t],
                                      arrays["fingers"][t], arrays["position"][t], arrays["quat"][t],
                                      arrays["actions"][t])
            except BaseException:  # a Ctrl-C or an error mid-episode: abort() closed a bag of its first frames
                shutil.rmtree(path, ignore_errors=True)
                raise
            written.append(str(path))
            frames += length
    finally:
        videos.close()
    state_from = "end-effector pose" if st.position and st.rotation else "FR3 forward kinematics of the 7 joints"
    action_kind = "Cartesian" if act.position and act.rotation else "joint-space (FR3 forward kinematics)"
    return {"out": str(out), "episodes": len(written), "frames": frames, "fps": fps, "dt": 1.0 / fps,
            "cameras": src.cameras, "state": f"{', '.join(src.state_keys)}: {state_from}",
            "action": f"{src.action_key}: {action_kind}, {conv.actions}", "gripper": conv.gripper,
            "conventions": conv.reasons, "ignored_features": src.ignored, "bags": written}
