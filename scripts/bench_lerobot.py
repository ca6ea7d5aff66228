"""Time LeRobotDataset v3 export and import on synthetic episodes. Prints JSON.

    python scripts/bench_lerobot.py --episodes 10 --frames 90 --size 480x640 [--codecs av1 h264] [--out DIR]

Writes `--episodes` bags of `--frames` frames with two cameras (JPEG CompressedImage, as `mambavla record`
stores them) of moving synthetic scenes, then per codec: `export_lerobot` of all of them and `import_lerobot`
of the result back into JPEG bags. Per step: wall and CPU seconds, frames per second (camera frames), the bytes
on disk. Synthetic frames compress differently from camera images: the sizes say more about the codecs'
relative cost than about a real dataset's size.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from mambavla import spaces
from mambavla.data import EpisodeWriter
from mambavla.data.lerobot import CODECS, export_lerobot, import_lerobot

CAMERAS = ("front", "wrist")


def _scene(t: int, camera: int, size: tuple[int, int]) -> np.ndarray:
    yy, xx = np.mgrid[0:size[0], 0:size[1]]
    img = np.stack([(xx + 3 * t) % 256, (yy + 40 * camera) % 256, ((xx + yy) // 2 + 5 * t) % 256], axis=-1)
    x0 = (10 + 8 * t) % max(1, size[1] - size[1] // 5)
    img[size[0] // 3:size[0] // 2, x0:x0 + size[1] // 5] = (220, 50, 40)
    return img.astype(np.uint8)


def _write(root: Path, episodes: int, frames: int, size: tuple[int, int], fps: int) -> None:
    rng = np.random.default_rng(0)
    for e in range(episodes):
        vectors = np.cumsum(np.concatenate([[[0.45, 0.0, 0.3, 0.0, 0.0, 0.0]], rng.normal(0, 0.003, (frames, 6))]), 0)
        with EpisodeWriter(root / f"episode_{e:03d}", CAMERAS, size, 1.0 / fps, {"task": "lift", "seed": e},
                           image_format="jpeg") as w:
            w.write_instruction(0.0, "lift the red cube")
            for t in range(frames):
                pos, quat = spaces.vector_to_pose(vectors[t])
                w.write_frame(t / fps, {c: _scene(t + e, i, size) for i, c in enumerate(CAMERAS)}, np.zeros(7),
                              np.full(2, 0.04), pos, quat, np.concatenate([vectors[t + 1], [0.0]]))


def _bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _timed(fn) -> tuple[object, float, float]:
    cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    result = fn()
    cpu1, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - wall0
    return result, wall, (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--frames", type=int, default=90)
    p.add_argument("--size", default="480x640", help="HEIGHTxWIDTH of each camera")
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--codecs", nargs="+", default=["av1", "h264"], choices=tuple(CODECS))
    p.add_argument("--out", default=None, help="keep the files here (default: a temporary folder)")
    args = p.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-lerobot-"))
    try:
        _, wall, cpu = _timed(lambda: _write(root / "bags", args.episodes, args.frames, size, args.fps))
        camera_frames = args.episodes * args.frames * len(CAMERAS)
        report = {"episodes": args.episodes, "frames_per_episode": args.frames, "cameras": len(CAMERAS),
                  "image_size": list(size), "fps": args.fps, "camera_frames": camera_frames,
                  "bags_mb": round(_bytes(root / "bags") / 2**20, 2), "write_bags_s": round(wall, 2), "codecs": {}}
        for codec in args.codecs:
            out = root / f"lerobot_{codec}"
            _, wall, cpu = _timed(lambda: export_lerobot([root / "bags"], out, codec=codec, progress=False))
            entry = {"export_wall_s": round(wall, 2), "export_cpu_s": round(cpu, 2),
                     "export_camera_frames_per_s": round(camera_frames / wall, 1),
                     "dataset_mb": round(_bytes(out) / 2**20, 2),
                     "videos_mb": round(_bytes(out / "videos") / 2**20, 2)}
            _, wall, cpu = _timed(lambda: import_lerobot(out, root / f"back_{codec}", progress=False))
            entry |= {"import_wall_s": round(wall, 2), "import_cpu_s": round(cpu, 2),
                      "import_camera_frames_per_s": round(camera_frames / wall, 1),
                      "imported_bags_mb": round(_bytes(root / f"back_{codec}") / 2**20, 2)}
            report["codecs"][codec] = entry
        report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        print(json.dumps(report, indent=2))
    finally:
        if not args.out:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
