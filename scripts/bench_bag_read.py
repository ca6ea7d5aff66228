"""Reading a camera-resolution episode into training rows: decode time and decode-cache size, resized as read
(the policy's 128x128) against kept at the recorded size. Prints one JSON object.

    .venv/bin/python scripts/bench_bag_read.py --seconds 5 --size 480 640 [--out result.json]

The episode is written with EpisodeWriter at 30 Hz, two cameras as raw rgb8 frames of a moving scene (the
costliest case for the cache), the robot state on every frame; it is read by EpisodeDataset as `train` reads it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from mambavla import spaces
from mambavla.data import EpisodeDataset, EpisodeWriter
from mambavla.data.bags import ReadOptions

RATE_HZ = 30.0


def scene(k: int, size: tuple[int, int], camera: int) -> np.ndarray:
    h, w = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb = np.stack(
        [
            128 + 100 * np.sin((x + 7 * k) / 23.0),
            128 + 100 * np.cos((y + 40 * camera) / 17.0),
            np.full_like(x, (5 * k) % 255),
        ],
        axis=2,
    )
    return rgb.astype(np.uint8)


def write_episode(path: Path, seconds: float, size: tuple[int, int]) -> float:
    started = time.perf_counter()
    frames = int(seconds * RATE_HZ)
    with EpisodeWriter(path, ("front", "wrist"), size, 1 / RATE_HZ, {"instruction": "lift the red cube"}) as writer:
        writer.write_instruction(0.0, "lift the red cube")
        for k in range(frames):
            t = k / RATE_HZ
            position, quat = spaces.vector_to_pose(np.array([0.45 + 0.02 * t, 0.0, 0.3, 0.0, 0.0, 0.1 * t]))
            writer.write_frame(
                t,
                {"front": scene(k, size, 0), "wrist": scene(k, size, 1)},
                np.zeros(7),
                np.full(2, 0.04),
                position,
                quat,
                np.r_[spaces.pose_to_vector(position, quat), 0.0],
            )
    return time.perf_counter() - started


def read(root: Path, cache: Path, image_size) -> dict:
    shutil.rmtree(cache, ignore_errors=True)
    started = time.perf_counter()
    ds = EpisodeDataset(root, chunk=16, cache_dir=cache, verbose=False, options=ReadOptions.make(image_size=image_size))
    seconds = time.perf_counter() - started
    cached = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
    return {
        "image_size": list(ds.image_size),
        "rows": len(ds),
        "read_s": round(seconds, 2),
        "cache_mb": round(cached / 2**20, 2),
        "cache_kb_per_frame_and_camera": round(cached / 1024 / len(ds) / 2, 1),
    }


def _cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_bag_read_"))
    try:
        write_s = write_episode(work / "bags" / "episode", args.seconds, tuple(args.size))
        bag_mb = sum(f.stat().st_size for f in (work / "bags").rglob("*") if f.is_file()) / 2**20
        resized = read(work / "bags", work / "cache_resized", (128, 128))
        recorded = read(work / "bags", work / "cache_recorded", None)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    per_episode_minute = 60.0 / args.seconds
    result = {
        "recording": {
            "seconds": args.seconds,
            "rate_hz": RATE_HZ,
            "cameras": 2,
            "size": list(args.size),
            "bag_mb": round(bag_mb, 1),
            "write_s": round(write_s, 1),
        },
        "resized_as_read": resized,
        "kept_at_recorded_size": recorded,
        "cache_gb_for_50_episodes_of_30_s": {
            "resized_as_read": round(resized["cache_mb"] * 50 * 30 / args.seconds / 1024, 2),
            "kept_at_recorded_size": round(recorded["cache_mb"] * 50 * 30 / args.seconds / 1024, 2),
        },
        "read_s_per_recorded_minute": {
            "resized_as_read": round(resized["read_s"] * per_episode_minute, 1),
            "kept_at_recorded_size": round(recorded["read_s"] * per_episode_minute, 1),
        },
        "machine": {
            "cpu": _cpu_name(),
            "cores": os.cpu_count(),
            "load_average_1min": round(os.getloadavg()[0], 1),
            "python": platform.python_version(),
        },
        "date": time.strftime("%Y-%m-%d"),
    }
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
