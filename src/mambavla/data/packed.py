"""Training episodes at the policy rate, and the compact pack that carries them to a GPU machine.

    episodes = TrainingEpisodes.from_dataset(EpisodeDataset("demos/"), stride=4)  # from rosbag2 episodes
    write_pack(episodes, "pack/", encoder, shards=2, quality=90)                  # JPEG frames + instruction embeddings
    episodes = TrainingEpisodes.load("pack/")                                     # no bags, no MiniLM needed there
    batch = episodes.segments(rng, batch=16, frames=64, chunk=16)                 # stream-mode training batch
    batch = episodes.windows(rng, batch=32, history=1, chunk=16)                  # window-mode training batch

A policy observes every `stride` recorded rows (its `policy_period` = stride * dt), while its action
chunks keep the recorded rate, so only every stride-th frame is kept and every action row. The
episodes own sampling: batches hold `frame_index` rows into `frames` (the caller gathers images,
e.g. on the GPU), proprio, future action chunks in robot units and their padding masks.

A pack is a folder: `pack.json` (cameras, sizes, rates, episodes), `instructions.npz` (each distinct
instruction's token embeddings from the frozen language encoder, so training needs no encoder
weights) and `part-NNN.npz` shards of JPEG frames, proprio and actions, each small enough to travel
on its own (a GPU machine reached through a 64 MiB link).
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mambavla.data.bags import ReadOptions
from mambavla.data.dataset import EpisodeDataset, _stats, to_delta
from mambavla.spaces import ACTION_MODES

PACK_VERSION = 2  # 2: depth (written only by packs that carry it; 1 is read as a pack without depth)
PACK_VERSIONS = (1, 2)


@dataclass
class TrainingEpisodes:
    cameras: tuple[str, ...]
    image_size: tuple[int, int]
    dt: float  # s between recorded rows (action chunk rows)
    stride: int  # recorded rows between policy frames
    frames: dict[str, np.ndarray]  # camera -> uint8 [F, H, W, 3], policy-rate frames of every episode
    proprio: np.ndarray  # float32 [F, P] at the policy-rate frames
    actions: np.ndarray  # float32 [N, A], every recorded row, absolute
    frame_start: np.ndarray  # int64 [E + 1]: episode e's frames are frame_start[e]:frame_start[e+1]
    action_start: np.ndarray  # int64 [E + 1]
    instructions: list[str]
    meta: list[dict] = field(default_factory=list)  # per episode: task, seed, source path
    embeddings: dict[str, np.ndarray] | None = None  # instruction -> float32 [L, width] (packs only)
    depth: dict[str, np.ndarray] = field(default_factory=dict)  # camera -> uint16 [F, H, W] mm, where read

    # ---- construction ------------------------------------------------------------------------

    @classmethod
    def from_dataset(cls, dataset: EpisodeDataset, stride: int) -> TrainingEpisodes:
        if stride < 1:
            raise ValueError(f"stride must be >= 1 recorded rows, got {stride}")
        eps = dataset.episodes
        frames = {c: np.concatenate([np.asarray(e.images[c][::stride]) for e in eps]) for c in dataset.cameras}
        counts = [len(range(0, len(e), stride)) for e in eps]
        depth = {c: np.concatenate([np.asarray(e.depth[c][::stride]) for e in eps])
                 for c in dataset.cameras} if dataset.options.depth else {}
        return cls(
            depth=depth,
            cameras=tuple(dataset.cameras),
            image_size=tuple(dataset.image_size),
            dt=dataset.dt,
            stride=stride,
            frames=frames,
            proprio=np.concatenate([np.asarray(e.proprio[::stride], np.float32) for e in eps]),
            actions=np.concatenate([np.asarray(e.actions, np.float32) for e in eps]),
            frame_start=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            action_start=np.concatenate([[0], np.cumsum([len(e) for e in eps])]).astype(np.int64),
            instructions=[e.instruction for e in eps],
            meta=[
                {
                    "task": e.meta.get("task"),
                    "seed": e.meta.get("seed"),
                    "path": str(e.path),
                    **({"demonstration": e.meta["demonstration"]} if "demonstration" in e.meta else {}),
                }
                for e in eps
            ],
        )

    @classmethod
    def load(cls, folder: str | Path) -> TrainingEpisodes:
        folder = Path(folder)
        index_file = folder / "pack.json"
        if not index_file.is_file():
            raise FileNotFoundError(f"{folder}: not a training pack (no pack.json)")
        index = json.loads(index_file.read_text())
        if index.get("version") not in PACK_VERSIONS:
            raise ValueError(f"{folder}: pack version {index.get('version')}, this code reads {PACK_VERSIONS}")
        cameras = tuple(index["cameras"])
        parts = []
        for name in index["parts"]:
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder}: shard {name} is missing (copy every part-*.npz of the pack)")
            parts.append(np.load(folder / name))
        frames = {c: np.concatenate([_decode_all(p[f"jpeg_{c}"], p[f"offsets_{c}"]) for p in parts]) for c in cameras}
        depth = {c: np.concatenate([_decode_all(p[f"png_depth_{c}"], p[f"offsets_depth_{c}"], _png16_decoder())
                                    for p in parts]) for c in index.get("depth_cameras", [])}
        counts = np.concatenate([np.diff(p["frame_start"]) for p in parts])
        lengths = np.concatenate([np.diff(p["action_start"]) for p in parts])
        table = np.load(folder / "instructions.npz")
        texts = index["instruction_texts"]
        embeddings = {t: table["embeddings"][i, : table["lengths"][i]].astype(np.float32) for i, t in enumerate(texts)}
        return cls(
            cameras=cameras,
            image_size=tuple(index["image_size"]),
            dt=float(index["dt"]),
            stride=int(index["stride"]),
            frames=frames,
            proprio=np.concatenate([p["proprio"] for p in parts]),
            actions=np.concatenate([p["actions"] for p in parts]),
            frame_start=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            action_start=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            instructions=[e["instruction"] for e in index["episodes"]],
            meta=[{k: v for k, v in e.items() if k != "instruction"} for e in index["episodes"]],
            embeddings=embeddings,
            depth=depth,
        )

    # ---- what trainers need to know -------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.instructions)

    @property
    def policy_period(self) -> float:
        return self.dt * self.stride

    def frame_count(self, e: int) -> int:
        return int(self.frame_start[e + 1] - self.frame_start[e])

    def task_labels(self) -> list[str]:
        """Each episode's task as a string ("None" where its metadata has none, or there is no metadata)."""
        return [str(m.get("task")) for m in self.meta] if self.meta else ["None"] * len(self)

    def split(self, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
        """(train, validation) episode indices, k = round(1 / fraction): every k-th episode of each task held
        out (its 1st, (k+1)-th, ...; a task with one episode keeps it for training), so every task is
        validated; when no task has two episodes, every k-th episode overall."""
        index = np.arange(len(self))
        if val_fraction <= 0 or len(self) < 2:
            return index, index[:0]
        k = max(2, round(1 / val_fraction))
        tasks = np.array(self.task_labels())
        val = np.zeros(len(self), bool)
        for task in np.unique(tasks):
            members = index[tasks == task]
            if len(members) >= 2:
                val[members[::k]] = True
        if not val.any():
            val = index % k == 0
        return index[~val], index[val]

    def first_per_task(self, ids: np.ndarray, n: int) -> np.ndarray:
        """The first `n` of `ids` of each task (episode order), for training on fewer demonstrations per task
        while validating on the same held-out episodes. n = 0 keeps all."""
        if n < 0:
            raise ValueError(f"episodes per task must be >= 0, got {n}")
        if n == 0:
            return ids
        tasks = self.task_labels()
        seen: dict[str, int] = {}
        keep = []
        for e in ids:
            task = tasks[e]
            seen[task] = seen.get(task, 0) + 1
            keep.append(seen[task] <= n)
        return ids[np.array(keep, dtype=bool)]

    def norm_stats(self, chunk: int, action_mode: str = "absolute") -> dict:
        """{"proprio": {mean, std, min, max}, "actions": {...}} over the policy frames (proprio) and every
        recorded row (absolute actions) or every frame's chunk (delta actions)."""
        if action_mode == "absolute":
            actions = self.actions.astype(np.float64)
        else:
            rows, pad = self._chunks(
                np.arange(len(self)).repeat([self.frame_count(e) for e in range(len(self))]),
                np.concatenate([np.arange(self.frame_count(e)) for e in range(len(self))]),
                chunk,
                "delta",
            )
            actions = rows[~pad].astype(np.float64)
        return {"proprio": _stats(self.proprio.astype(np.float64)), "actions": _stats(actions)}

    def summary(self) -> dict:
        tasks = Counter(self.task_labels()) if self.meta else {}
        return {
            "episodes": len(self),
            "frames": int(self.frame_start[-1]),
            "action_rows": int(self.action_start[-1]),
            "tasks": dict(sorted(tasks.items())),
            "instructions": len(set(self.instructions)),
            "cameras": list(self.cameras),
            "image_size": list(self.image_size),
            "depth_cameras": list(self.depth),
            "dt": self.dt,
            "stride": self.stride,
            "policy_period": self.policy_period,
        }

    # ---- sampling ----------------------------------------------------------------------------

    def _chunks(
        self, episodes: np.ndarray, frames: np.ndarray, chunk: int, action_mode: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """Action chunks from policy frame `frames[i]` of episode `episodes[i]`: float32 [..., chunk, A] and
        the bool [..., chunk] padding (rows past the episode's end repeat its last action)."""
        if action_mode not in ACTION_MODES:
            raise ValueError(f"action_mode must be one of {ACTION_MODES}, got {action_mode!r}")
        start, length = self.action_start[episodes], np.diff(self.action_start)[episodes]
        rows = frames * self.stride
        offset = rows[..., None] + np.arange(chunk)  # (..., chunk) row within its episode
        pad = offset >= length[..., None]
        actions = self.actions[start[..., None] + np.minimum(offset, length[..., None] - 1)]
        if action_mode == "delta":
            proprio = self.proprio[self.frame_start[episodes] + frames]
            actions = to_delta(actions.astype(np.float64), proprio[..., None, :]).astype(np.float32)
        return actions, pad

    def task_balanced_weights(self, ids: np.ndarray) -> np.ndarray:
        """Sampling probabilities over `ids` that give each task the same share of a batch (each episode
        1 / (tasks x its task's episodes))."""
        _, task, count = np.unique(
            np.asarray(self.task_labels())[np.asarray(ids)], return_inverse=True, return_counts=True
        )
        return 1.0 / (len(count) * count[task])

    def segments(
        self,
        rng: np.random.Generator,
        batch: int,
        frames: int,
        chunk: int,
        episodes: np.ndarray | None = None,
        action_mode: str = "absolute",
        weights: np.ndarray | None = None,
    ) -> dict:
        """Stream-mode batch: B segments of T consecutive policy frames. A segment starts at its episode's
        start (as the runtime does after an instruction) when the episode fits, else at the start half
        of the time and at a random frame otherwise. Frames past an episode's end repeat its last frame
        and are fully padded. -> {"frame_index": int64 [B, T], "proprio": [B, T, P], "actions": [B, T, chunk, A],
        "action_pad": bool [B, T, chunk], "instruction": [str] * B, "episode": int [B]}. `weights`: sampling
        probabilities over `episodes` (default uniform)."""
        pool = np.arange(len(self)) if episodes is None else np.asarray(episodes)
        chosen = rng.choice(pool, size=batch, p=weights)
        counts = np.diff(self.frame_start)[chosen]
        late = rng.random(batch) >= 0.5
        start = np.where(
            (counts > frames) & late, (rng.random(batch) * np.maximum(counts - frames + 1, 1)).astype(np.int64), 0
        )
        local = start[:, None] + np.arange(frames)  # (B, T)
        valid = local < counts[:, None]
        local = np.minimum(local, counts[:, None] - 1)
        actions, pad = self._chunks(chosen[:, None].repeat(frames, 1), local, chunk, action_mode)
        return self._batch(chosen, self.frame_start[chosen][:, None] + local, actions, pad | ~valid[..., None])

    def windows(
        self,
        rng: np.random.Generator,
        batch: int,
        history: int,
        chunk: int,
        episodes: np.ndarray | None = None,
        action_mode: str = "absolute",
    ) -> dict:
        """Window-mode batch: B samples, each the last `history` policy frames up to a frame (the episode's
        first frame repeated before its start) and that frame's chunk. -> {"frame_index": [B, K], "proprio":
        [B, K, P], "actions": [B, chunk, A], "action_pad": [B, chunk], "instruction": [str] * B, "episode": int [B]}."""
        pool = np.arange(len(self)) if episodes is None else np.asarray(episodes)
        chosen = rng.choice(pool, size=batch)
        counts = np.diff(self.frame_start)[chosen]
        local = (rng.random(batch) * counts).astype(np.int64)
        index = self.frame_start[chosen][:, None] + np.maximum(local[:, None] + np.arange(1 - history, 1), 0)
        actions, pad = self._chunks(chosen, local, chunk, action_mode)
        return self._batch(chosen, index, actions, pad)

    def _batch(self, chosen: np.ndarray, index: np.ndarray, actions: np.ndarray, pad: np.ndarray) -> dict:
        """A batch of episodes `chosen` [B] at frames `index` (into `frames`), with their chunks and padding."""
        return {
            "frame_index": index,
            "proprio": self.proprio[index],
            "actions": actions,
            "action_pad": pad,
            "instruction": [self.instructions[e] for e in chosen],
            "episode": chosen,
        }


def load_episodes(
    sources: list[str],
    period: float,
    progress: bool = True,
    options: ReadOptions | None = None,
    cameras: tuple[str, ...] | None = None,
) -> TrainingEpisodes:
    """A pack folder (`mambavla dataset pack`), or rosbag2 episode folders read as `options` says (role finder, rows,
    frames resized as read) and subsampled to the policy period. `cameras`: the policy's, in order."""
    if len(sources) == 1 and (Path(sources[0]) / "pack.json").is_file():
        return TrainingEpisodes.load(sources[0])
    dataset = EpisodeDataset(sources, chunk=1, successful_only=True, verbose=progress, cameras=cameras, options=options)
    stride = max(1, round(period / dataset.dt))
    if abs(stride * dataset.dt - period) > 1e-6:
        print(
            f"warning: policy period {period} s is not a multiple of the recording's {dataset.dt} s; "
            f"using {stride * dataset.dt} s",
            file=sys.stderr,
        )
    return TrainingEpisodes.from_dataset(dataset, stride)


def write_pack(episodes: TrainingEpisodes, folder: str | Path, encoder, shards: int = 1, quality: int = 90) -> dict:
    """Write `episodes` as a pack (JPEG frames at `quality`, instruction embeddings from `encoder`, an
    `InstructionEncoder`, for every instruction and its variants naming another cube, which validation
    scores); returns {"bytes": {file: size}, ...}."""
    from mambavla.data.images import encode_jpeg, encode_png16
    from mambavla.sim.tasks import other_cube_instructions

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    texts = sorted({v for t in episodes.instructions for v in [t, *other_cube_instructions(t)]})
    rows = [encoder.encode_one(t).float().cpu().numpy() for t in texts]
    width, longest = rows[0].shape[1], max(r.shape[0] for r in rows)
    table = np.zeros((len(texts), longest, width), np.float32)
    for i, r in enumerate(rows):
        table[i, : len(r)] = r
    np.savez(folder / "instructions.npz", embeddings=table, lengths=np.array([len(r) for r in rows]))

    shards = max(1, min(shards, len(episodes)))
    parts = []
    for s, members in enumerate(np.array_split(np.arange(len(episodes)), shards)):
        arrays: dict[str, np.ndarray] = {}
        for c in episodes.cameras:
            blobs = []
            for e in members:
                for img in episodes.frames[c][episodes.frame_start[e] : episodes.frame_start[e + 1]]:
                    blobs.append(encode_jpeg(img, quality))
            arrays[f"jpeg_{c}"] = np.frombuffer(b"".join(blobs), np.uint8)
            arrays[f"offsets_{c}"] = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
        for c in episodes.depth:  # lossless: 16-bit PNG
            blobs = [encode_png16(d) for e in members
                     for d in episodes.depth[c][episodes.frame_start[e] : episodes.frame_start[e + 1]]]
            arrays[f"png_depth_{c}"] = np.frombuffer(b"".join(blobs), np.uint8)
            arrays[f"offsets_depth_{c}"] = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
        take_frames = np.concatenate([np.arange(episodes.frame_start[e], episodes.frame_start[e + 1]) for e in members])
        take_rows = np.concatenate([np.arange(episodes.action_start[e], episodes.action_start[e + 1]) for e in members])
        arrays["proprio"] = episodes.proprio[take_frames]
        arrays["actions"] = episodes.actions[take_rows]
        arrays["frame_start"] = np.concatenate([[0], np.cumsum([episodes.frame_count(e) for e in members])]).astype(
            np.int64
        )
        arrays["action_start"] = np.concatenate([[0], np.cumsum(np.diff(episodes.action_start)[members])]).astype(
            np.int64
        )
        name = f"part-{s:03d}.npz"
        np.savez(folder / name, **arrays)
        parts.append(name)
    index = {
        "version": PACK_VERSION if episodes.depth else 1,  # a reader without depth still reads a pack without it
        "cameras": list(episodes.cameras),
        "depth_cameras": list(episodes.depth),
        "image_size": list(episodes.image_size),
        "dt": episodes.dt,
        "stride": episodes.stride,
        "jpeg_quality": quality,
        "parts": parts,
        "instruction_texts": texts,
        "instruction_width": int(width),
        "episodes": [{"instruction": i, **m} for i, m in zip(episodes.instructions, episodes.meta)],
    }
    (folder / "pack.json").write_text(json.dumps(index, indent=1))
    sizes = {p.name: p.stat().st_size for p in sorted(folder.iterdir())}
    return {
        "folder": str(folder),
        "bytes": sizes,
        "total_mib": round(sum(sizes.values()) / 2**20, 2),
        **episodes.summary(),
    }


def _decode_all(data: np.ndarray, offsets: np.ndarray, decode=None) -> np.ndarray:
    """Every JPEG (or, with `decode`, other image) of one shard's camera stream (bytes `data`, frame k at
    offsets[k]:offsets[k+1]), decoded on a thread per core (the decoders release the GIL). `data` is read from the
    npz once, not per frame."""
    from concurrent.futures import ThreadPoolExecutor

    decode = decode or _jpeg_decoder()
    spans = list(zip(offsets[:-1].tolist(), offsets[1:].tolist()))
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return np.stack(list(pool.map(lambda span: decode(data[span[0] : span[1]].tobytes()), spans)))


def _jpeg_decoder():
    """bytes -> uint8 [H, W, 3] RGB, with OpenCV, or Pillow where OpenCV is missing (a bare GPU box)."""
    try:
        import cv2

        return lambda data: cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    except ImportError:
        import io

        from PIL import Image

        return lambda data: np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _png16_decoder():
    """bytes -> uint16 [H, W] (a 16-bit greyscale PNG), with OpenCV, or Pillow where OpenCV is missing."""
    try:
        import cv2

        return lambda data: cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except ImportError:
        import io

        from PIL import Image

        return lambda data: np.asarray(Image.open(io.BytesIO(data)), dtype=np.uint16)
