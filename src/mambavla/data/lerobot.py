"""LeRobotDataset v3 <-> episode bags, offline, with pyarrow (parquet) and PyAV (mp4).

    export_lerobot(["demos/"], "demos_lerobot/")            episode bags -> a LeRobotDataset v3 folder
    import_lerobot("crisp_pick/", "bags/", gripper="auto")  a LeRobotDataset v3 folder -> episode bags

The layout is LeRobot's v3.0 (`codebase_version` "v3.0"):

    meta/info.json       fps, features (dtype, shape, names), totals, path templates
    meta/stats.json      per feature min/max/mean/std/count/q01..q99 (images per channel, in [0, 1])
    meta/tasks.parquet   task (the instruction text, the index) -> task_index
    meta/episodes/chunk-000/file-000.parquet
                         one row per episode: length, tasks, data/{chunk,file}_index,
                         dataset_{from,to}_index, videos/<key>/{chunk_index,file_index,from_timestamp,to_timestamp},
                         stats/<key>/<stat>
    data/chunk-XXX/file-YYY.parquet              frames of many episodes, one row group per episode
    videos/<key>/chunk-XXX/file-YYY.mp4          frames of many episodes back to back, per camera

Export writes our layout verbatim, so nothing is lost on the way back: `observation.state` is the 8-D
proprio (`spaces.PROPRIO_NAMES`, rotation vector relative to the gripper-down reference), `observation.state.joint`
the 7 arm and 2 finger joints, `action` the 7-D absolute target (`spaces.ACTION_NAMES`, gripper 1 = closed),
`observation.images.<camera>` one video per camera, `task` the instruction. `meta/mambavla.json` says so
(LeRobot ignores files it does not know) and keeps each episode's task name, seed and success.

Import reads any v3 dataset whose feature names say what each dimension is (see `docs/lerobot.md`):
cameras from `observation.images.*` (video or image features), the end-effector pose from position +
orientation names (x/y/z with roll/pitch/yaw, rx/ry/rz or qx/qy/qz/qw) or, failing that, from 7 arm joints
through FR3 forward kinematics, the fingers from finger joints or a gripper value, the action as a
Cartesian or joint-space target, absolute or per-step delta (integrated from the first measured state),
with the gripper flipped when the dataset uses 1 = open (CRISP's FR3 sets do).
"""

from __future__ import annotations

import fractions
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from mambavla import spaces
from mambavla.data.bags import ARM_JOINTS, FINGER_JOINTS, EpisodeWriter, read_episode

CODEBASE_VERSION = "v3.0"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
MARKER_PATH = "meta/mambavla.json"
MARKER_FORMAT = "mambavla-lerobot/1"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
EPISODES_PATH = EPISODES_DIR + "/" + CHUNK_FILE + ".parquet"
CHUNKS_SIZE = 1000  # files per chunk folder, as LeRobot
DATA_FILE_MB = 100
VIDEO_FILE_MB = 200
IMAGE_PREFIX = "observation.images."
STATE_KEY = "observation.state"
JOINT_STATE_KEY = "observation.state.joint"
ACTION_KEY = "action"
INDEX_KEYS: tuple[str, ...] = ("timestamp", "frame_index", "episode_index", "index", "task_index")
QUANTILES: tuple[float, ...] = (0.01, 0.10, 0.50, 0.90, 0.99)
IMAGE_STATS_FRAMES = 100  # frames sampled per episode and camera for the image statistics
IMAGE_STATS_PIXELS = 100 * 100  # about this many pixels of each sampled frame (a strided grid)

# name -> (PyAV encoder, options). AV1 through SVT-AV1 with LeRobot's defaults (crf 30, keyframe every 2 frames,
# preset 12); h264 and mpeg4 where a reader lacks an AV1 decoder.
CODECS: dict[str, tuple[str, dict[str, str]]] = {
    "av1": ("libsvtav1", {"g": "2", "crf": "30", "preset": "12"}),
    "h264": ("libx264", {"g": "2", "crf": "18", "preset": "veryfast"}),
    "mpeg4": ("mpeg4", {"g": "2", "qscale": "2"}),
}
GRIPPER_CONVENTIONS: tuple[str, ...] = ("auto", "open-is-1", "closed-is-1")
ACTION_TYPES: tuple[str, ...] = ("auto", "absolute", "delta")


class LeRobotError(ValueError):
    """A LeRobot dataset (or a request about one) that cannot be used, with the reason and the fix."""


def _plain(value):
    """numpy values -> JSON values; NaN (arm joints a dataset never had) -> null, which strict JSON readers accept."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_plain(data), indent=2, allow_nan=False) + "\n")


def _chunk_file(index: int) -> dict[str, int]:
    return {"chunk_index": index // CHUNKS_SIZE, "file_index": index % CHUNKS_SIZE}


def feature_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """[N, D] values -> LeRobot's per-dimension statistics."""
    x = np.asarray(values, dtype=np.float64)
    with warnings.catch_warnings():  # an all-NaN column (arm joints never recorded) has NaN statistics
        warnings.simplefilter("ignore", RuntimeWarning)
        stats = {"min": np.nanmin(x, 0), "max": np.nanmax(x, 0), "mean": np.nanmean(x, 0), "std": np.nanstd(x, 0),
                 "count": np.array([len(x)])}
        for q, v in zip(QUANTILES, np.nanquantile(x, QUANTILES, axis=0)):
            stats[f"q{round(q * 100):02d}"] = v
    return stats


def _image_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """uint8 [T, H, W, 3] -> per-channel statistics in [0, 1], shaped [3, 1, 1] as LeRobot stores them."""
    step = max(1, len(frames) // IMAGE_STATS_FRAMES)
    stride = max(1, int(np.sqrt(frames.shape[1] * frames.shape[2] / IMAGE_STATS_PIXELS)))
    pixels = frames[::step, ::stride, ::stride].reshape(-1, 3).astype(np.float64) / 255.0
    stats = feature_stats(pixels)
    shaped = {k: (v if k == "count" else v.reshape(3, 1, 1)) for k, v in stats.items()}
    return shaped | {"count": np.array([len(frames)])}  # frames, as LeRobot counts them


def _aggregate_image_stats(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-episode image statistics -> dataset statistics: pooled mean and variance, weighted quantiles."""
    counts = np.array([p["count"][0] for p in parts], dtype=np.float64)
    w = counts[:, None, None, None] / counts.sum()
    mean = sum(wi * p["mean"] for wi, p in zip(w, parts))
    var = sum(wi * (p["std"] ** 2 + (p["mean"] - mean) ** 2) for wi, p in zip(w, parts))
    out = {"min": np.min([p["min"] for p in parts], axis=0), "max": np.max([p["max"] for p in parts], axis=0),
           "mean": mean, "std": np.sqrt(var), "count": np.array([int(counts.sum())])}
    for key in parts[0]:
        if key.startswith("q"):
            out[key] = sum(wi * p[key] for wi, p in zip(w, parts))
    return out



class _VideoFiles:
    """One camera's mp4 files: episodes appended back to back, a new file for the next episode once the bytes
    written pass `limit_mb` (an encoder's lookahead, about a second for SVT-AV1, is not counted until written)."""

    def __init__(self, root: Path, key: str, fps: int, size: tuple[int, int], codec: str, crf: int | None,
                 limit_mb: float):
        self.root, self.key, self.fps, self.size, self.limit = root, key, fps, size, limit_mb * 2**20
        self.encoder, options = CODECS[codec]
        self.options = dict(options)
        if crf is not None:
            if "crf" not in self.options:
                with_crf = [c for c, (_, o) in CODECS.items() if "crf" in o]
                raise LeRobotError(f"--crf does not apply to {codec}; it applies to {', '.join(with_crf)}")
            self.options["crf"] = str(int(crf))
        self.file_index = -1
        self.container = self.stream = None
        self.frames = self.bytes = 0

    def _open(self) -> None:
        import av

        self.close()
        self.file_index += 1
        self.path = self.root / VIDEO_PATH.format(video_key=self.key, **_chunk_file(self.file_index))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(self.path), "w")
        self.stream = self.container.add_stream(self.encoder, self.fps, options=self.options)
        self.stream.height, self.stream.width = self.size
        self.stream.pix_fmt = "yuv420p"
        self.stream.time_base = fractions.Fraction(1, self.fps)
        self.frames = self.bytes = 0

    def _mux(self, packets) -> None:
        for packet in packets:
            self.bytes += packet.size
            self.container.mux(packet)

    def append(self, frames: np.ndarray) -> dict:
        """Encode one episode's frames (uint8 [T, H, W, 3]); returns its episode-metadata columns."""
        import av

        if self.container is None or self.bytes >= self.limit:
            self._open()
        start = self.frames
        for frame in frames:
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            video_frame.pts = self.frames  # time base 1/fps: frame k of the file sits at k/fps s
            self._mux(self.stream.encode(video_frame))
            self.frames += 1
        prefix = f"videos/{self.key}/"
        cf = _chunk_file(self.file_index)
        return {prefix + "chunk_index": cf["chunk_index"], prefix + "file_index": cf["file_index"],
                prefix + "from_timestamp": start / self.fps, prefix + "to_timestamp": self.frames / self.fps}

    def close(self) -> None:
        if self.container is not None:
            self._mux(self.stream.encode())
            self.container.close()
            self.container = None


class _DataFiles:
    """Frame tables in data/chunk-*/file-*.parquet, one row group per episode, a new file past `limit_mb`."""

    def __init__(self, root: Path, limit_mb: float):
        self.root, self.limit = root, limit_mb * 2**20
        self.file_index, self.writer, self.bytes = -1, None, 0

    def append(self, table) -> dict:
        import pyarrow.parquet as pq

        if self.writer is None or self.bytes >= self.limit:
            self.close()
            self.file_index += 1
            path = self.root / DATA_PATH.format(**_chunk_file(self.file_index))
            path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(str(path), table.schema, compression="snappy")
            self.bytes = 0
        self.writer.write_table(table)
        self.bytes += table.nbytes
        cf = _chunk_file(self.file_index)
        return {"data/chunk_index": cf["chunk_index"], "data/file_index": cf["file_index"]}

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _frame_table(ep, episode_index: int, first_index: int, task_index: int, fps: int):
    import pyarrow as pa

    n = len(ep)
    frame_index = np.arange(n, dtype=np.int64)

    def vectors(x: np.ndarray):
        x = np.ascontiguousarray(x, dtype=np.float32)
        return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])

    return pa.table({
        STATE_KEY: vectors(ep.proprio),
        JOINT_STATE_KEY: vectors(ep.joint_positions),
        ACTION_KEY: vectors(ep.actions),
        "timestamp": pa.array((frame_index / fps).astype(np.float32)),
        "frame_index": pa.array(frame_index),
        "episode_index": pa.array(np.full(n, episode_index, dtype=np.int64)),
        "index": pa.array(first_index + frame_index),
        "task_index": pa.array(np.full(n, task_index, dtype=np.int64)),
    })


def _fps(dt: float, path: Path) -> int:
    fps = round(1.0 / dt)
    if fps < 1 or abs(fps * dt - 1.0) > 1e-3:
        raise LeRobotError(f"{path}: dt {dt} s is not a whole number of frames per second; LeRobotDataset stores an "
                           f"integer fps (record at a rate such as 10, 20 or 30 Hz)")
    return fps


def _write_tasks(root: Path, tasks: dict[str, int]) -> None:
    """meta/tasks.parquet as pandas writes a frame indexed by `task` (LeRobot reads it with pandas)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = sorted(tasks, key=tasks.get)
    pandas_meta = {
        "index_columns": ["task"], "column_indexes": [],
        "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
                     "metadata": None},
                    {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object",
                     "metadata": None}],
        "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.3",
    }
    table = pa.table({"task_index": pa.array([tasks[t] for t in names], pa.int64()),
                      "task": pa.array(names, pa.string())})
    table = table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})
    path = root / TASKS_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, str(path))


def _flat_stats(stats: dict[str, dict[str, np.ndarray]]) -> dict[str, list]:
    return {f"stats/{key}/{name}": np.asarray(v).tolist() for key, s in stats.items() for name, v in s.items()}


def export_lerobot(sources: Sequence[str | Path], out: str | Path, codec: str = "av1", crf: int | None = None,
                   video_file_mb: float = VIDEO_FILE_MB, data_file_mb: float = DATA_FILE_MB,
                   progress: bool = True) -> dict:
    """Write the episode bags found under `sources` as one LeRobotDataset v3 in `out`; returns a summary."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    from mambavla.data.dataset import find_episodes

    if codec not in CODECS:
        raise LeRobotError(f"codec {codec!r}: choose one of {', '.join(CODECS)}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise LeRobotError(f"{out} exists and is not empty: choose a new --out folder or remove this one")
    paths = [p for s in sources for p in find_episodes(s)]
    if not paths:
        raise LeRobotError(f"no episode bags in {', '.join(map(str, sources))}")
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its configuration banner per file otherwise
    out.mkdir(parents=True, exist_ok=True)

    cameras: tuple[str, ...] | None = None
    size = fps = dt = None
    videos: dict[str, _VideoFiles] = {}
    data = _DataFiles(out, data_file_mb)
    tasks: dict[str, int] = {}
    rows, marker_episodes, numeric, image_parts = [], [], {STATE_KEY: [], JOINT_STATE_KEY: [], ACTION_KEY: []}, {}
    total = 0
    try:
        for episode_index, path in enumerate(tqdm(paths, desc="export LeRobot", unit="episode", disable=not progress)):
            ep = read_episode(path)
            ep_dt = float(ep.meta.get("dt") or np.median(np.diff(ep.times)))
            if cameras is None:
                cameras, size, dt, fps = tuple(ep.images), tuple(ep.image_size), ep_dt, _fps(ep_dt, path)
                videos = {c: _VideoFiles(out, IMAGE_PREFIX + c, fps, size, codec, crf, video_file_mb) for c in cameras}
            elif tuple(ep.images) != cameras or (cameras and tuple(ep.image_size) != size) or abs(ep_dt - dt) > 1e-6:
                raise LeRobotError(f"{path}: cameras {list(ep.images)} at {ep.image_size if ep.images else '-'}, "
                                   f"dt {ep_dt} s; the first episode had {list(cameras)} at {size}, dt {dt} s. "
                                   f"One LeRobot dataset holds one layout: export these episodes separately")
            task_index = tasks.setdefault(ep.instruction, len(tasks))
            table = _frame_table(ep, episode_index, total, task_index, fps)
            row = {"episode_index": episode_index, "tasks": [ep.instruction], "length": len(ep),
                   **data.append(table), "dataset_from_index": total, "dataset_to_index": total + len(ep)}
            ep_stats = {STATE_KEY: feature_stats(ep.proprio), JOINT_STATE_KEY: feature_stats(ep.joint_positions),
                        ACTION_KEY: feature_stats(ep.actions)}
            for name in cameras:
                row.update(videos[name].append(ep.images[name]))
                ep_stats[IMAGE_PREFIX + name] = _image_stats(ep.images[name])
                image_parts.setdefault(IMAGE_PREFIX + name, []).append(ep_stats[IMAGE_PREFIX + name])
            for key in INDEX_KEYS:
                ep_stats[key] = feature_stats(table.column(key).to_numpy()[:, None])
            row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0, **_flat_stats(ep_stats)})
            rows.append(row)
            numeric[STATE_KEY].append(ep.proprio)
            numeric[JOINT_STATE_KEY].append(ep.joint_positions)
            numeric[ACTION_KEY].append(ep.actions)
            marker_episodes.append({"episode_index": episode_index, "task": ep.meta.get("task"),
                                    "seed": ep.meta.get("seed"), "success": ep.meta.get("success"),
                                    "source": path.name})
            total += len(ep)
    finally:
        data.close()
        for video in videos.values():
            video.close()

    episodes_path = out / EPISODES_PATH.format(chunk_index=0, file_index=0)
    episodes_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), str(episodes_path))
    _write_tasks(out, tasks)

    stats = {key: feature_stats(np.concatenate(parts)) for key, parts in numeric.items()}
    stats |= {key: _aggregate_image_stats(parts) for key, parts in image_parts.items()}
    index_columns = pq.read_table(str(out / "data"), columns=list(INDEX_KEYS))
    stats |= {key: feature_stats(index_columns.column(key).to_numpy()[:, None]) for key in INDEX_KEYS}
    _write_json(out / STATS_PATH, stats)

    vector = {"dtype": "float32"}
    features = {
        **{IMAGE_PREFIX + c: {"dtype": "video", "shape": [*size, 3], "names": ["height", "width", "channels"],
                              "info": _video_info(videos[c], fps, size)} for c in cameras},
        STATE_KEY: {**vector, "shape": [len(spaces.PROPRIO_NAMES)], "names": list(spaces.PROPRIO_NAMES)},
        JOINT_STATE_KEY: {**vector, "shape": [9], "names": [*ARM_JOINTS, *FINGER_JOINTS]},
        ACTION_KEY: {**vector, "shape": [len(spaces.ACTION_NAMES)], "names": list(spaces.ACTION_NAMES)},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        **{k: {"dtype": "int64", "shape": [1], "names": None} for k in INDEX_KEYS[1:]},
    }
    info = {
        "codebase_version": CODEBASE_VERSION, "robot_type": "fr3", "total_episodes": len(rows), "total_frames": total,
        "total_tasks": len(tasks), "chunks_size": CHUNKS_SIZE, "data_files_size_in_mb": data_file_mb,
        "video_files_size_in_mb": video_file_mb, "fps": fps, "splits": {"train": f"0:{len(rows)}"},
        "data_path": DATA_PATH, "video_path": VIDEO_PATH if cameras else None, "features": features,
    }
    _write_json(out / INFO_PATH, info)
    _write_json(out / MARKER_PATH, {
        "format": MARKER_FORMAT, "rotation": "rotation vector relative to spaces.EE_REFERENCE_QUAT (gripper down)",
        "gripper": "closed-is-1", "actions": "absolute", "dt": dt, "episodes": marker_episodes})
    return {"out": str(out), "episodes": len(rows), "frames": total, "fps": fps, "tasks": len(tasks),
            "cameras": list(cameras), "image_size": list(size) if cameras else None,
            "codec": f"{codec} ({CODECS[codec][0]})",
            "video_files": sum(v.file_index + 1 for v in videos.values()), "data_files": data.file_index + 1}


def _video_info(video: _VideoFiles, fps: int, size: tuple[int, int]) -> dict:
    import av

    info = {"video.height": size[0], "video.width": size[1], "video.codec": av.Codec(video.encoder, "w").canonical_name,
            "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "video.fps": fps, "video.channels": 3,
            "has_audio": False}
    info |= {f"video.{k}": (int(v) if v.isdigit() else v) for k, v in video.options.items()}
    return info



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


def _gripper_to_closed(values: np.ndarray, convention: str, width: bool) -> np.ndarray:
    """Gripper values in the dataset's convention -> ours: 0 = open, 1 = closed."""
    if width:  # metres between the fingers
        return np.clip(1.0 - values / spaces.FRANKA_MAX_FINGER_WIDTH, 0.0, 1.0)
    if np.min(values) < -0.01:  # signed, [-1, 1]
        values = (values + 1.0) / 2.0
    return np.clip(1.0 - values if convention == "open-is-1" else values, 0.0, 1.0)


def _detect_gripper(first_values: list[float], what: str, flag: str) -> tuple[str, str]:
    """Episodes start with the gripper open (LeRobot's and CRISP's recorders open it at reset)."""
    first = np.asarray(first_values, dtype=np.float64)
    signed = bool(np.min(first) < -0.01)
    high = np.mean(first > (0.0 if signed else 0.5))
    if high >= 0.8:
        return "open-is-1", f"{what} high in the first frame of {high:.0%} of the episodes (they start open)"
    if high <= 0.2:
        return "closed-is-1", f"{what} low in the first frame of {1 - high:.0%} of the episodes (they start open)"
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


def load_info(root: str | Path) -> dict:
    root = Path(root)
    path = root / INFO_PATH
    if not root.is_dir():
        raise LeRobotError(f"{root}: no such directory")
    if not path.exists():
        raise LeRobotError(f"{path} is missing: {root} is not a LeRobotDataset root (it needs meta/info.json, "
                           f"meta/episodes/, data/ and, for cameras, videos/); download the whole dataset repository")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise LeRobotError(f"{path}: not valid JSON ({err})") from err
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3"):
        raise LeRobotError(f"{path}: codebase_version {version or 'missing'}; this reads LeRobotDataset v3.x. Convert "
                           f"a v2.1 dataset with LeRobot's `python -m lerobot.scripts.convert_dataset_v21_to_v30`")
    for key in ("fps", "features"):
        if key not in info:
            raise LeRobotError(f"{path}: no {key!r}")
    return info


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
        grip = _gripper_to_closed(cols[key][:, col], conv.gripper, kind == "gripper_width")
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
            1.0 - _gripper_to_closed(g, conv.gripper_state, False)
        fingers = np.repeat((opening * FINGER_OPEN_M)[:, None], 2, axis=1)
    else:  # no measured opening: the commanded one is the best guess
        fingers = np.repeat(((1.0 - grip) * FINGER_OPEN_M)[:, None], 2, axis=1)
    actions = np.concatenate([pose, grip[:, None]], axis=1)
    if not (np.isfinite(position).all() and np.isfinite(quat).all() and np.isfinite(actions).all()):
        raise LeRobotError("non-finite state or action values")
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
                                                                    "action gripper", "--gripper")
    if gripper_state != "auto":
        conv.gripper_state, conv.reasons["gripper_state"] = gripper_state, "--gripper-state"
    elif st.gripper and st.gripper[0] == "gripper" and not st.fingers:
        key, col = st.gripper[1]
        conv.gripper_state, conv.reasons["gripper_state"] = _detect_gripper([c[key][0, col] for c in numeric],
                                                                            "state gripper", "--gripper-state")
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
        to_state = float(np.median(np.linalg.norm(commanded - measured, axis=1)))
        to_zero = float(np.median(np.linalg.norm(commanded, axis=1)))
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
            with EpisodeWriter(path, tuple(camera_frames), size, 1.0 / fps, bag_meta, image_format=image_format) as w:
                w.write_instruction(0.0, instruction)
                for t in range(length):
                    w.write_frame(t / fps, {c: f[t] for c, f in camera_frames.items()}, arrays["joints"][t],
                                  arrays["fingers"][t], arrays["position"][t], arrays["quat"][t], arrays["actions"][t])
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
