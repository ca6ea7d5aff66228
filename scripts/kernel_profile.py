"""Where the captured policy step's GPU work goes, on a CUDA machine. Prints JSON.

    MAMBAVLA_MINILM_PATH=/tmp/minilm python scripts/kernel_profile.py PRESET MODE [STEPS [CAMERA]]

MODE: `none` (the plain CUDA graph), a torch.compile mode (`PolicyRuntime(compile_step=MODE)`), or `onnx`
(the exported fp32 step under ONNX Runtime's CUDA provider with its CUDA graphs, `backend="onnx"`: needs
onnxruntime-gpu; profiled as one whole step, kernels by name), or `onnx-tf32` (the same with the CUDA
provider's TF32 matmuls, `use_tf32=1`, which the backend leaves off for its fp32 parity), or `onnx-fp16` (the
fp16 graph, `dtype=torch.float16`: scan and SSM state in fp32). Mamba fusion, stream mode, bf16 for torch,
untrained weights; run it after scripts/gpu_setup.sh. It times STEPS steps in the
caller's view (as `mambavla bench` does: upload, replay, actions back; CAMERA "HxW": frames of that size,
resized on the GPU), then profiles (`cuda_work`, CUPTI)
each region of the step once outside the graph (vision, the context scan, one flow step's velocity, the
flow steps' conditions), the whole body, and one graph replay: kernels by category and by name with their
GPU time, and the replay's summed kernel time against its wall time (CUDA events). Results:
docs/runtime.md and docs/benchmarks.md.
"""

from __future__ import annotations

import collections
import json
import re
import sys
import time

import numpy as np
import torch

from mambavla.commands.bench import INSTRUCTION, _observation, _timed_steps, frame_size
from mambavla.runtime import PolicyRuntime
from mambavla.runtime.policy_runtime import cuda_work

CATEGORIES = (  # first match wins: cuDNN's implicit-GEMM convolutions count as matmuls
    ("gemm", re.compile(r"gemm|cutlass|nvjet|sm90|sm80|splitK|cublas", re.I)),
    ("mamba_ssm_triton", re.compile(r"^_(chunk|state_passing|bmm)")),
    ("inductor_triton", re.compile(r"^triton_")),
    ("conv", re.compile(r"conv|cudnn|implicit|winograd", re.I)),
    ("norm", re.compile(r"norm", re.I)),
)


def category(name: str) -> str:
    for label, pattern in CATEGORIES:
        if pattern.search(name):
            return label
    return "other"


def profile(fn) -> dict:
    """Kernels of one call of fn: count, summed GPU time, by category, the 25 most frequent names."""
    kernels, _ = cuda_work(fn)
    by_category: dict[str, dict] = collections.defaultdict(lambda: {"n": 0, "us": 0.0})
    names: collections.Counter = collections.Counter()
    for event in kernels:
        entry = by_category[category(event.name)]
        entry["n"] += 1
        entry["us"] += event.time_range.elapsed_us()
        names[re.sub(r"_\d+$", "", event.name)[:90]] += 1
    return {"kernels": len(kernels), "gpu_us": round(sum(e.time_range.elapsed_us() for e in kernels), 1),
            "by_category": {k: {"n": v["n"], "us": round(v["us"], 1)} for k, v in sorted(by_category.items())},
            "top_names": names.most_common(25)}


def regions(graph) -> dict:
    """Each region of the step once, with the compiled versions the graph captured standing in."""
    model = graph.model
    steps = model.config.flow_steps
    times = ((steps - torch.arange(steps, device="cuda", dtype=torch.float32)) / steps)[:, None]
    for name, fn in graph._compiled.items():
        setattr(model, name, fn)
    try:
        tokens = model.encode_frame(graph.images, graph.proprio, graph.task)
        context = model.condition(tokens, graph.state)
        modulations = model.flow_modulations(times, graph.task)
        return {"vision": profile(lambda: model.encode_frame(graph.images, graph.proprio, graph.task)),
                "condition": profile(lambda: model.condition(tokens, graph.state)),
                "velocity_x1": profile(lambda: model.velocity(graph.noise, None, context, modulation=modulations[0])),
                "flow_modulations": profile(lambda: model.flow_modulations(times, graph.task))}
    finally:
        for name in graph._compiled:
            delattr(model, name)


def replay_wall_us(graph, replays: int = 50) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    walls = []
    for _ in range(replays):
        start.record()
        graph.graph.replay()
        end.record()
        torch.cuda.synchronize()
        walls.append(start.elapsed_time(end))
    return round(1e3 * float(np.median(walls)), 1)


def _built_and_timed(preset: str, steps: int, camera: str, **options) -> tuple:
    """The runtime (untrained, stream mode), its first step (capture, compile or ORT's graphs) and then
    `steps` steps timed in the caller's view -> (runtime, observation, JSON fields)."""
    started = time.perf_counter()
    runtime = PolicyRuntime.from_preset(preset, device="cuda", fusion="mamba", history_mode="stream", seed=0,
                                        noise_scale=0.0,
                                        **options)
    runtime.set_instruction(INSTRUCTION)
    obs = _observation(runtime, np.random.default_rng(0), frame_size(camera) if camera else None)
    runtime.step(obs)
    first_step_s = time.perf_counter() - started
    for _ in range(20):
        runtime.step(obs)
    timed = _timed_steps(runtime, obs, steps)
    return runtime, obs, {"preset": preset, "camera": camera or None, "device": torch.cuda.get_device_name(),
                          "first_step_s": round(first_step_s, 1), "step_ms": timed["step_ms"]}


ONNX_MODES = {"onnx": {}, "onnx-tf32": {"onnx_cuda_options": {"use_tf32": "1"}}, "onnx-fp16": {"dtype": torch.float16}}


def onnx_main(preset: str, steps: int, camera: str = "", mode: str = "onnx") -> dict:
    """The ONNX Runtime step: caller's-view timing, then one whole step's kernels (ORT replays its graphs)."""
    import onnxruntime

    runtime, obs, out = _built_and_timed(preset, steps, camera, backend="onnx", **ONNX_MODES[mode])
    return {**out, "mode": mode, "onnxruntime": onnxruntime.__version__, "provider": runtime.onnx_provider,
            "cuda_graphs": runtime.onnx_cuda_graph, "step": profile(lambda: runtime.step(obs))}


def main(preset: str, mode: str, steps: int, camera: str = "") -> dict:
    torch.set_grad_enabled(False)
    if mode in ONNX_MODES:
        return onnx_main(preset, steps, camera, mode)
    runtime, _, out = _built_and_timed(preset, steps, camera, dtype=torch.bfloat16,
                                       compile_step=False if mode == "none" else mode)
    graph = runtime._graph
    saved = graph._save()  # profiling runs the body: the static state is put back after each
    out.update(mode=mode, torch=torch.__version__, flow_steps=runtime.model.config.flow_steps, **regions(graph))
    graph._load(saved)
    out["body"] = profile(graph._step)
    graph._load(saved)
    replay = profile(graph.graph.replay)
    graph._load(saved)
    out["replay"] = {"kernels": replay["kernels"], "kernel_gpu_us": replay["gpu_us"],
                     "replay_wall_us_p50": replay_wall_us(graph),
                     "by_category": replay["by_category"]}
    graph._load(saved)
    return out


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4, 5):
        sys.exit(__doc__)
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 200
    print(json.dumps(main(sys.argv[1], sys.argv[2], steps, *sys.argv[4:]), indent=1))
