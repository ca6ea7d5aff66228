"""PolicyRuntime: observations in, action chunks out, with the recurrent state kept between steps.

This is the one object the ROS nodes and the CLI use to run a policy; it owns input validation,
the cached states (instruction prefix, streaming history or a window of frames) and timing.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path

import numpy as np
import torch

from mambavla.model.checkpoint import load_checkpoint
from mambavla.model.config import preset
from mambavla.model.modeling_mambavla import MambaVLA
from mambavla.runtime.chunk import ActionChunk


class PolicyRuntime:
    def __init__(self, model: MambaVLA, device: str | torch.device = "cpu", seed: int = 0, dtype: torch.dtype | None = None):
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but CUDA is not available")
        self.dtype = dtype or torch.float32
        self.model = model.to(self.device, self.dtype).eval()
        self.config = model.config
        self.seed = seed
        self._generator = torch.Generator(device=self.device)
        self._instruction: str | None = None
        self._prefix_state: list | None = None
        self._state: list | None = None  # context state after the last frame (stream mode)
        self._window: deque = deque(maxlen=self.config.history_frames)  # frame tokens (window mode)
        self.frames_seen = 0
        self.reset()

    # ---- construction ------------------------------------------------------------------------

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", seed: int = 0, dtype: torch.dtype | None = None) -> PolicyRuntime:
        return cls(load_checkpoint(path), device=device, seed=seed, dtype=dtype)

    @classmethod
    def from_preset(cls, name: str, device: str = "cpu", seed: int = 0, dtype: torch.dtype | None = None, **overrides) -> PolicyRuntime:
        torch.manual_seed(seed)  # untrained weights are reproducible from the seed
        config = preset(name).replace(**overrides) if overrides else preset(name)
        return cls(MambaVLA(config), device=device, seed=seed, dtype=dtype)

    # ---- what callers need to know --------------------------------------------------------------

    @property
    def camera_names(self) -> tuple[str, ...]:
        return self.config.cameras

    @property
    def image_size(self) -> tuple[int, int]:
        return self.config.image_size

    @property
    def proprio_dim(self) -> int:
        return self.config.proprio_dim

    @property
    def action_names(self) -> tuple[str, ...]:
        return self.config.action_names

    @property
    def action_mode(self) -> str:
        return self.config.action_mode

    @property
    def dt(self) -> float:
        return self.config.dt

    @property
    def chunk_size(self) -> int:
        return self.config.chunk_size

    @property
    def instruction(self) -> str | None:
        return self._instruction

    # ---- verbs ---------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the observation history (keeps the instruction); restart the noise sequence."""
        self._generator.manual_seed(self.seed)
        self._state = self._prefix_state
        self._window.clear()
        self.frames_seen = 0

    @torch.no_grad()
    def set_instruction(self, text: str) -> None:
        if not isinstance(text, str) or not text.strip():
            raise ValueError("instruction: expected a non-empty string")
        text = " ".join(text.split())
        tokens, _ = self.model.encode_instruction([text])
        self._prefix_state = self.model.condition(tokens)  # level 1: scanned once per instruction
        self._instruction = text
        self.reset()

    @torch.no_grad()
    def step(self, observation: dict) -> ActionChunk:
        """observation: {"images": {camera: uint8 [H, W, 3]}, "proprio": float32 [P], "stamp": s (optional),
        "depth": {camera: float32 [H, W] metres} (depth checkpoints only)} -> ActionChunk."""
        if self._prefix_state is None:
            raise ValueError("instruction: no instruction set; call set_instruction() before step()")
        images, proprio, stamp = self._validate(observation)
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        t0 = time.perf_counter()
        tokens = self.model.encode_frame(images, proprio)  # (1, tokens_per_frame, d)
        sync()
        t1 = time.perf_counter()
        if self.config.history_mode == "stream":  # level 2: continue from the cached state
            self._state = self.model.condition(tokens, self._state)
            context = self._state
        else:  # re-scan the last T frames from the instruction prefix state
            self._window.append(tokens)
            context = self.model.condition(torch.cat(list(self._window), dim=1), self._prefix_state)
        sync()
        t2 = time.perf_counter()
        noise = torch.randn((1, self.config.chunk_size, self.config.action_dim), generator=self._generator, device=self.device, dtype=self.dtype)
        actions = self.model.normalizer.unnormalize_actions(self.model.sample_actions(context, noise).float())  # level 3
        actions = actions[0].cpu().numpy()
        t3 = time.perf_counter()
        self.frames_seen += 1
        timing = {"vision": (t1 - t0) * 1e3, "fusion": (t2 - t1) * 1e3, "flow": (t3 - t2) * 1e3, "total": (t3 - t0) * 1e3}
        return ActionChunk(actions=actions, dt=self.config.dt, stamp=stamp, action_names=self.config.action_names,
                           action_mode=self.config.action_mode, timing_ms=timing)

    # ---- input checks ----------------------------------------------------------------------------

    def _validate(self, observation: dict) -> tuple[dict[str, torch.Tensor], torch.Tensor, float]:
        if not isinstance(observation, dict):
            raise ValueError(f"observation: expected a dict with 'images' and 'proprio', got {type(observation).__name__}")
        images = observation.get("images")
        if not isinstance(images, dict):
            raise ValueError("images: expected a dict {camera_name: uint8 array [H, W, 3]}")
        expected = set(self.config.cameras)
        missing, unknown = expected - set(images), set(images) - expected
        if missing:
            raise ValueError(f"images: missing camera(s) {sorted(missing)}; this policy expects {sorted(expected)}")
        if unknown:
            raise ValueError(f"images: unknown camera(s) {sorted(unknown)}; this policy expects {sorted(expected)}")
        h, w = self.config.image_size
        tensors = {}
        for cam in self.config.cameras:
            img = images[cam]
            if not isinstance(img, np.ndarray):
                raise ValueError(f"images[{cam!r}]: expected a numpy array, got {type(img).__name__}")
            if img.dtype != np.uint8:
                raise ValueError(f"images[{cam!r}]: expected dtype uint8, got {img.dtype}")
            if img.shape != (h, w, 3):
                raise ValueError(f"images[{cam!r}]: expected shape ({h}, {w}, 3), got {img.shape}")
            chw = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float()
            if self.config.use_depth:
                chw = torch.cat([chw, self._depth_channel(observation, cam, h, w)], dim=0)
            tensors[cam] = chw[None].to(self.device)

        proprio = observation.get("proprio")
        if proprio is None:
            raise ValueError(f"proprio: missing; expected float32 array [{self.config.proprio_dim}]")
        proprio = np.asarray(proprio)
        if proprio.shape != (self.config.proprio_dim,):
            raise ValueError(f"proprio: expected shape ({self.config.proprio_dim},), got {proprio.shape}")
        if not np.issubdtype(proprio.dtype, np.floating):
            raise ValueError(f"proprio: expected a float array, got dtype {proprio.dtype}")
        if not np.isfinite(proprio).all():
            raise ValueError(f"proprio: contains NaN or Inf: {proprio.tolist()}")
        stamp = observation.get("stamp", time.time())
        if not isinstance(stamp, (int, float)) or not np.isfinite(stamp):
            raise ValueError(f"stamp: expected finite seconds, got {stamp!r}")
        return tensors, torch.from_numpy(proprio.astype(np.float32))[None].to(self.device), float(stamp)

    def _depth_channel(self, observation: dict, cam: str, h: int, w: int) -> torch.Tensor:
        depth = (observation.get("depth") or {}).get(cam)
        if depth is None:
            raise ValueError(f"depth[{cam!r}]: this policy uses depth; expected float32 [{h}, {w}] metres")
        depth = np.asarray(depth)
        if depth.shape != (h, w) or not np.isfinite(depth).all():
            raise ValueError(f"depth[{cam!r}]: expected finite float [{h}, {w}], got shape {depth.shape}")
        # scaled so that depth_scale metres maps to 255, the range of the colour channels
        return torch.from_numpy(np.clip(depth / self.config.depth_scale, 0, 1).astype(np.float32) * 255.0)[None]
