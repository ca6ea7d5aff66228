"""The captured step when the caller idles between steps, as a node paced by its cameras does. Prints JSON.

    MAMBAVLA_MINILM_PATH=/tmp/minilm python scripts/paced_step_probe.py MODE EXPERIMENT

MODE: `none` (the plain CUDA graph) or a torch.compile mode. Base preset, bf16, two 480x640 frames resized
on the GPU, caller's view (`PolicyRuntime.step`). `mambavla bench` times steps back to back; here every
step follows a gap:
  sweep    300 steps after each of: no gap, sleeps of 1, 5 and 20 ms (then 20 ms and no gap again)
  fillers  250 steps after each 20 ms gap filled another way: a sleep, a busy-wait, 1 ms sleeps, a tiny
           kernel on a side stream every 1 ms, 18 ms of sleep then 2 of busy-wait (plain graph only)
to tell whether a slow step after a gap comes from an idle CPU, an idle GPU, or the machine.
Results: docs/benchmarks.md, "camera-in to chunk-out".
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

from mambavla.commands.bench import INSTRUCTION, _observation
from mambavla.runtime import PolicyRuntime


def _percentiles(ms: list[float]) -> dict:
    return {q: round(float(np.percentile(ms, int(q[1:]))), 3) for q in ("p50", "p90", "p99")}


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def main(mode: str, experiment: str) -> dict:
    torch.set_grad_enabled(False)
    runtime = PolicyRuntime.from_preset("base", device="cuda", dtype=torch.bfloat16, fusion="mamba",
                                        history_mode="stream", seed=0,
                                        noise_scale=0.0, compile_step=False if mode == "none" else mode)
    runtime.set_instruction(INSTRUCTION)
    obs = _observation(runtime, np.random.default_rng(0), (480, 640))
    for _ in range(30):
        runtime.step(obs)
    tiny, side = torch.zeros(1, device="cuda"), torch.cuda.Stream()

    def kernels_every_ms() -> None:
        with torch.cuda.stream(side):
            for _ in range(20):
                tiny.add_(1)
                time.sleep(0.001)

    if experiment == "sweep":
        steps = 300
        gaps = [(f"sleep_{ms}ms", (lambda s=ms * 1e-3: time.sleep(s)) if ms else None) for ms in (0, 1, 5, 20, 20, 0)]
    else:
        steps = 250
        gaps = [("none", None), ("sleep", lambda: time.sleep(0.02)), ("spin", lambda: _spin(0.02)),
                ("sleep_1ms_slices", lambda: [time.sleep(0.001) for _ in range(20)]),
                ("gpu_kernel_every_1ms", kernels_every_ms),
                ("sleep18_spin2", lambda: (time.sleep(0.018), _spin(0.002))),
                ("sleep", lambda: time.sleep(0.02)), ("none", None)]
    out: dict = {"mode": mode, "experiment": experiment, "device": torch.cuda.get_device_name(), "step_ms": {}}
    for name, gap in gaps:
        ms = []
        for _ in range(steps):
            if gap:
                gap()
            started = time.perf_counter()
            runtime.step(obs)
            ms.append((time.perf_counter() - started) * 1e3)
        out["step_ms"].setdefault(name, []).append(_percentiles(ms))
    return out


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[2] not in ("sweep", "fillers"):
        sys.exit(__doc__)
    print(json.dumps(main(sys.argv[1], sys.argv[2]), indent=1))
