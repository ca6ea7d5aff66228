"""Train a MambaVLA policy on recorded episodes and write a checkpoint folder.

The dataset (`mambavla.data.EpisodeDataset`) gives samples at the policy rate with the future action
chunk; this module batches them, fits the policy with `train.loop.fit`, and saves weights, config,
the dataset's normalisation statistics, a JSON summary and a loss-curve picture.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mambavla.data import EpisodeDataset, compute_norm_stats
from mambavla.data.preview import write_png
from mambavla.model.checkpoint import save_checkpoint
from mambavla.model.config import MambaVLAConfig, preset
from mambavla.model.modeling_mambavla import MambaVLA
from mambavla.train.loop import fit


@dataclass
class TrainSettings:
    steps: int = 2000
    batch_size: int = 32
    lr: float = 3e-4
    warmup: int = 100
    seed: int = 0
    device: str = "cpu"
    save_every: int = 500


def config_for_dataset(base: MambaVLAConfig, dataset: EpisodeDataset, history_frames: int) -> MambaVLAConfig:
    """The preset, adapted to what the episodes contain (cameras, image size, rate, action mode) and to
    how it is trained: on windows of `history_frames` frames, so it runs in window mode."""
    return base.replace(cameras=tuple(dataset.cameras), image_size=tuple(dataset.image_size), dt=dataset.dt,
                        chunk_size=dataset.chunk, action_mode=dataset.action_mode,
                        history_mode="window", history_frames=history_frames)


def batches(dataset: EpisodeDataset, batch_size: int, history_frames: int, device: torch.device, seed: int):
    """Endless shuffled batches in the layout `MambaVLA.loss` takes: the last `history_frames` frames up to
    each sample (the episode's first frame repeated before its start), instruction, future chunk."""
    rng = np.random.default_rng(seed)
    back = np.arange(1 - history_frames, 1)
    while True:
        for order in np.array_split(rng.permutation(len(dataset)), max(1, len(dataset) // batch_size)):
            images = {c: [] for c in dataset.cameras}
            proprio, actions, pads, instructions = [], [], [], []
            for index in order[:batch_size]:
                e, t = dataset.locate(int(index))
                episode = dataset.episodes[e]
                frames = np.maximum(t + back, 0)
                for c in dataset.cameras:
                    images[c].append(np.asarray(episode.images[c][frames]))  # (K, H, W, 3)
                proprio.append(np.asarray(episode.proprio[frames], dtype=np.float32))
                chunk, pad = dataset.action_chunk(e, t)
                actions.append(chunk)
                pads.append(pad)
                instructions.append(episode.instruction)
            yield {
                "instruction": instructions,
                "images": {c: torch.from_numpy(np.stack(v)).permute(0, 1, 4, 2, 3).to(device, torch.float32) for c, v in images.items()},
                "proprio": torch.from_numpy(np.stack(proprio)).to(device),  # (B, K, P)
                "actions": torch.from_numpy(np.stack(actions)).to(device),
                "action_pad": torch.from_numpy(np.stack(pads)).to(device),
            }


def loss_curve(losses: list[float], height: int = 240, width: int = 640) -> np.ndarray:
    """A log-scale loss curve as an RGB image (white background, one dark line, grid at decades)."""
    img = np.full((height, width, 3), 255, np.uint8)
    values = np.log10(np.maximum(np.asarray(losses, dtype=np.float64), 1e-8))
    window = max(1, len(values) // 100)
    smooth = np.convolve(values, np.ones(window) / window, mode="valid")
    lo, hi = np.floor(smooth.min()), np.ceil(smooth.max()) + 1e-9
    for decade in np.arange(lo, hi + 1):
        y = int((hi - decade) / (hi - lo) * (height - 1))
        if 0 <= y < height:
            img[y, :] = (220, 220, 220)
    xs = np.linspace(0, width - 1, len(smooth)).astype(int)
    ys = ((hi - smooth) / (hi - lo) * (height - 1)).astype(int)
    for x0, y0, x1, y1 in zip(xs[:-1], ys[:-1], xs[1:], ys[1:]):
        n = max(abs(x1 - x0), abs(y1 - y0)) + 1
        img[np.linspace(y0, y1, n).astype(int), np.linspace(x0, x1, n).astype(int)] = (20, 60, 160)
    return img


def train(data: list[str], out: str | Path, preset_name: str = "base", action_mode: str = "absolute",
          settings: TrainSettings | None = None, overrides: dict | None = None, progress: bool = True,
          history_frames: int = 1) -> dict:
    settings = settings or TrainSettings()
    out = Path(out)
    base = preset(preset_name).replace(**(overrides or {}))
    dataset = EpisodeDataset(data, chunk=base.chunk_size, action_mode=action_mode, successful_only=True, verbose=progress)
    config = config_for_dataset(base, dataset, history_frames)
    torch.manual_seed(settings.seed)
    device = torch.device(settings.device)
    stats = compute_norm_stats(dataset)
    model = MambaVLA(config, stats).to(device)

    started = time.time()

    def on_step(step: int, loss: float) -> None:
        if settings.save_every and (step + 1) % settings.save_every == 0 and step + 1 < settings.steps:
            save_checkpoint(model, out, meta={"steps_done": step + 1, "partial": True})

    losses = fit(model, batches(dataset, settings.batch_size, history_frames, device, settings.seed), settings.steps, lr=settings.lr,
                 warmup=settings.warmup, seed=settings.seed, progress=progress, on_step=on_step)
    seconds = time.time() - started
    window = max(1, min(100, settings.steps // 10))
    summary = {
        "checkpoint": str(out),
        "preset": preset_name,
        "fusion": config.fusion,
        "data": [str(d) for d in data],
        "episodes": len(dataset.episodes),
        "skipped_episodes": len(dataset.skipped),
        "samples": len(dataset),
        "action_mode": action_mode,
        "history_frames": history_frames,
        "steps": settings.steps,
        "batch_size": settings.batch_size,
        "device": str(device),
        "seconds": round(seconds, 1),
        "steps_per_second": round(settings.steps / max(seconds, 1e-9), 2),
        "loss_first": float(np.mean(losses[:window])),
        "loss_last": float(np.mean(losses[-window:])),
        "loss_window_steps": window,
        "parameters": model.parameter_counts(),
    }
    save_checkpoint(model, out, meta={**summary, "partial": False})
    (out / "train_summary.json").write_text(json.dumps({**summary, "losses": losses}, indent=2))
    write_png(out / "loss.png", loss_curve(losses))
    return summary
