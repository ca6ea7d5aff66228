"""The tiny policy can fit a handful of demonstrations and then reproduce their action chunks."""

import itertools

import numpy as np
import torch

from mambavla.model.config import preset
from mambavla.model.modeling_mambavla import MambaVLA
from mambavla.runtime import PolicyRuntime
from mambavla.train.loop import fit


def test_tiny_model_overfits_four_samples_and_reproduces_their_chunks():
    torch.manual_seed(0)
    config = preset("tiny").replace(history_mode="window", history_frames=1)  # one frame per sample
    model = MambaVLA(config)
    g = torch.Generator().manual_seed(0)
    h, w = config.image_size
    n = 4
    stats = model.normalizer
    low, span = stats.action_low, stats.action_range
    steps, samples, dims = torch.linspace(0, 3, config.chunk_size), torch.arange(1, n + 1), torch.arange(7)
    wave = torch.sin(steps[None, :, None] * samples[:, None, None] + dims[None, None, :])  # (n, chunk, 7)
    batch = {
        "instruction": ["lift the red cube", "lift the green cube", "push the blue cube left", "put red on blue"],
        "images": {c: torch.randint(0, 256, (n, 3, h, w), generator=g).float() for c in config.cameras},
        "proprio": torch.randn(n, config.proprio_dim, generator=g) * 0.05 + stats.proprio_mean,
        # smooth, distinct chunks inside the action range
        "actions": low + span * (0.5 + 0.35 * wave),
    }
    losses = fit(model, itertools.repeat(batch), steps=400, lr=3e-3, warmup=20, progress=False)
    first, last = float(np.mean(losses[:10])), float(np.mean(losses[-10:]))
    assert last <= first / 10, (first, last)

    runtime = PolicyRuntime(model, seed=0)
    errors = []
    for i in range(n):
        runtime.set_instruction(batch["instruction"][i])
        obs = {
            "images": {c: batch["images"][c][i].permute(1, 2, 0).to(torch.uint8).numpy() for c in config.cameras},
            "proprio": batch["proprio"][i].numpy(),
        }
        chunk = runtime.step(obs)
        errors.append(np.abs(chunk.actions - batch["actions"][i].numpy()) / span.numpy())
    # within 5% of each dimension's range, on average
    assert float(np.mean(errors)) < 0.05, [float(e.mean()) for e in errors]
