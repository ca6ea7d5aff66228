"""How far reduced precision moves a trained policy's actions, on frames from its own closed loop. Prints JSON.

    python scripts/precision_parity.py record --checkpoint C --out FRAMES.npz [--task lift] [--seed 0] [--seconds 12]
    python scripts/precision_parity.py compare --checkpoint C --frames FRAMES.npz --out DIR [--device cuda] [--compile]

`record` (needs franky-sim) runs one held-out episode of `mambavla eval-sim` (torch, fp32, CPU) and keeps every
observation the policy was given, resized to the policy's image size as the runtime resizes them (OpenCV
INTER_AREA), with the instruction. `compare` streams those observations through the reference (torch, fp32, CPU,
eager) and through each other mode: on the CPU, ONNX Runtime's fp32 and fp16 graphs and torch in bf16; on a GPU
also torch's bf16 CUDA graph (`--compile`: and the compiled one) and ONNX Runtime's fp32 and fp16 graphs on its CUDA
provider with their CUDA graphs. The flow starts from zero noise in every mode (`noise_scale` 0), so the chunks
differ by arithmetic alone, not by the devices' random numbers. Per mode: the largest difference from the reference over
every step and row, per action (the positions also in mm), and per step; DIR gets `precision.json` and
`precision.png` (per-step difference, each mode).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np


class _Recorder:
    """A runtime that keeps the observations it steps on (at the policy's image size) and the instruction."""

    def __init__(self, runtime):
        from mambavla.data.images import resize_rgb

        self._runtime, self._resize = runtime, resize_rgb
        self.frames: list[dict] = []
        self.instruction = ""

    def __getattr__(self, name):
        return getattr(self._runtime, name)

    def set_instruction(self, text: str) -> None:
        self.instruction = text
        self._runtime.set_instruction(text)

    def step(self, observation: dict):
        size = self._runtime.image_size
        self.frames.append({"images": {c: self._resize(v, size) for c, v in observation["images"].items()},
                            "proprio": np.asarray(observation["proprio"], np.float32)})
        return self._runtime.step(observation)


def record(args: argparse.Namespace) -> dict:
    from mambavla.runtime import PolicyRuntime
    from mambavla.sim.evaluate import evaluate

    recorder = _Recorder(PolicyRuntime.from_checkpoint(args.checkpoint, seed=args.seed, threads=1))
    summary, _ = evaluate(recorder, (args.task,), 1, seed=args.seed, time_limit=args.seconds, gif_episodes=0,
                          progress=False)
    cameras = recorder.camera_names
    arrays = {f"image_{c}": np.stack([f["images"][c] for f in recorder.frames]) for c in cameras}
    np.savez_compressed(args.out, proprio=np.stack([f["proprio"] for f in recorder.frames]),
                        instruction=np.array(recorder.instruction), cameras=np.array(cameras), **arrays)
    task = summary["tasks"][args.task]
    return {"frames": str(args.out), "steps": len(recorder.frames), "instruction": recorder.instruction,
            "task": args.task, "seed": task["episodes_detail"][0]["seed"], "success": task["successes"] == 1}


def _modes(device: str, compile_step: bool) -> list[tuple[str, dict]]:
    import torch

    modes = [("onnx fp32 cpu", {"backend": "onnx"}), ("onnx fp16 cpu", {"backend": "onnx", "dtype": torch.float16}),
             ("torch bf16 cpu", {"dtype": torch.bfloat16})]
    if device.startswith("cuda"):
        modes += [("torch bf16 cuda graph", {"device": device, "dtype": torch.bfloat16, "cuda_graph": True})]
        if compile_step:
            modes += [("torch bf16 compiled cuda graph", {"device": device, "dtype": torch.bfloat16, "cuda_graph": True,
                                                          "compile_step": True})]
        modes += [("onnx fp32 cuda graphs", {"device": device, "backend": "onnx", "cuda_graph": True}),
                  ("onnx fp16 cuda graphs",
                   {"device": device, "backend": "onnx", "dtype": torch.float16, "cuda_graph": True})]
    return modes


def _stream(runtime, frames: list[dict], instruction: str) -> np.ndarray:
    runtime.set_instruction(instruction)
    return np.stack([runtime.step(f).actions for f in frames])  # (T, H, A)


def compare(args: argparse.Namespace) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from mambavla.model.checkpoint import load_checkpoint
    from mambavla.runtime import PolicyRuntime

    data = np.load(args.frames)
    cameras = [str(c) for c in data["cameras"]]
    frames = [{"images": {c: data[f"image_{c}"][t] for c in cameras}, "proprio": data["proprio"][t]}
              for t in range(len(data["proprio"]))]
    instruction = str(data["instruction"])
    # read once; each runtime casts and moves a copy of its own
    loaded = load_checkpoint(args.checkpoint).float().eval()
    names = list(loaded.config.action_names)
    reference = _stream(PolicyRuntime(copy.deepcopy(loaded), seed=0, noise_scale=0.0, cuda_graph=False), frames,
                        instruction)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"checkpoint": args.checkpoint, "frames": args.frames, "steps": len(frames), "instruction": instruction,
              "reference": "torch fp32 cpu eager", "noise_scale": 0.0, "torch": torch.__version__,
              "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
              "action_names": names,
              "reference_range": {n: [round(float(reference[..., i].min()), 4),
                                      round(float(reference[..., i].max()), 4)] for i, n in enumerate(names)},
              "modes": {}}
    figure, axis = plt.subplots(figsize=(8, 4))
    for label, options in _modes(args.device, args.compile):
        t0 = time.perf_counter()
        runtime = PolicyRuntime(copy.deepcopy(loaded), seed=0, noise_scale=0.0, **options)
        diff = np.abs(_stream(runtime, frames, instruction) - reference)  # (T, H, A)
        per_step = diff.max(axis=(1, 2))
        per_action = diff.max(axis=(0, 1))
        entry = {"max_abs": float(diff.max()), "per_step_p50": float(np.median(per_step)),
                 "first_row_max_abs": float(diff[:, 0].max()),
                 "per_action_max_abs": {n: float(v) for n, v in zip(names, per_action)},
                 "seconds": round(time.perf_counter() - t0, 1)}
        positions = [i for i, n in enumerate(names) if n in ("x", "y", "z")]
        if positions:
            entry["position_max_abs_mm"] = float(f"{diff[..., positions].max() * 1e3:.3g}")
        result["modes"][label] = entry
        axis.semilogy(np.maximum(per_step, 1e-9), label=label)
        print(f"[{label}] max |diff| {entry['max_abs']:.3g}", flush=True)
    axis.set(xlabel="policy step", ylabel="max |action - fp32 reference|",
             title=f"{Path(args.checkpoint).name}: {len(frames)} streamed steps, zero starting noise")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "precision.png", dpi=120)
    result["plot"] = str(out / "precision.png")
    (out / "precision.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("record", help="observations of one closed-loop episode (franky-sim)")
    r.add_argument("--checkpoint", required=True)
    r.add_argument("--out", required=True, help=".npz to write")
    r.add_argument("--task", default="lift")
    r.add_argument("--seed", type=int, default=0, help="offset into eval-sim's held-out seeds")
    r.add_argument("--seconds", type=float, default=12.0, help="simulated seconds of the episode")
    c = sub.add_parser("compare", help="stream the observations through each precision")
    c.add_argument("--checkpoint", required=True)
    c.add_argument("--frames", required=True, help=".npz from `record`")
    c.add_argument("--out", required=True, help="folder for precision.json and precision.png")
    c.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU modes too")
    c.add_argument("--compile", action="store_true",
                   help="also torch's compiled CUDA-graph step (a minute or two to compile)")
    args = parser.parse_args()
    print(json.dumps(record(args) if args.command == "record" else compare(args), indent=2))


if __name__ == "__main__":
    main()
