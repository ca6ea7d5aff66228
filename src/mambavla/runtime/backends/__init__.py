"""Step backends: the engines that run a policy's control step behind the one interface `StepBackend`.

    backend  device        cuda_graph   runs the step                                        file
    torch    cpu, cuda     off          op by op                                             eager.py
    torch    cuda          on           as one captured CUDA graph (compiled: compile_step)  cuda_graph.py
    onnx     cpu, cuda     ORT's own    in ONNX Runtime, from the exported graph             onnx.py

`open_backend` is the one place a runtime's options choose a backend and are checked against it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mambavla.model.modeling_mambavla import MambaVLA
from mambavla.runtime.backends.base import StepBackend
from mambavla.runtime.backends.cuda_graph import KV_CAPACITY_FRAMES, GraphStep, compile_mode
from mambavla.runtime.backends.eager import EagerStep
from mambavla.runtime.backends.onnx import OnnxBackend

__all__ = ["BACKENDS", "KV_CAPACITY_FRAMES", "PRECISIONS", "StepBackend", "check_precision", "open_backend"]

BACKENDS = ("torch", "onnx")
# what each backend computes in: torch's reduced precision is bf16 (as the policies train under autocast), the ONNX
# graph's fp16 (ONNX Runtime's CUDA provider runs fp16 on tensor cores; its bf16 coverage is partial)
PRECISIONS = {"torch": (torch.float32, torch.bfloat16), "onnx": (torch.float32, torch.float16)}


def check_precision(backend: str, dtype: torch.dtype, name: str | None = None) -> None:
    """Refuse a dtype `backend` does not run (`PRECISIONS`); `name`: how the caller spelt it (e.g. "fp16")."""
    if dtype not in PRECISIONS.get(backend, ()):
        raise ValueError(f"dtype {name or dtype} is not a precision of the {backend} backend: the torch backend runs "
                         "float32 or bfloat16, the onnx backend a float32 or float16 graph")


def open_backend(model: MambaVLA, device: str | torch.device = "cpu", backend: str = "torch", *,
                 dtype: torch.dtype | None = None, cuda_graph: bool | None = None, compile_step: bool | str = False,
                 kv_capacity_frames: int = KV_CAPACITY_FRAMES, onnx_path: str | Path | None = None,
                 threads: int | None = None, onnx_cuda_options: dict | None = None) -> StepBackend:
    """The backend for `PolicyRuntime`'s options (its docstring says what each means). Options of another
    backend than the one chosen are refused, not dropped."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'torch' or 'onnx', got {backend!r}")
    device = torch.device(device)
    mode = compile_mode(compile_step)
    if kv_capacity_frames < 1:
        raise ValueError(f"kv_capacity_frames must be >= 1, got {kv_capacity_frames}")
    if dtype is not None:  # None: float32, or for backend 'onnx' the given graph's own
        check_precision(backend, dtype)
    if backend == "onnx":
        if mode is not None:
            raise _compile_needs_graph(backend, device)
        return OnnxBackend.open(model, device, onnx_path=onnx_path, dtype=dtype, cuda_graph=cuda_graph,
                                threads=threads, cuda_options=onnx_cuda_options)
    if onnx_cuda_options:
        raise ValueError("onnx_cuda_options are ONNX Runtime's: they need backend 'onnx'")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    dtype = dtype or torch.float32
    if cuda_graph is None:  # the Transformer's captured step is opt-in: its StaticKVCache caps the history
        cuda_graph = device.type == "cuda" and model.config.fusion == "mamba"
    if cuda_graph:
        return GraphStep(model, device, dtype, kv_capacity_frames=kv_capacity_frames, compile_mode=mode)
    if mode is not None:
        raise _compile_needs_graph(backend, device)
    return EagerStep(model, device, dtype)


def _compile_needs_graph(backend: str, device: torch.device) -> ValueError:
    off = ", cuda_graph off" if device.type == "cuda" and backend == "torch" else ""
    return ValueError(f"compile_step compiles the captured CUDA-graph step: it needs backend 'torch' on device "
                      f"'cuda' with cuda_graph on (got backend {backend!r}, device {device.type!r}{off})")
