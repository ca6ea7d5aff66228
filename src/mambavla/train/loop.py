"""The optimiser every trainer uses (AdamW, linear warmup then cosine decay), and `fit`, the minimal loop
over an iterator of batches (tests, notebooks). Run folders, EMA, validation and DDP: `train.trainer`."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from tqdm import tqdm

from mambavla.model.modeling_mambavla import MambaVLA


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, warmup: int, steps: int):
    """AdamW over the trainable parameters and its schedule: linear warmup, then cosine decay to 0 at `steps`."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(1, warmup)) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    return optimizer, schedule


def fit(model: MambaVLA, batches: Iterator[dict], steps: int, lr: float = 3e-4, weight_decay: float = 1e-4,
        warmup: int = 50, clip: float = 1.0, seed: int = 0, progress: bool = True,
        on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """Train `model` for `steps` batches drawn from `batches`; returns the loss of every step."""
    optimizer, schedule = make_optimizer(model, lr, weight_decay, warmup, steps)
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    model.train()
    losses = []
    bar = tqdm(range(steps), desc="train", disable=not progress, dynamic_ncols=True)
    for step in bar:
        loss = model(next(batches), generator=generator)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if on_step:
            on_step(step, losses[-1])
    model.eval()
    return losses
