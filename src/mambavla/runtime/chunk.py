"""ActionChunk: what one inference produces. numpy only, so nodes and tools can use it without torch."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mambavla.spaces import ACTION_MODES, ACTION_NAMES


@dataclass
class ActionChunk:
    actions: np.ndarray  # [H, A] float32, robot units (see mambavla.spaces)
    dt: float  # seconds between consecutive rows
    stamp: float  # seconds: time of the observation the chunk was computed from
    action_names: tuple[str, ...] = ACTION_NAMES
    action_mode: str = "absolute"  # "absolute" or "delta" (relative to the pose at `stamp`)
    timing_ms: dict[str, float] = field(default_factory=dict)  # vision, language, fusion, flow, total

    def __post_init__(self) -> None:
        self.actions = np.asarray(self.actions, dtype=np.float32)
        if self.actions.ndim != 2 or self.actions.shape[1] != len(self.action_names):
            raise ValueError(f"actions must be [H, {len(self.action_names)}], got {self.actions.shape}")
        if self.action_mode not in ACTION_MODES:
            raise ValueError(f"action_mode must be one of {ACTION_MODES}, got {self.action_mode!r}")
        if not self.dt > 0:
            raise ValueError(f"dt must be positive, got {self.dt}")

    @property
    def horizon(self) -> int:
        return int(self.actions.shape[0])

    def times(self) -> np.ndarray:
        """Absolute time of each row: stamp + k * dt, k = 0 .. H-1."""
        return self.stamp + self.dt * np.arange(self.horizon)
