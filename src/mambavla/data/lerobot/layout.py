"""LeRobotDataset v3.0 as LeRobot lays it out: the paths, the index features, the statistics, the info check.

    meta/info.json       fps, features (dtype, shape, names), totals, path templates
    meta/stats.json      per feature min/max/mean/std/count/q01..q99 (images per channel, in [0, 1])
    meta/tasks.parquet   task (the instruction text, the index) -> task_index
    meta/episodes/chunk-000/file-000.parquet
                         one row per episode: length, tasks, data/{chunk,file}_index,
                         dataset_{from,to}_index, videos/<key>/{chunk_index,file_index,from_timestamp,to_timestamp},
                         stats/<key>/<stat>
    data/chunk-XXX/file-YYY.parquet              frames of many episodes, one row group per episode
    videos/<key>/chunk-XXX/file-YYY.mp4          frames of many episodes back to back, per camera

`meta/mambavla.json` (a file LeRobot does not read) marks a dataset exported by mambavla: our conventions and
each episode's task name, seed and success.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

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


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_plain(data), indent=2, allow_nan=False) + "\n")


def chunk_file(index: int) -> dict[str, int]:
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


def image_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """uint8 [T, H, W, 3] -> per-channel statistics in [0, 1], shaped [3, 1, 1] as LeRobot stores them."""
    step = max(1, len(frames) // IMAGE_STATS_FRAMES)
    stride = max(1, int(np.sqrt(frames.shape[1] * frames.shape[2] / IMAGE_STATS_PIXELS)))
    pixels = frames[::step, ::stride, ::stride].reshape(-1, 3).astype(np.float64) / 255.0
    stats = feature_stats(pixels)
    shaped = {k: (v if k == "count" else v.reshape(3, 1, 1)) for k, v in stats.items()}
    return shaped | {"count": np.array([len(frames)])}  # frames, as LeRobot counts them


def aggregate_image_stats(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
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
    fps = info["fps"]
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not (fps >= 1 and float(fps).is_integer()):
        raise LeRobotError(f"{path}: fps {fps!r}; LeRobotDataset stores a whole number of frames per second (>= 1)")
    return info
