"""Where the captured step's kernels go: per region (vision, context scan, one flow step), by category and
name, with GPU time; and a graph replay's kernel time against its wall time. Prints JSON.
    MAMBAVLA_MINILM_PATH=/tmp/minilm python scripts/kernel_profile.py PRESET MODE [STEPS]

MODE: none (the plain CUDA graph) or a torch.compile mode (compile_step). Mamba fusion, stream mode, bf16,
untrained weights; run it on the GPU machine after scripts/gpu_setup.sh. docs/benchmarks.md has its results."""
import collections, json, re, sys, time
import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile
from mambavla.runtime import PolicyRuntime
from mambavla.commands.bench import _observation, _timed_steps, INSTRUCTION

torch.set_grad_enabled(False)
preset, mode = sys.argv[1], sys.argv[2]
steps = int(sys.argv[3]) if len(sys.argv) > 3 else 200
t0 = time.perf_counter()
rt = PolicyRuntime.from_preset(preset, device="cuda", dtype=torch.bfloat16, compile_step=(False if mode == "none" else mode),
                               fusion="mamba", history_mode="stream", seed=0, noise_scale=0.0)
rt.set_instruction(INSTRUCTION)
obs = _observation(rt, np.random.default_rng(0))
first = rt.step(obs).actions
first_s = time.perf_counter() - t0
for _ in range(20):
    rt.step(obs)
timed = _timed_steps(rt, obs, steps)
g = rt._graph
model = g.model


def category(n):
    if re.search(r"gemm|cutlass|nvjet|sm90|sm80|splitK|cublas", n, re.I): return "gemm"
    if re.match(r"_(chunk|state_passing|bmm)", n): return "mamba_ssm_triton"
    if n.startswith("triton_"): return "inductor_triton"
    if re.search(r"conv|cudnn|implicit|winograd", n, re.I): return "conv"
    if re.search(r"norm", n, re.I): return "norm"
    if n.startswith(("Memcpy", "Memset", "[memcpy", "[memset")): return "copy"
    return "other"


def prof(fn):
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        fn(); torch.cuda.synchronize()
    ev = [e for e in p.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    cats = collections.defaultdict(lambda: [0, 0.0])
    names = collections.Counter()
    for e in ev:
        c = category(e.name); cats[c][0] += 1; cats[c][1] += e.time_range.elapsed_us()
        names[re.sub(r"_\d+$", "", e.name)[:90]] += 1
    return {"kernels": len(ev), "gpu_us": round(sum(e.time_range.elapsed_us() for e in ev), 1),
            "by_category": {k: {"n": v[0], "us": round(v[1], 1)} for k, v in sorted(cats.items())},
            "top_names": names.most_common(25)}


saved = g._save()
for name, fn in g._compiled.items():
    setattr(model, name, fn)
try:
    tokens = model.encode_frame(g.images, g.proprio, g.task)
    ctx = model.condition(tokens, g.state)
    steps = model.config.flow_steps
    times = ((steps - torch.arange(steps, device="cuda", dtype=torch.float32)) / steps)[:, None]
    mods = model.flow_modulations(times, g.task)
    out = {"preset": preset, "mode": mode, "first_step_s": round(first_s, 1), "step_ms": timed["step_ms"],
           "device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "vision": prof(lambda: model.encode_frame(g.images, g.proprio, g.task)),
           "condition": prof(lambda: model.condition(tokens, g.state)),
           "velocity_x1": prof(lambda: model.velocity(g.noise, None, ctx, modulation=mods[0])),
           "flow_modulations": prof(lambda: model.flow_modulations(times, g.task)),
           "flow_steps": model.config.flow_steps}
finally:
    for name in g._compiled:
        delattr(model, name)
g._load(saved)
out["body"] = prof(g._step); g._load(saved)
rep = prof(g.graph.replay); g._load(saved)
s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
walls = []
for _ in range(50):
    s.record(); g.graph.replay(); e.record(); torch.cuda.synchronize(); walls.append(s.elapsed_time(e))
g._load(saved)
out["replay"] = {"kernels": rep["kernels"], "kernel_gpu_us": rep["gpu_us"], "replay_wall_us_p50": round(1e3 * float(np.median(walls)), 1),
                 "by_category": rep["by_category"]}
print(json.dumps(out, indent=1))
