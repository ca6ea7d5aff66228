"""The ONNX step checked against the torch runtime (`streamed_parity`). The graph is exported by
`runtime/onnx_graph.export_step`, and run by `runtime/backends/onnx.OnnxStep` (`PolicyRuntime(backend="onnx")`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mambavla.model.modeling_mambavla import MambaVLA
from mambavla.runtime.policy_runtime import PolicyRuntime

__all__ = ["streamed_parity"]


def streamed_parity(model: MambaVLA, onnx_path: str | Path, steps: int = 20, device: str = "cpu", seed: int = 0,
                    instruction: str = "pick up the red cube and place it on the blue plate",
                    cuda_graph: bool = False) -> dict:
    """Stream `steps` random observations through the torch runtime (fp32, CPU, eager) and the ONNX
    Runtime backend (its CUDA graphs with `cuda_graph`) from the same seed; -> the largest absolute action
    difference and the provider."""
    reference = PolicyRuntime(model, seed=seed)
    onnx = PolicyRuntime(model, device=device, seed=seed, backend="onnx", onnx_path=onnx_path, cuda_graph=cuda_graph)
    rng = np.random.default_rng(seed)
    h, w = model.config.image_size
    worst = 0.0
    for runtime in (reference, onnx):
        runtime.set_instruction(instruction)
    for _ in range(steps):
        observation = {"images": {c: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for c in model.config.cameras},
                       "proprio": rng.normal(size=model.config.proprio_dim).astype(np.float32)}
        if model.config.use_depth:
            observation["depth"] = {c: rng.integers(0, 3000, (h, w), dtype=np.uint16) for c in model.config.cameras}
        worst = max(worst, float(np.abs(reference.step(observation).actions - onnx.step(observation).actions).max()))
    return {"steps": steps, "max_abs_diff": worst, "provider": onnx.onnx_provider, "cuda_graph": onnx.onnx_cuda_graph,
            "graph_dtype": onnx.onnx_dtype, "reference": "torch fp32 cpu eager"}
