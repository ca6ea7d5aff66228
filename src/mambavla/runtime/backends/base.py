"""StepBackend: the interface every engine that runs a policy's control step implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch

from mambavla.model.modeling_mambavla import MambaVLA


class StepBackend(ABC):
    """One control step of a policy for `batch` streams on one engine, holding their recurrent context.

    The runtime around it keeps what happens once per instruction (the prefix state and task vector, scanned
    in torch on `device` in `dtype`), the noise generators and the input checks. Its verbs:

        start(state, task)        the context to continue from: the history (stream mode) or the instruction's
                                  state (window mode, the window emptied), per layer (B, ...), and the task
                                  vector (B, d); with `row`: that stream's alone, from batch-1 tensors
        step(images, proprio,     checked host inputs, images {camera: (B, C, H, W)} and proprio (B, P), and
             noise)               the flow's starting noise (B, H, A) on `device` -> actions (B, H, A) float32
                                  in robot units, on the host; the context moves on by one frame
        state()                   the context after the last step, per layer (B, ...)
        batched(streams)          a backend of the same kind for `streams` streams (`StreamBatch`)

    The class attributes below say what the step runs on; each backend sets its own."""

    batch: int = 1
    device = torch.device("cpu")  # torch's part of the step: the instruction prefix, the noise
    dtype = torch.float32
    resizes_on_device = False  # frames of another size are resized on the GPU (`AreaResize`), not on the host
    cuda_graph = False  # torch replays the whole step as one captured CUDA graph
    compile_mode: str | None = None  # torch.compile's mode for the captured step's parts
    onnx_provider: str | None = None  # ONNX Runtime's execution provider
    onnx_dtype: str | None = None  # the ONNX graph's dtype
    onnx_cuda_graph = False  # ONNX Runtime replays the step as CUDA graphs

    @property
    def precision(self) -> str:
        """What the step computes in: "float32", "bfloat16" or (the ONNX graph's) "float16"."""
        return str(self.dtype).removeprefix("torch.")

    @abstractmethod
    def start(self, state: list, task: torch.Tensor, row: int | None = None) -> None: ...

    @abstractmethod
    def step(self, images: dict[str, torch.Tensor], proprio: torch.Tensor, noise: torch.Tensor,
             timing: dict[str, float] | None = None) -> np.ndarray:
        """`timing`, where given, receives the backend's own entries (e.g. the eager step's split)."""

    @abstractmethod
    def state(self) -> list: ...

    @abstractmethod
    def batched(self, streams: int) -> StepBackend: ...


def empty_context(model: MambaVLA, streams: int, device: torch.device,
                  dtype: torch.dtype) -> tuple[list, torch.Tensor]:
    """A zero Mamba state per layer and a zero task vector for `streams` streams, to be overwritten row by row."""
    state = [layer.mixer.empty_state(streams, device, dtype) for layer in model.fusion.layers]
    return state, torch.zeros(streams, model.config.d_model, device=device, dtype=dtype)


def copy_row(held: list, held_task: torch.Tensor, state: list, task: torch.Tensor, row: int) -> None:
    """Write a batch-1 context (`state` per layer, `task`) into row `row` of a held batched one, in place."""
    for now, given in zip(held, state):
        for dst, src in zip(now, given):
            dst[row].copy_(src[0])
    held_task[row].copy_(task[0])
