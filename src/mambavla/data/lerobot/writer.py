"""Episode bags -> a LeRobotDataset v3 folder (`mambavla dataset export-lerobot`), with pyarrow and PyAV.

Our layout goes out verbatim, so nothing is lost on the way back: `observation.state` is the 8-D proprio
(`spaces.PROPRIO_NAMES`, rotation vector relative to the gripper-down reference), `observation.state.joint` the
7 arm and 2 finger joints, `action` the 7-D absolute target (`spaces.ACTION_NAMES`, gripper 1 = closed),
`observation.images.<camera>` one video per camera, the task the instruction; `meta/mambavla.json` says so.
"""

from __future__ import annotations

import fractions
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from mambavla import spaces
from mambavla.data.bags import ARM_JOINTS, FINGER_JOINTS, read_episode
from mambavla.data.lerobot.layout import (
    ACTION_KEY,
    CHUNKS_SIZE,
    CODEBASE_VERSION,
    DATA_FILE_MB,
    DATA_PATH,
    EPISODES_PATH,
    IMAGE_PREFIX,
    INDEX_KEYS,
    INFO_PATH,
    JOINT_STATE_KEY,
    MARKER_FORMAT,
    MARKER_PATH,
    STATE_KEY,
    STATS_PATH,
    TASKS_PATH,
    VIDEO_FILE_MB,
    VIDEO_PATH,
    LeRobotError,
    aggregate_image_stats,
    chunk_file,
    feature_stats,
    image_stats,
    write_json,
)

# name -> (PyAV encoder, options). AV1 through SVT-AV1 with LeRobot's defaults (crf 30, keyframe every 2 frames,
# preset 12); h264 and mpeg4 where a reader lacks an AV1 decoder.
CODECS: dict[str, tuple[str, dict[str, str]]] = {
    "av1": ("libsvtav1", {"g": "2", "crf": "30", "preset": "12"}),
    "h264": ("libx264", {"g": "2", "crf": "18", "preset": "veryfast"}),
    "mpeg4": ("mpeg4", {"g": "2", "qscale": "2"}),
}


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
        self.path = self.root / VIDEO_PATH.format(video_key=self.key, **chunk_file(self.file_index))
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
        cf = chunk_file(self.file_index)
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
            path = self.root / DATA_PATH.format(**chunk_file(self.file_index))
            path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(str(path), table.schema, compression="snappy")
            self.bytes = 0
        self.writer.write_table(table)
        self.bytes += table.nbytes
        cf = chunk_file(self.file_index)
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
    size = fps = None
    videos: dict[str, _VideoFiles] = {}
    data = _DataFiles(out, data_file_mb)
    tasks: dict[str, int] = {}
    rows, marker_episodes, numeric, image_parts = [], [], {STATE_KEY: [], JOINT_STATE_KEY: [], ACTION_KEY: []}, {}
    index_parts: dict[str, list[np.ndarray]] = {key: [] for key in INDEX_KEYS}
    total = 0
    try:
        for episode_index, path in enumerate(tqdm(paths, desc="export LeRobot", unit="episode", disable=not progress)):
            ep = read_episode(path)
            ep_dt = float(ep.meta.get("dt") or np.median(np.diff(ep.times)))
            # a recorded dt is the camera's measured median interval: episodes at one rate differ in microseconds
            ep_fps = _fps(ep_dt, path)
            if cameras is None:
                cameras, size, fps = tuple(ep.images), tuple(ep.image_size), ep_fps
                videos = {c: _VideoFiles(out, IMAGE_PREFIX + c, fps, size, codec, crf, video_file_mb) for c in cameras}
            elif tuple(ep.images) != cameras or (cameras and tuple(ep.image_size) != size) or ep_fps != fps:
                raise LeRobotError(f"{path}: cameras {list(ep.images)} at {ep.image_size if ep.images else '-'}, "
                                   f"{ep_fps} fps; the first episode had {list(cameras)} at {size}, {fps} fps. "
                                   f"One LeRobot dataset holds one layout: export these episodes separately")
            task_index = tasks.setdefault(ep.instruction, len(tasks))
            table = _frame_table(ep, episode_index, total, task_index, fps)
            row = {"episode_index": episode_index, "tasks": [ep.instruction], "length": len(ep),
                   **data.append(table), "dataset_from_index": total, "dataset_to_index": total + len(ep)}
            ep_stats = {STATE_KEY: feature_stats(ep.proprio), JOINT_STATE_KEY: feature_stats(ep.joint_positions),
                        ACTION_KEY: feature_stats(ep.actions)}
            for name in cameras:
                row.update(videos[name].append(ep.images[name]))
                ep_stats[IMAGE_PREFIX + name] = image_stats(ep.images[name])
                image_parts.setdefault(IMAGE_PREFIX + name, []).append(ep_stats[IMAGE_PREFIX + name])
            for key in INDEX_KEYS:
                index_parts[key].append(table.column(key).to_numpy()[:, None])
                ep_stats[key] = feature_stats(index_parts[key][-1])
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
    stats |= {key: aggregate_image_stats(parts) for key, parts in image_parts.items()}
    stats |= {key: feature_stats(np.concatenate(parts)) for key, parts in index_parts.items()}
    write_json(out / STATS_PATH, stats)

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
    write_json(out / INFO_PATH, info)
    write_json(out / MARKER_PATH, {
        "format": MARKER_FORMAT, "rotation": "rotation vector relative to spaces.EE_REFERENCE_QUAT (gripper down)",
        "gripper": "closed-is-1", "actions": "absolute", "dt": 1.0 / fps, "episodes": marker_episodes})
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
