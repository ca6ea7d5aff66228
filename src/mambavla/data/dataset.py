"""Training samples from a directory of episode bags.

    ds = EpisodeDataset("demos/", chunk=16, action_mode="absolute")
    sample = ds[0]
    # {"images": {"front": uint8[H,W,3], "wrist": uint8[H,W,3]}, "proprio": float32[8],
    #  "depth": {"front": uint16[H,W] mm, ...} (read with ReadOptions(depth=True) only),
    #  "instruction": str, "actions": float32[16, 7], "action_mode": "absolute",
    #  "action_pad": bool[16]}   # True where the chunk ran past the episode end (last action repeated)
    stats = compute_norm_stats(ds)   # {"proprio": {"mean","std","min","max"}, "actions": {...}} (lists)

One sample per row, rows at the episodes' one interval `ds.dt` (`bags.read_episode`: any rosbag2 recording,
read as `options` says: `--map`, instruction, image size, dt; episodes at another interval are skipped with
the reason). `actions` is the chunk of the next `chunk` actions starting at the observation's row; in
"delta" mode the pose part is relative to the end-effector pose of the observation
(`spaces.absolute_to_delta`), the gripper stays absolute.

Decoding bags is slow (rosbags, per-message CDR), so each episode is decoded once into a cache
folder of `.npy` arrays at the policy's resolution (memory-mapped on later runs), keyed by the bag files'
sizes and mtimes and the reading options.
Unusable episodes are reported (`ds.skipped`, a warning per episode) and left out; an empty or
all-bad directory is an error.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from mambavla import spaces
from mambavla.data.bags import Episode, EpisodeError, ReadOptions, is_bag_dir, read_episodes

CACHE_VERSION = 3
DT_TOLERANCE = 0.02  # relative: episodes recorded at rates further apart than this are not one dataset
DEFAULT_CACHE = ".mambavla_cache"


class DatasetError(ValueError):
    """The dataset as a whole cannot be used (no episodes, every episode bad, inconsistent sizes)."""


@dataclass
class CachedEpisode:
    path: Path
    instruction: str
    meta: dict
    images: dict[str, np.ndarray]  # camera -> uint8[T, H, W, 3] (memory-mapped from the cache)
    proprio: np.ndarray  # float32[T, 8]
    actions: np.ndarray  # float32[T, 7], absolute
    depth: dict[str, np.ndarray] = field(default_factory=dict)  # camera -> uint16[T, H, W] mm (ReadOptions.depth)

    def __len__(self) -> int:
        return len(self.proprio)


def find_episodes(root: str | Path) -> list[Path]:
    """Bag directories under root (root itself if it is one), sorted."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such directory")
    if is_bag_dir(root):
        return [root]
    return sorted(p for p in root.iterdir() if not p.name.startswith(".") and is_bag_dir(p))


def _cache_key(path: Path, options: ReadOptions, cameras) -> str:
    h = hashlib.sha1(
        f"{CACHE_VERSION}:{path.resolve()}:{options.key()}:{list(cameras) if cameras is not None else None}".encode()
    )
    for f in sorted(path.iterdir()):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _write_episode(folder: Path, ep: Episode) -> None:
    folder.mkdir(parents=True)
    for name, arr in ep.images.items():
        np.save(folder / f"image_{name}.npy", arr)
    for name, arr in ep.depth.items():
        np.save(folder / f"depth_{name}.npy", arr)
    np.save(folder / "proprio.npy", ep.proprio)
    np.save(folder / "actions.npy", ep.actions)
    (folder / "episode.json").write_text(
        json.dumps({"instruction": ep.instruction, "meta": ep.meta, "cameras": list(ep.images),
                    "depth_cameras": list(ep.depth)})
    )


def _save_cache(folder: Path, episodes: list[Episode]) -> None:
    """A bag's episodes: in `folder` itself when it holds one, else in folder/0, folder/1 ... with episodes.json."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if len(episodes) == 1:
        _write_episode(tmp, episodes[0])
    else:
        for k, ep in enumerate(episodes):
            _write_episode(tmp / str(k), ep)
        (tmp / "episodes.json").write_text(json.dumps({"count": len(episodes)}))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def _cached(folder: Path) -> list[Path] | None:
    """The episode folders of a bag's cache, None when it has none."""
    if (folder / "episodes.json").exists():
        return [folder / str(k) for k in range(json.loads((folder / "episodes.json").read_text())["count"])]
    return [folder] if (folder / "episode.json").exists() else None


def _load_cache(folder: Path, path: Path) -> CachedEpisode:
    info = json.loads((folder / "episode.json").read_text())
    images = {c: np.load(folder / f"image_{c}.npy", mmap_mode="r") for c in info["cameras"]}
    return CachedEpisode(
        path,
        info["instruction"],
        info["meta"],
        images,
        np.load(folder / "proprio.npy"),
        np.load(folder / "actions.npy"),
        {c: np.load(folder / f"depth_{c}.npy", mmap_mode="r") for c in info.get("depth_cameras", [])},
    )


class EpisodeDataset:
    def __init__(
        self,
        root: str | Path | Sequence[str | Path],
        chunk: int = 16,
        action_mode: str = "absolute",
        cameras: Sequence[str] | None = None,
        cache_dir: str | Path | None = None,
        use_cache: bool = True,
        successful_only: bool = False,
        verbose: bool = True,
        options: ReadOptions | None = None,
    ):
        if action_mode not in spaces.ACTION_MODES:
            raise ValueError(f"action_mode must be one of {spaces.ACTION_MODES}, got {action_mode!r}")
        if chunk < 1:
            raise ValueError("chunk must be at least 1")
        self.chunk, self.action_mode = int(chunk), action_mode
        roots = [root] if isinstance(root, (str, Path)) else list(root)
        paths = [p for r in roots for p in find_episodes(r)]
        if not paths:
            raise DatasetError(f"no episodes (rosbag2 directories) in {', '.join(map(str, roots))}")
        self.cache_dir = Path(cache_dir) if cache_dir else Path(roots[0]) / DEFAULT_CACHE
        self.decoded = 0  # bags decoded by this instance (0 when everything came from the cache)
        self.episodes: list[CachedEpisode] = []
        self.skipped: list[tuple[str, str]] = []
        self.cameras: tuple[str, ...] | None = tuple(cameras) if cameras else None
        self.options = options or ReadOptions()
        self.image_size: tuple[int, int] | None = None
        self.dt: float | None = None
        from tqdm import tqdm

        for path in tqdm(paths, desc="episodes", unit="bag", disable=not verbose or len(paths) < 20, leave=False):
            try:
                loaded = self._load(path, use_cache)
            except EpisodeError as err:
                self._skip(path, str(err), verbose)
                continue
            for k, ep in enumerate(loaded):
                where = path if len(loaded) == 1 else f"{path} [demonstration {k + 1} of {len(loaded)}]"
                try:
                    self._check_consistent(ep)
                except EpisodeError as err:
                    self._skip(where, str(err), verbose)
                    continue
                if successful_only and ep.meta.get("success") is False:
                    self._skip(where, "not successful", verbose)
                    continue
                self.episodes.append(ep)
        if not self.episodes:
            reasons = "; ".join(r for _, r in self.skipped[:3])
            raise DatasetError(f"no usable episodes: all {len(self.skipped)} skipped ({reasons})")
        lengths = np.array([len(e) for e in self.episodes])
        self._starts = np.concatenate([[0], np.cumsum(lengths)])

    def _skip(self, path: Path | str, reason: str, verbose: bool) -> None:
        self.skipped.append((str(path), reason))
        if verbose:
            print(f"warning: skipping episode {path}: {reason}", file=sys.stderr)

    def _load(self, path: Path, use_cache: bool) -> list[CachedEpisode]:
        folder = self.cache_dir / f"{path.name}-{_cache_key(path, self.options, self.cameras)}"
        if use_cache and (cached := _cached(folder)):
            return [_load_cache(f, path) for f in cached]
        episodes = read_episodes(path, cameras=self.cameras, options=self.options)
        self.decoded += 1
        for warning in (w for ep in episodes for w in ep.meta.get("warnings", [])):
            print(f"warning: {path}: {warning}", file=sys.stderr)
        if use_cache:
            try:
                _save_cache(folder, episodes)
                return [_load_cache(f, path) for f in _cached(folder)]
            except OSError as err:  # read-only dataset directory: keep going without a cache
                print(f"warning: cannot write the decode cache {folder}: {err}", file=sys.stderr)
        return [CachedEpisode(path, ep.instruction, ep.meta, ep.images, ep.proprio, ep.actions, ep.depth)
                for ep in episodes]

    def _check_consistent(self, ep: CachedEpisode) -> None:
        cams = tuple(ep.images)
        if self.cameras is None:
            self.cameras = cams
        elif not set(self.cameras) <= set(cams):
            raise EpisodeError(f"cameras {list(cams)}, expected {list(self.cameras)}")
        sizes = {tuple(ep.images[c].shape[1:3]) for c in self.cameras}
        if len(sizes) > 1:
            raise EpisodeError(f"camera sizes differ within the episode: {sorted(sizes)}")
        size = sizes.pop() if sizes else None
        if self.image_size is not None and size != self.image_size:
            raise EpisodeError(
                f"images are {size}, the dataset's are {self.image_size} (mismatched camera size; "
                f"--image-size H W resizes every frame)"
            )
        dt = float(ep.meta["dt"])
        if self.dt is not None and abs(dt - self.dt) > DT_TOLERANCE * self.dt:
            source = ep.meta.get("roles", {}).get(self.cameras[0] if self.cameras else "joint_states", "its stamps")
            raise EpisodeError(
                f"rows every {dt * 1e3:.1f} ms ({source}), the dataset's every {self.dt * 1e3:.1f} ms; "
                f"--dt SECONDS resamples every episode to one interval"
            )
        self.image_size = size
        self.dt = self.dt or dt

    def __len__(self) -> int:
        return int(self._starts[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(episode index, frame index) of a sample."""
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        e = int(np.searchsorted(self._starts, index, side="right") - 1)
        return e, index - int(self._starts[e])

    def action_chunk(self, e: int, t: int) -> tuple[np.ndarray, np.ndarray]:
        """float32[chunk, 7] actions from frame t on (absolute or delta) and the bool[chunk] padding mask."""
        ep = self.episodes[e]
        idx = np.arange(t, t + self.chunk)
        pad = idx >= len(ep)
        chunk = ep.actions[np.minimum(idx, len(ep) - 1)].astype(np.float64)
        if self.action_mode == "delta":
            chunk = to_delta(chunk, ep.proprio[t])
        return chunk.astype(np.float32), pad

    def __getitem__(self, index: int) -> dict:
        e, t = self.locate(index)
        ep = self.episodes[e]
        actions, pad = self.action_chunk(e, t)
        return {
            "images": {c: np.array(ep.images[c][t]) for c in self.cameras},
            **({"depth": {c: np.array(ep.depth[c][t]) for c in self.cameras}} if self.options.depth else {}),
            "proprio": np.array(ep.proprio[t], dtype=np.float32),
            "instruction": ep.instruction,
            "actions": actions,
            "action_mode": self.action_mode,
            "action_pad": pad,
        }

    def summary(self) -> dict:
        """Episodes, frames, tasks, success rate, action and proprio ranges (for `mambavla dataset stats`)."""
        tasks: dict[str, int] = {}
        for ep in self.episodes:
            key = ep.meta.get("task") or "unknown"
            tasks[key] = tasks.get(key, 0) + 1
        known = [ep.meta["success"] for ep in self.episodes if isinstance(ep.meta.get("success"), bool)]
        actions = np.concatenate([ep.actions for ep in self.episodes])
        return {
            "episodes": len(self.episodes),
            "frames": len(self),
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "tasks": dict(sorted(tasks.items())),
            "instructions": len({ep.instruction for ep in self.episodes}),
            "success_rate": round(float(np.mean(known)), 4) if known else None,
            "dt": self.dt,
            "cameras": list(self.cameras or ()),
            "image_size": list(self.image_size) if self.image_size else None,
            "episode_frames": {
                "min": int(min(map(len, self.episodes))),
                "max": int(max(map(len, self.episodes))),
                "mean": round(float(np.mean([len(e) for e in self.episodes])), 1),
            },
            "action_range": {
                name: [round(float(lo), 4), round(float(hi), 4)]
                for name, lo, hi in zip(spaces.ACTION_NAMES, actions.min(0), actions.max(0))
            },
            **self.sources(),
        }

    def sources(self) -> dict:
        """What reading found, over the episodes: {"roles": {role: {"topics": {topic: episodes}, "recorded_sizes":
        [[H, W]] (cameras)}}, "recorded_rate_hz": [...], "actions_from": {how: episodes}, "warnings": [{path, warning}]}
        (a camera rate that wobbles or jitters: the rows are read, each with its nearest frame)."""
        roles: dict[str, dict] = {}
        rates: list = []
        actions_from: dict[str, int] = {}
        for ep in self.episodes:
            for role, topic in ep.meta.get("roles", {}).items():
                entry = roles.setdefault(role, {"topics": {}})
                entry["topics"][topic] = entry["topics"].get(topic, 0) + 1
                size = ep.meta.get("recorded_image_size", {}).get(role)
                if size and size not in entry.setdefault("recorded_sizes", []):
                    entry["recorded_sizes"].append(size)
            hz = round(1.0 / ep.meta["recorded_dt"], 2) if ep.meta.get("recorded_dt") else None
            if hz not in rates:
                rates.append(hz)
            source = ep.meta.get("actions_from", "unknown")
            actions_from[source] = actions_from.get(source, 0) + 1
        warnings = [{"path": str(ep.path), "warning": w} for ep in self.episodes for w in ep.meta.get("warnings", [])]
        return {"roles": roles, "recorded_rate_hz": rates, "actions_from": actions_from, "warnings": warnings}


def to_delta(chunk: np.ndarray, proprio: np.ndarray) -> np.ndarray:
    """Absolute actions [..., 7] -> delta actions relative to the observed end-effector pose in proprio[:6]."""
    obs_pos, obs_quat = spaces.vector_to_pose(np.asarray(proprio[..., :6], dtype=np.float64))
    pos, quat = spaces.vector_to_pose(chunk[..., :6])
    return np.concatenate([spaces.absolute_to_delta(pos, quat, obs_pos, obs_quat), chunk[..., 6:7]], axis=-1)


def _stats(x: np.ndarray) -> dict:
    # std is floored at 1% of the dimension's scale (|mean| or range), 1 where that is 0: a (nearly) constant
    # dimension must not amplify sensor noise by 1e6 (the same rule as model/normalization.py)
    mean, lo, hi = x.mean(0), x.min(0), x.max(0)
    scale = np.maximum(np.abs(mean), hi - lo)
    std = np.where(scale > 0, np.maximum(x.std(0), 0.01 * scale), 1.0)
    return {"mean": mean.tolist(), "std": std.tolist(), "min": lo.tolist(), "max": hi.tolist()}


def compute_norm_stats(dataset: EpisodeDataset) -> dict:
    """{"proprio": {"mean","std","min","max"}, "actions": {...}}: per-dimension lists of floats over every
    frame (proprio) and every non-padded chunk step in the dataset's action mode (actions)."""
    proprio = np.concatenate([ep.proprio for ep in dataset.episodes]).astype(np.float64)
    if dataset.action_mode == "absolute":
        actions = np.concatenate([ep.actions for ep in dataset.episodes]).astype(np.float64)
    else:
        parts = []
        for ep in dataset.episodes:
            T = len(ep)
            idx = np.arange(T)[:, None] + np.arange(dataset.chunk)[None, :]  # (T, chunk)
            valid = idx < T
            chunks = ep.actions[np.minimum(idx, T - 1)].astype(np.float64)  # (T, chunk, 7)
            parts.append(to_delta(chunks, ep.proprio[:, None])[valid])
        actions = np.concatenate(parts)
    return {"proprio": _stats(proprio), "actions": _stats(actions)}
