"""EagerStep: the step op by op in torch, on the CPU or a GPU. The readable path, and the reference the
captured and ONNX steps are checked against."""

from __future__ import annotations

import time
from collections import deque

import numpy as np
import torch

from mambavla.model.modeling_mambavla import MambaVLA
from mambavla.runtime.backends.base import StepBackend, copy_row, empty_context
from mambavla.runtime.upload import DeviceInputs


class EagerStep(StepBackend):
    """Stream mode continues the state frame after frame; window mode re-scans the last T frames from the
    instruction's state every step, repeating the first frame until T have been seen (as training pads windows
    at an episode's start). On CUDA the inputs go up through pinned buffers and frames of another size are
    resized there (`DeviceInputs`)."""

    def __init__(self, model: MambaVLA, device: torch.device, dtype: torch.dtype, batch: int = 1):
        self.model, self.device, self.dtype, self.batch = model, torch.device(device), dtype, batch
        self.stream = model.config.history_mode == "stream"
        self.resizes_on_device = self.device.type == "cuda" and not model.config.use_depth
        self.inputs = DeviceInputs(self.device, model.config.image_size)
        self._state: list | None = None  # the history (stream) or the instruction's state (window)
        self._task: torch.Tensor | None = None  # (B, d)
        self._window: deque = deque(maxlen=model.config.history_frames)  # frame tokens (window mode)

    @property
    def upload(self):
        """The pinned upload buffers (`PinnedUpload`) on CUDA, else None."""
        return self.inputs.upload

    def start(self, state: list, task: torch.Tensor, row: int | None = None) -> None:
        if row is not None:
            copy_row(self._state, self._task, state, task, row)
            return
        self._state, self._task = state, task
        self._window.clear()

    def step(self, images: dict[str, torch.Tensor], proprio: torch.Tensor, noise: torch.Tensor,
             timing: dict[str, float] | None = None) -> np.ndarray:
        """`timing`: vision, fusion and flow in ms (on CUDA synchronised after each, only when asked)."""
        cuda = timing is not None and self.device.type == "cuda"
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        t0 = time.perf_counter()
        images, proprio = self.inputs(images, proprio)
        tokens = self.model.encode_frame(images, proprio, self._task)  # (B, tokens_per_frame, d)
        sync()
        t1 = time.perf_counter()
        if self.stream:  # level 2: continue from the cached state
            self._state = self.model.condition(tokens, self._state)
            context = self._state
        else:  # re-scan the last T frames from the instruction's state
            self._window.append(tokens)
            padding = [self._window[0]] * (self.model.config.history_frames - len(self._window))
            context = self.model.condition(torch.cat(padding + list(self._window), dim=1), self._state)
        sync()
        t2 = time.perf_counter()
        sampled = self.model.sample_actions(context, noise, task=self._task)  # level 3: (B, H, A) normalised
        actions = self.model.normalizer.unnormalize_actions(sampled.float()).cpu().numpy()
        if timing is not None:
            timing.update(vision=(t1 - t0) * 1e3, fusion=(t2 - t1) * 1e3, flow=(time.perf_counter() - t2) * 1e3)
        return actions

    def state(self) -> list:
        return self._state

    def batched(self, streams: int) -> EagerStep:
        other = EagerStep(self.model, self.device, self.dtype, batch=streams)
        other.start(*empty_context(self.model, streams, self.device, self.dtype))
        return other
