"""The normalisation std floor is relative to each dimension's scale: a constant dimension in the
training data must not turn sensor noise at run time into huge normalised inputs."""

from __future__ import annotations

import numpy as np
import torch

from mambavla.data.dataset import _stats
from mambavla.model.config import preset
from mambavla.model.normalization import Normalizer, floor_std


def test_dataset_stats_floor_std_relative_to_the_dimension_scale():
    x = np.zeros((100, 3))
    x[:, 0] = 0.04  # constant finger width
    x[:, 1] = 0.0  # constant zero
    x[:, 2] = np.linspace(0.2, 0.6, 100)  # a real, varying dimension keeps its std
    std = np.array(_stats(x)["std"])
    assert std[0] >= 0.01 * 0.04 and std[1] == 1.0
    assert abs(std[2] - x[:, 2].std()) < 1e-12


def test_normalizer_amplifies_noise_on_a_constant_dimension_by_at_most_a_hundred_over_its_scale():
    config = preset("tiny")
    p = config.proprio_dim
    stats = {
        "proprio": {
            "mean": [0.04] * p,
            "std": [1e-6] * p,
            "min": [0.04] * p,
            "max": [0.04] * p,
        },  # written with the old floor
        "actions": {
            "mean": [0.0] * config.action_dim,
            "std": [1.0] * config.action_dim,
            "min": [-1.0] * config.action_dim,
            "max": [1.0] * config.action_dim,
        },
    }
    norm = Normalizer(stats, config)
    noisy = torch.full((p,), 0.04 + 1e-4)  # 0.1 mm of sensor noise
    out = norm.proprio(noisy)
    assert out.abs().max() <= 0.251  # was 100 with the 1e-6 floor


def test_the_model_floors_std_by_the_rule_the_dataset_writes_statistics_with():
    rng = np.random.default_rng(0)
    x = np.concatenate([np.full((50, 1), 0.04), np.zeros((50, 1)), rng.normal(0.5, 1e-4, (50, 1))], axis=1)
    stats = _stats(x)
    floored = floor_std(x.std(0), x.mean(0), x.min(0), x.max(0))
    np.testing.assert_array_equal(floored, stats["std"])
    np.testing.assert_allclose(floored, [0.01 * 0.04, 1.0, 0.01 * 0.5], rtol=1e-3)  # all three floors at work
