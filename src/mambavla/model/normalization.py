"""Normalisation of proprio (mean/std) and actions (min/max to [-1, 1]) from dataset statistics.

Statistics are the JSON dict `mambavla.data` computes:
`{"proprio": {"mean", "std", "min", "max"}, "actions": {"mean", "std", "min", "max"}}` (lists).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from mambavla.model.config import MambaVLAConfig

_EPS = 1e-6


def placeholder_stats(config: MambaVLAConfig) -> dict:
    """Statistics for an untrained policy: a nominal FR3 tabletop workspace (positions in m around
    the base, orientations near the gripper-down reference, gripper 0..1). Replaced by real
    statistics as soon as a policy is trained on data."""
    if config.proprio_dim != 8 or config.action_dim != 7:
        zeros_p, zeros_a = [0.0] * config.proprio_dim, [0.0] * config.action_dim
        return {
            "proprio": {
                "mean": zeros_p,
                "std": [1.0] * config.proprio_dim,
                "min": [-1.0] * config.proprio_dim,
                "max": [1.0] * config.proprio_dim,
            },
            "actions": {
                "mean": zeros_a,
                "std": [1.0] * config.action_dim,
                "min": [-1.0] * config.action_dim,
                "max": [1.0] * config.action_dim,
            },
        }
    lo = [0.30, -0.25, 0.05, -0.3, -0.3, -0.6, 0.0]
    hi = [0.70, 0.25, 0.45, 0.3, 0.3, 0.6, 1.0]
    return {
        "proprio": {
            "mean": [0.5, 0.0, 0.25, 0.0, 0.0, 0.0, 0.02, 0.02],
            "std": [0.12, 0.15, 0.12, 0.2, 0.2, 0.3, 0.015, 0.015],
            "min": lo[:6] + [0.0, 0.0],
            "max": hi[:6] + [0.04, 0.04],
        },
        "actions": {
            "mean": [(a + b) / 2 for a, b in zip(lo, hi)],
            "std": [(b - a) / 4 for a, b in zip(lo, hi)],
            "min": lo,
            "max": hi,
        },
    }


def validate_stats(stats: dict, config: MambaVLAConfig) -> dict:
    for key, dim in (("proprio", config.proprio_dim), ("actions", config.action_dim)):
        if key not in stats:
            raise ValueError(f"normalisation stats lack {key!r}")
        for field in ("mean", "std", "min", "max"):
            values = np.asarray(stats[key].get(field, []), dtype=np.float64)
            if values.shape != (dim,) or not np.isfinite(values).all():
                raise ValueError(f"stats[{key!r}][{field!r}] must be {dim} finite numbers, got {values.tolist()}")
    return stats


class Normalizer(nn.Module):
    def __init__(self, stats: dict, config: MambaVLAConfig):
        super().__init__()
        self.stats = validate_stats(stats, config)

        def buffer(key: str, field: str) -> Tensor:
            return torch.tensor(stats[key][field], dtype=torch.float32)

        self.register_buffer("proprio_mean", buffer("proprio", "mean"), persistent=False)
        # stats written with a 1e-6 floor must not amplify noise on a constant dimension by 1e6
        std = floor_std(*(np.asarray(stats["proprio"][f], np.float64) for f in ("std", "mean", "min", "max")))
        self.register_buffer("proprio_std", torch.tensor(std, dtype=torch.float32).clamp_min(_EPS), persistent=False)
        self.register_buffer("action_low", buffer("actions", "min"), persistent=False)
        self.register_buffer(
            "action_range", (buffer("actions", "max") - buffer("actions", "min")).clamp_min(_EPS), persistent=False
        )

    def proprio(self, x: Tensor) -> Tensor:
        return (x - self.proprio_mean) / self.proprio_std

    def actions(self, a: Tensor, columns: slice | None = None) -> Tensor:
        """Robot units -> [-1, 1] over the data's range; `columns`: only those action columns (a[..., k])."""
        low, span = (
            (self.action_low, self.action_range)
            if columns is None
            else (self.action_low[columns], self.action_range[columns])
        )
        return 2.0 * (a - low) / span - 1.0

    def unnormalize_actions(self, a: Tensor, columns: slice | None = None) -> Tensor:
        low, span = (
            (self.action_low, self.action_range)
            if columns is None
            else (self.action_low[columns], self.action_range[columns])
        )
        return (a + 1.0) * 0.5 * span + low


def floor_std(std: np.ndarray, mean: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """std floored at 1% of each dimension's scale (|mean| or range), 1 where that is 0: the rule data/dataset.py's
    `_stats` writes statistics with."""
    scale = np.maximum(np.abs(mean), hi - lo)
    return np.where(scale > 0, np.maximum(std, 0.01 * scale), 1.0)


def merge_stats(checkpoint: dict, data: dict) -> dict:
    """Statistics for fine-tuning a checkpoint on new data: each range the union of both (the action scale keeps the
    checkpoint's ranges and covers the new data), each mean and std those of an equal mixture of the two."""
    merged = {}
    for key in ("proprio", "actions"):
        a, b = (
            {f: np.asarray(s[key][f], dtype=np.float64) for f in ("mean", "std", "min", "max")}
            for s in (checkpoint, data)
        )
        # a constant dimension's std is written as 1 (a placeholder, not a spread): it adds no spread to the mixture
        spread = [np.where(side["max"] > side["min"], side["std"], 0.0) for side in (a, b)]
        mean, lo, hi = (a["mean"] + b["mean"]) / 2, np.minimum(a["min"], b["min"]), np.maximum(a["max"], b["max"])
        mixed = np.sqrt((spread[0] ** 2 + spread[1] ** 2) / 2 + ((a["mean"] - b["mean"]) / 2) ** 2)
        std = floor_std(mixed, mean, lo, hi)
        merged[key] = {"mean": mean.tolist(), "std": std.tolist(), "min": lo.tolist(), "max": hi.tolist()}
    return merged
