"""`mambavla bench`: policy step latency (p50/p95/p99, vision/fusion/flow split) for the Mamba and
Transformer fusions, and how it grows with streamed history length. Prints one JSON object."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

HISTORY_SWEEP = (1, 16, 64, 256, 1024)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help="policy step latency for both fusions and a history-length sweep (JSON)")
    p.add_argument("--preset", default="base", help="model preset (default: base)")
    p.add_argument("--checkpoint", help="benchmark a checkpoint instead of a preset (its fusion only)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--dtype", choices=("fp32", "bf16"), help="default: fp32 on cpu, bf16 on cuda")
    p.add_argument("--steps", type=int, help="timed steps per measurement (default: 30 cpu, 200 cuda)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--history", type=int, nargs="*", default=list(HISTORY_SWEEP), help="history lengths (frames) to sweep")
    p.add_argument("--sweep-steps", type=int, help="timed steps per history length (default: 10 cpu, 50 cuda)")
    p.add_argument("--fusion", choices=("mamba", "transformer"), action="append", help="limit to these fusions")
    p.add_argument("--language", help="instruction encoder: 'minilm' (default) or a local transformers folder")
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


def _observation(runtime, rng) -> dict:
    import numpy as np

    h, w = runtime.image_size
    return {"images": {c: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for c in runtime.camera_names},
            "proprio": rng.normal(size=runtime.proprio_dim).astype(np.float32), "stamp": 0.0}


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
    import numpy as np
    import torch

    from mambavla.runtime import PolicyRuntime

    cuda = args.device == "cuda"
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype or ("bf16" if cuda else "fp32")]
    steps = args.steps or (200 if cuda else 30)
    sweep_steps = args.sweep_steps or (50 if cuda else 10)
    fusions = args.fusion or ["mamba", "transformer"]
    if args.checkpoint:
        fusions = ["checkpoint"]
    torch.set_grad_enabled(False)

    def log(msg: str) -> None:
        if not args.json:
            print(msg, file=sys.stderr, flush=True)

    result = {
        "preset": None if args.checkpoint else args.preset, "checkpoint": args.checkpoint, "device": args.device,
        "device_name": torch.cuda.get_device_name() if cuda else _cpu_name(),
        "threads": torch.get_num_threads(), "dtype": str(dtype).replace("torch.", ""), "torch": torch.__version__,
        "fusions": {},
    }
    for fusion in fusions:
        overrides = {"fusion": fusion, "history_mode": "stream"}
        if args.language:
            overrides["language"] = args.language
        # eager first (gives the vision/fusion/flow split); then the captured CUDA graph where possible
        modes = [False] + ([True] if cuda and fusion in ("mamba", "checkpoint") else [])
        entry: dict = {}
        for graph in modes:
            if args.checkpoint:
                runtime = PolicyRuntime.from_checkpoint(args.checkpoint, device=args.device, dtype=dtype, cuda_graph=graph)
            else:
                runtime = PolicyRuntime.from_preset(args.preset, device=args.device, dtype=dtype, cuda_graph=graph, **overrides)
            if cuda:
                from mambavla.model.mamba2 import ssd_kernels

                result["mamba_ssm_kernels"] = ssd_kernels() is not None
            mode = "cuda_graph" if graph else "eager"
            rng = np.random.default_rng(0)
            obs = _observation(runtime, rng)
            t0 = time.perf_counter()
            runtime.set_instruction("pick up the red cube and place it on the blue plate")
            instruction_ms = (time.perf_counter() - t0) * 1e3
            for _ in range(args.warmup):
                runtime.step(obs)
            log(f"[{fusion} {mode}] timing {steps} steps")
            timed = _timed_steps(runtime, obs, steps)
            entry[mode] = {"step_ms": timed["step_ms"]}
            if not graph:
                entry[mode]["split_ms_p50"] = timed["split_ms_p50"]
                entry["set_instruction_ms_first"] = instruction_ms
                entry["parameters"] = runtime.model.parameter_counts()

            sweep = []
            if runtime.config.history_mode == "stream" and graph == modes[-1]:
                for history in sorted(args.history):
                    runtime.reset()
                    runtime.extend_history(obs, max(0, history - 1))
                    log(f"[{fusion} {mode}] history {history} frames")
                    m = _timed_steps(runtime, obs, sweep_steps)
                    sweep.append({"history_frames": history, "tokens_in_context": history * runtime.config.tokens_per_frame,
                                  **m["step_ms"], **({"split_ms_p50": m["split_ms_p50"]} if not graph else {})})
                entry["history_sweep"] = {"mode": mode, "points": sweep}
            del runtime
            if cuda:
                torch.cuda.empty_cache()
        result["fusions"][fusion] = entry

    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0
