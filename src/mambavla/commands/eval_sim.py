"""`mambavla eval-sim`: closed-loop success rates on held-out seeds in the simulated workcell."""

from __future__ import annotations

import argparse
import json

from mambavla.commands import metaworld
from mambavla.commands.collect import add_cell_argument


def register(subparsers: argparse._SubParsersAction) -> None:
    from mambavla.runtime.policy_config import DTYPES
    from mambavla.sim.tasks import TASK_FAMILIES, WORDINGS

    p = subparsers.add_parser("eval-sim", help="closed-loop evaluation in simulation (policy -> controller -> franky "
                                               "-> franky-sim)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="checkpoint folder")
    source.add_argument("--preset", help="model preset, untrained (a smoke test of the pipeline)")
    p.add_argument("--tasks", nargs="+", choices=TASK_FAMILIES, default=list(TASK_FAMILIES),
                   help="task families (default: all four)")
    p.add_argument("--episodes", type=int, default=10, help="episodes per task (default 10)")
    p.add_argument("--seed", type=int, default=0,
                   help="offset into the held-out seeds; also seeds the policy noise (default 0)")
    p.add_argument("--latency", type=float, default=0.0, metavar="SECONDS",
                   help="emulated inference latency in simulated seconds (default 0: lockstep, the simulator waits "
                        "for the policy)")
    p.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                   help="simulated seconds per episode (default: the workcell's episode_timeout)")
    p.add_argument("--speed", type=float, default=1.0, metavar="FACTOR",
                   help="franky-sim pacing between holds: 1 = at most real time (default; franky's 1 kHz torque "
                        "replies keep up), 0 = as fast as the CPU allows")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--torch-threads", type=int, default=0, help="CPU threads for inference; 0 keeps torch's default")
    p.add_argument("--backend", default="torch", choices=("torch", "onnx"),
                   help="inference backend (onnx: ONNX Runtime, the step exported at start; about 2x faster on a CPU)")
    p.add_argument("--dtype", default="fp32", choices=DTYPES,
                   help="inference precision (default fp32, as the shipped policy's evaluations and "
                        "config/policy.yaml; auto: bf16 for the torch backend on cuda, else fp32; bf16: torch only; "
                        "fp16: onnx only, the step exported as an fp16 graph with its scan and SSM state in fp32)")
    p.add_argument("--noise-scale", type=float, default=None, metavar="S",
                   help="scale of the flow's starting noise, 0..1 (default: the checkpoint's config.noise_scale)")
    p.add_argument("--out", default="eval-sim",
                   help="output folder: eval.json, episodes.jsonl (each episode as it ends), success.png, "
                        "episodes_<task>.gif (default ./eval-sim)")
    p.add_argument("--gif-episodes", type=int, default=1, metavar="K",
                   help="episodes per task in the GIF (default 1; 0: none)")
    p.add_argument("--gripper-open-delay", type=float, default=None, metavar="SECONDS",
                   help="controller parameter gripper_open_delay for this run, s (default: config/controller*.yaml, "
                        "0.3; 0: open at once)")
    p.add_argument("--trace", action="store_true",
                   help="write each episode's per-tick trace (target, hand, named cube, fingers) and its plot to "
                        "OUT/traces/")
    add_cell_argument(p)
    p.add_argument("--wordings", choices=WORDINGS, default="trained",
                   help="instructions: each seed's own (default), or the same task in a wording no training episode "
                        "has (sim/tasks.py HELD_OUT_PARAPHRASES: other verbs, requests, adverbs, capitals, a typo)")
    p.add_argument("--no-instruction-snap", dest="instruction_snap", action="store_false",
                   help="condition the policy on each instruction as given (by default a gated checkpoint is "
                        "conditioned on its nearest training instruction naming the same colours and sides: "
                        "docs/policy.md#instructions-in-other-words)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON (no progress bar)")
    metaworld.add_eval_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.suite == "metaworld":
        return metaworld.run_eval(args)
    from pathlib import Path

    import torch

    from mambavla.runtime import PolicyRuntime
    from mambavla.runtime.policy_runtime import runtime_dtype
    from mambavla.sim.config import cell_config
    from mambavla.sim.eval_media import episodes_gif, success_chart
    from mambavla.sim.evaluate import evaluate, observation_stride

    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    if args.gif_episodes < 0:
        raise ValueError("--gif-episodes must be >= 0")
    options = {"device": args.device, "seed": args.seed, "backend": args.backend, "threads": args.torch_threads or None,
               "noise_scale": args.noise_scale, "dtype": runtime_dtype(args.dtype, args.device, args.backend)}
    if args.checkpoint:
        runtime = PolicyRuntime.from_checkpoint(args.checkpoint, snap_instructions=args.instruction_snap, **options)
    else:
        runtime = PolicyRuntime.from_preset(args.preset, **options)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    episode_log = out / "episodes.jsonl"  # one line per episode as it ends: kept if the run dies later
    episode_log.unlink(missing_ok=True)
    overrides = None if args.gripper_open_delay is None else {"gripper_open_delay": args.gripper_open_delay}
    summary, results = evaluate(runtime, tuple(args.tasks), args.episodes, seed=args.seed, latency=args.latency,
                                time_limit=args.time_limit, gif_episodes=args.gif_episodes, speed=args.speed,
                                progress=not args.json, episode_log=episode_log,
                                trace_dir=out / "traces" if args.trace else None, param_overrides=overrides,
                                config=cell_config(args.cell), wordings=args.wordings)
    precision = runtime.precision
    summary = {"checkpoint": args.checkpoint, "preset": args.preset if not args.checkpoint else None,
               "backend": args.backend, "dtype": precision, "device": args.device, "cell": args.cell,
               "instruction_snap": runtime.snap_instructions, **summary}
    summary["chart"] = str(success_chart(summary, out / "success.png"))
    frame_seconds = runtime.policy_period * observation_stride(args.latency, runtime.policy_period)
    summary["gifs"] = {t: str(p) for t, rs in results.items()
                       if (p := episodes_gif([r for r in rs if r.frames], out / f"episodes_{t}.gif", frame_seconds))}
    (out / "eval.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    name = args.checkpoint or f"untrained preset {args.preset}"
    mode = f"emulated latency {args.latency} s" if args.latency else "lockstep (zero simulated latency)"
    print(f"eval-sim: {name} ({args.backend}, {precision}), {args.episodes} held-out episodes per task, {mode}")
    for task, s in summary["tasks"].items():
        lo, hi = s["ci95"]
        by_count = sorted(s["rejections_by_kind"].items(), key=lambda kv: -kv[1])
        kinds = ", ".join(f"{k} {v}" for k, v in by_count) or "none"
        print(f"  {task:<11} {s['success_rate']:6.1%}  [{lo:.2f}, {hi:.2f}]  {s['successes']}/{s['episodes']}  "
              f"chunks {s['chunks_accepted']} accepted / {s['chunks_rejected']} rejected ({kinds})")
        print(f"  {'':<11} ends {s['ends']}  states {s['controller_states']}"
              + (f"  mean success time {s['mean_success_sim_seconds']} s" if s["mean_success_sim_seconds"] else ""))
        for error in s["errors"]:
            print(f"  {'':<11} error: {error}")
    lat = summary["inference_ms"]
    print(f"  mean success rate {summary['mean_success_rate']:.1%}")
    print(f"  inference (wall) p50 {lat['p50']} ms, p95 {lat['p95']} ms, p99 {lat['p99']} ms")
    print(f"  wall {summary['wall_seconds']} s for {summary['sim_seconds']} simulated s (sim/real "
          f"{summary['sim_real_factor']})")
    print(f"  written {out / 'eval.json'}, {summary['chart']}" + "".join(f", {p}" for p in summary["gifs"].values()))
    return 0
