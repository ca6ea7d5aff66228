"""`mambavla bench`: policy step latency (p50/p95/p99, vision/fusion/flow split) for the Mamba and
Transformer fusions, how it grows with streamed history length, the ONNX Runtime backend (with its
parity against the torch runtime), and `step_batch` throughput for B streams. Prints one JSON object.
On CUDA, `--compile` adds the CUDA-graph step with a torch.compile'd body beside the plain one, each
with its kernels per step.

Every time is what a caller sees: input checks and upload, the step, and the copy of the actions back.
`--camera-size` gives the steps camera frames to resize (on the GPU for torch on CUDA, with OpenCV on the host
for the CPU and ONNX Runtime), as policy_node does."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

HISTORY_SWEEP = (1, 16, 64, 256, 1024)
BATCH_SWEEP = {"cuda": (1, 2, 4, 8, 16, 32, 64), "cpu": (1, 2, 4, 8)}
INSTRUCTION = "pick up the red cube and place it on the blue plate"
OTHER_INSTRUCTION = "push the blue cube to the left"


def bench_instruction(runtime, text: str = INSTRUCTION) -> str:
    """`text`, unless the checkpoint's instruction gate refuses it (a checkpoint of other tasks): then its first
    training instruction. A benchmark times the step, whatever the instruction says."""
    gate = runtime.instruction_gate
    if gate is None:
        return text
    try:
        runtime.prepare_instruction(text)
    except ValueError:
        return gate.texts[0]
    return text


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help="policy step latency for both fusions and a history-length sweep (JSON)")
    p.add_argument("--preset", default="base", help="model preset (default: base)")
    p.add_argument("--checkpoint", help="benchmark a checkpoint instead of a preset (its fusion only)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--dtype", choices=("fp32", "bf16"), help="default: fp32 on cpu, bf16 on cuda")
    p.add_argument("--steps", type=int, help="timed steps per measurement (default: 30 cpu, 200 cuda)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--history", type=int, nargs="*", default=list(HISTORY_SWEEP),
                   help="history lengths (frames) to sweep")
    p.add_argument("--sweep-steps", type=int, help="timed steps per history length (default: 10 cpu, 50 cuda)")
    p.add_argument("--fusion", choices=("mamba", "transformer"), action="append", help="limit to these fusions")
    p.add_argument("--language", help="instruction encoder: 'minilm' (default) or a local transformers folder")
    p.add_argument("--threads", type=int, help="CPU threads for torch and ONNX Runtime (default: their own defaults)")
    p.add_argument("--no-onnx", action="store_true",
                   help="skip the ONNX Runtime row (default: run it where onnxruntime imports)")
    p.add_argument("--parity-steps", type=int, default=20,
                   help="streamed steps of the ONNX parity check (vs torch fp32 cpu)")
    p.add_argument("--batch", type=int, nargs="*",
                   help="step_batch stream counts (default: 1..64 cuda, 1..8 cpu; none: skip)")
    p.add_argument("--batch-steps", type=int, help="timed batch steps per stream count (default: 50 cuda, 5 cpu)")
    p.add_argument("--compile", nargs="?", const="default", metavar="MODE",
                   help="cuda: also time the CUDA-graph step with its body torch.compile'd (PolicyRuntime "
                        "compile_step; MODE 'default' when not given, or 'max-autotune-no-cudagraphs')")
    p.add_argument("--camera-size", type=frame_size, metavar="HxW",
                   help="frames of this size, which the runtime resizes to the policy's "
                        "(default: the policy's own size)")
    p.add_argument("--depth", action="store_true",
                   help="an RGB-D policy (use_depth): each camera's depth comes with its frame, uint16 mm at the "
                        "frame's size (a checkpoint's own config decides for --checkpoint)")
    p.add_argument("--json", action="store_true", help="JSON only (default also prints JSON, plus progress on stderr)")
    p.add_argument("--out", help="also write the JSON to this file")
    p.set_defaults(func=run)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _percentiles(values: list[float]) -> dict[str, float]:
    import numpy as np

    a = np.asarray(values)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)), "p99": float(np.percentile(a, 99)),
            "mean": float(a.mean()), "n": int(a.size)}


def frame_size(text: str) -> tuple[int, int]:
    """argparse type of --camera-size: "HxW" -> (H, W), each 1..MAX_IMAGE_SIDE."""
    from mambavla.data.images import MAX_IMAGE_SIDE

    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and 1 <= int(p) <= MAX_IMAGE_SIDE for p in parts):
        raise argparse.ArgumentTypeError(f"expected HxW with each side 1..{MAX_IMAGE_SIDE} px, e.g. 480x640; got "
                                         f"{text!r}")
    return int(parts[0]), int(parts[1])


def _observation(runtime, rng, camera_size: tuple[int, int] | None = None) -> dict:
    """Random frames at the policy's size or at `camera_size` (H, W), random proprio."""
    import numpy as np

    h, w = camera_size or runtime.image_size
    observation = {"images": {c: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for c in runtime.camera_names},
                   "proprio": rng.normal(size=runtime.proprio_dim).astype(np.float32), "stamp": 0.0}
    if runtime.config.use_depth:
        observation["depth"] = {c: rng.integers(300, 3000, (h, w), dtype=np.uint16) for c in runtime.camera_names}
    return observation


def _timed_steps(runtime, obs: dict, steps: int) -> dict:
    parts: dict[str, list[float]] = {"vision": [], "fusion": [], "flow": [], "total": []}
    for _ in range(steps):
        chunk = runtime.step(obs)
        for k in parts:
            parts[k].append(chunk.timing_ms.get(k, float("nan")))
    out = {"step_ms": _percentiles(parts["total"])}
    out["split_ms_p50"] = {k: _percentiles(v)["p50"] for k, v in parts.items() if k != "total"}
    return out


def run(args: argparse.Namespace) -> int:
    """The benchmark, leaving torch's grad mode and thread count as it found them (a caller in-process,
    e.g. a test, goes on training afterwards)."""
    import torch

    grad, threads = torch.is_grad_enabled(), torch.get_num_threads()
    try:
        return _run(args)
    finally:
        torch.set_grad_enabled(grad)
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from mambavla.runtime import PolicyRuntime
    from mambavla.runtime.policy_runtime import runtime_dtype

    cuda = args.device == "cuda"
    if args.compile and not cuda:
        print("bench: --compile compiles the CUDA-graph step: it needs --device cuda", file=sys.stderr)
        return 2
    dtype = runtime_dtype(args.dtype or "auto", args.device)  # auto: bf16 on cuda, else fp32
    steps = args.steps or (200 if cuda else 30)
    sweep_steps = args.sweep_steps or (50 if cuda else 10)
    fusions = args.fusion or ["mamba", "transformer"]
    if args.checkpoint:
        fusions = ["checkpoint"]
    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)

    def log(msg: str) -> None:
        if not args.json:
            print(msg, file=sys.stderr, flush=True)

    result = {
        "preset": None if args.checkpoint else args.preset, "checkpoint": args.checkpoint, "device": args.device,
        "device_name": torch.cuda.get_device_name() if cuda else _cpu_name(),
        "threads": torch.get_num_threads(), "dtype": str(dtype).replace("torch.", ""), "torch": torch.__version__,
        "camera_size": list(args.camera_size) if args.camera_size else None, "depth": args.depth,
        "fusions": {},
    }
    for fusion in fusions:
        overrides = {"fusion": fusion, "history_mode": "stream", **({"use_depth": True} if args.depth else {})}
        if args.language:
            overrides["language"] = args.language
        # eager first (gives the vision/fusion/flow split); then the captured CUDA graph (the Transformer's
        # with a static KV cache sized to what is timed: each step attends its whole capacity); with
        # --compile, the CUDA graph of the torch.compile'd body last. Sweeps run in the plain graph mode.
        modes = [("eager", False, False)] + ([("cuda_graph", True, False)] if cuda else [])
        if args.compile:
            modes.append(("cuda_graph_compiled", True, args.compile))
        sweep_mode = "cuda_graph" if cuda else "eager"
        entry: dict = {}
        first_chunks: dict = {}

        def make(graph: bool, frames: int, compile_step=False):
            if args.checkpoint:
                return PolicyRuntime.from_checkpoint(args.checkpoint, device=args.device, dtype=dtype, cuda_graph=graph,
                                                     kv_capacity_frames=frames, compile_step=compile_step)
            return PolicyRuntime.from_preset(args.preset, device=args.device, dtype=dtype, cuda_graph=graph,
                                             kv_capacity_frames=frames, compile_step=compile_step, **overrides)

        for mode, graph, compile_step in modes:
            runtime = make(graph, args.warmup + steps + 1, compile_step)
            if cuda:
                from mambavla.model.mamba2 import ssd_kernels

                result["mamba_ssm_kernels"] = ssd_kernels() is not None
            rng = np.random.default_rng(0)
            obs = _observation(runtime, rng, args.camera_size)
            text = bench_instruction(runtime)
            t0 = time.perf_counter()
            runtime.set_instruction(text)
            instruction_ms = (time.perf_counter() - t0) * 1e3
            t0 = time.perf_counter()
            first_chunks[mode] = runtime.step(obs).actions  # a graph mode captures (and compiles) here
            first_step_s = time.perf_counter() - t0
            for _ in range(args.warmup - 1):
                runtime.step(obs)
            log(f"[{fusion} {mode}] timing {steps} steps")
            timed = _timed_steps(runtime, obs, steps)
            entry[mode] = {"step_ms": timed["step_ms"], "first_step_s": first_step_s}
            if not graph:
                entry[mode]["split_ms_p50"] = timed["split_ms_p50"]
                entry["set_instruction_ms_first"] = instruction_ms
                entry["parameters"] = runtime.model.parameter_counts()
            else:
                entry[mode]["kernels_per_step"] = runtime.step_backend.graph.kernels_per_step()
            if compile_step:
                entry[mode]["compile_mode"] = runtime.compile_mode
                entry[mode]["first_chunk_max_abs_diff_vs_cuda_graph"] = float(
                    np.abs(first_chunks[mode] - first_chunks["cuda_graph"]).max())

            sweep = []
            if runtime.config.history_mode == "stream" and mode == sweep_mode:
                for history in sorted(args.history):
                    if graph and runtime.config.fusion == "transformer":  # a cache just large enough for this point
                        runtime = make(graph, history + sweep_steps + 1)
                        runtime.set_instruction(bench_instruction(runtime))
                    runtime.reset()
                    runtime.extend_history(obs, max(0, history - 1))
                    log(f"[{fusion} {mode}] history {history} frames")
                    m = _timed_steps(runtime, obs, sweep_steps)
                    tokens = history * runtime.config.tokens_per_frame
                    sweep.append({"history_frames": history, "tokens_in_context": tokens,
                                  **m["step_ms"], **({"split_ms_p50": m["split_ms_p50"]} if not graph else {})})
                entry["history_sweep"] = {"mode": mode, "points": sweep}
            if mode == sweep_mode and fusion in ("mamba", "checkpoint") and args.batch != []:
                result["step_batch"] = [_batch_sweep(runtime, args, cuda, log)]
            del runtime
            if cuda:
                torch.cuda.empty_cache()
        if fusion in ("mamba", "checkpoint") and not args.no_onnx:
            entry["onnx"] = _onnx_row(args, torch.float32, steps, cuda, log, result.setdefault("step_batch", []))
            if cuda:  # ORT's reduced precision, beside torch's bf16
                entry["onnx_fp16"] = _onnx_row(args, torch.float16, steps, cuda, log, None)
            torch_modes = ("eager", "cuda_graph", "cuda_graph_compiled")
            best = min(m["step_ms"]["p50"] for k, m in entry.items() if k in torch_modes)
            for name in ("onnx", "onnx_fp16"):
                for row in (entry.get(name, {}), entry.get(name, {}).get("cuda_graph", {})):
                    if "step_ms" in row:
                        row["p50_vs_best_torch"] = row["step_ms"]["p50"] / best
        result["fusions"][fusion] = entry

    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


def _runtime(args: argparse.Namespace, **options):
    from mambavla.runtime import PolicyRuntime

    if args.checkpoint:
        return PolicyRuntime.from_checkpoint(args.checkpoint, **options)
    overrides = {"fusion": "mamba", "history_mode": "stream", **({"language": args.language} if args.language else {})}
    return PolicyRuntime.from_preset(args.preset, **options, **overrides)


def _onnx_row(args: argparse.Namespace, graph_dtype, steps: int, cuda: bool, log, batch_rows: list | None) -> dict:
    """The step on ONNX Runtime (a `graph_dtype` graph: float32, or float16 on the CUDA provider): latency,
    parity with the torch runtime (fp32, CPU), and, with `batch_rows` and where ORT runs on the device
    benchmarked, its step_batch sweep. Missing packages or a failed export are reported, not raised."""
    import importlib
    import tempfile
    from pathlib import Path

    import numpy as np
    import torch

    missing = []
    for module in ("onnx", "onnxruntime"):
        try:
            importlib.import_module(module)
        except ImportError as err:
            missing.append(f"{module} ({err})")
    if missing:
        return {"skipped": f"not importable: {', '.join(missing)}"}
    import onnxruntime as ort

    from mambavla.runtime.backends.onnx import providers
    from mambavla.runtime.onnx_graph import export_step
    from mambavla.runtime.onnx_step import streamed_parity

    row: dict = {"onnxruntime": ort.__version__, "available_providers": ort.get_available_providers(),
                 "dtype": str(graph_dtype).replace("torch.", "")}
    if cuda and providers("cuda")[0] != "CUDAExecutionProvider":
        if graph_dtype != torch.float32:
            return {**row, "skipped": "the fp16 graph is for ONNX Runtime's CUDA provider, which this build lacks"}
        row["note"] = ("this onnxruntime build has no CUDA execution provider (onnxruntime-gpu): "
                       "the row is on the CPU provider")
    try:
        reference = _runtime(args, device="cpu", dtype=torch.float32, cuda_graph=False, threads=args.threads)
        path = Path(tempfile.mkdtemp(prefix="mambavla-bench-")) / "step.onnx"
        t0 = time.perf_counter()
        export_step(reference.model, path, graph_dtype)
        row["export_s"] = time.perf_counter() - t0
        runtime = _runtime(args, device=args.device, cuda_graph=False, backend="onnx", onnx_path=path,
                           threads=args.threads)
    except Exception as err:  # an exporter or runtime that cannot take this model is a result too
        row["error"] = f"{type(err).__name__}: {err}"
        return row
    row["provider"] = runtime.onnx_provider

    def timed(runtime, graphs: bool, into: dict) -> None:
        label = f"onnx {row['dtype']} {row['provider']}{' cuda graphs' if graphs else ''}"
        log(f"[{label}] parity over {args.parity_steps} steps")
        into["parity"] = streamed_parity(reference.model, path, steps=args.parity_steps, device=args.device,
                                         cuda_graph=graphs)
        obs = _observation(runtime, np.random.default_rng(0), args.camera_size)
        runtime.set_instruction(bench_instruction(runtime))
        for _ in range(max(args.warmup, 3)):  # ORT captures a graph id on its third step
            runtime.step(obs)
        log(f"[{label}] timing {steps} steps")
        into["step_ms"] = _timed_steps(runtime, obs, steps)["step_ms"]

    timed(runtime, False, row)
    on_cuda = row["provider"] == "CUDAExecutionProvider"
    best = runtime
    if on_cuda:  # ORT's best mode on the GPU: the step captured in CUDA graphs
        row["cuda_graph"] = {}
        try:
            graphed = _runtime(args, device=args.device, cuda_graph=True, backend="onnx", onnx_path=path,
                               threads=args.threads)
            timed(graphed, True, row["cuda_graph"])
            best = graphed
        except Exception as err:  # e.g. nodes ORT places off the CUDA provider cannot be captured
            row["cuda_graph"]["error"] = f"{type(err).__name__}: {err}"
    if batch_rows is not None and args.batch != [] and (not cuda or on_cuda):
        batch_rows.append(_batch_sweep(best, args, cuda, log))
    return row


def _batch_sweep(runtime, args: argparse.Namespace, cuda: bool, log) -> dict:
    """step_batch of B streams (each its own instruction and state) -> batch latency and stream-steps/s."""
    import numpy as np

    counts = args.batch or BATCH_SWEEP["cuda" if cuda else "cpu"]
    steps = args.batch_steps or (50 if cuda else 5)
    mode = ("onnx_cuda_graph" if runtime.onnx_cuda_graph else "onnx") if runtime.backend == "onnx" else (
        "cuda_graph" if runtime.cuda_graph else "eager")
    points = []
    for streams in counts:
        batch = runtime.stream_batch(streams)
        for i in range(streams):
            batch.set_instruction(i, bench_instruction(runtime, INSTRUCTION if i % 2 == 0 else OTHER_INSTRUCTION))
        rng = np.random.default_rng(streams)
        observations = [_observation(runtime, rng) for _ in range(streams)]
        for _ in range(max(1, min(args.warmup, 3))):
            batch.step_batch(observations)
        log(f"[step_batch {mode}] {streams} streams, {steps} steps")
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            batch.step_batch(observations)
            times.append((time.perf_counter() - t0) * 1e3)
        stats = _percentiles(times)
        points.append({"streams": streams, "batch_ms": stats, "stream_steps_per_s": streams / stats["p50"] * 1e3})
        del batch
    return {"backend": runtime.backend, "mode": mode,
            "device": str(runtime.device) if runtime.backend == "torch" else runtime.onnx_provider,
            "points": points}
