"""`mambavla replay`: score a policy on recorded rosbag2 episodes, offline or through a live policy_node.

Writes `replay.json` (metrics), `trajectories_<bag>.png`, `horizon_error.png` and `worst_frames.png`
to the output folder. Schedule defaults come from config/policy.yaml, safety limits from
config/controller.yaml, as the nodes read them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("replay", help="score a policy on recorded bags (offline, or --live through policy_node)")
    p.add_argument("bag", help="a rosbag2 directory, or a directory of them")
    p.add_argument(
        "--checkpoint",
        default=os.environ.get("MAMBAVLA_CHECKPOINT", ""),
        help="checkpoint folder (default: $MAMBAVLA_CHECKPOINT)",
    )
    p.add_argument("--preset", default="", help="score an UNTRAINED preset instead of a checkpoint (tests, timing)")
    p.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="ROLE=TOPIC",
        help="topic of a role: a checkpoint camera name (front, wrist ...), joint_states, ee_pose, "
        "instruction or actions; repeatable",
    )
    p.add_argument(
        "--instruction", default=None, help="instruction for bags that recorded none (overrides a recorded one)"
    )
    p.add_argument(
        "--live", action="store_true", help="play the bag into a policy_node child process and score what it publishes"
    )
    p.add_argument(
        "--infer-mode",
        default=None,
        choices=("period", "consumed", "rate", "frame"),
        help="policy_node's infer_mode (default: config/policy.yaml)",
    )
    p.add_argument(
        "--infer-period",
        type=float,
        default=None,
        help="s between inferences in rate mode (default: 1 / infer_rate_hz of config/policy.yaml, as policy_node; "
        "period mode always steps once per policy_period of frame time)",
    )
    p.add_argument(
        "--zero-latency",
        action="store_true",
        help="offline: treat inference as instantaneous (the schedule then depends on recorded times only)",
    )
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--seed", type=int, default=0, help="flow-matching noise seed (default: 0)")
    p.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="offline: CPU threads for inference, as policy_node's torch_threads (0 keeps torch's default)",
    )
    p.add_argument(
        "--backend",
        default="torch",
        choices=("torch", "onnx"),
        help="offline: inference backend (onnx: ONNX Runtime, the step exported at start; about 2x faster on a CPU)",
    )
    p.add_argument("--rate", type=float, default=1.0, help="--live: playback speed factor (default: 1.0)")
    p.add_argument(
        "--ros-domain-id",
        type=int,
        default=None,
        metavar="N",
        help="--live: join ROS domain N (e.g. to watch in rviz). By default live replay runs in a private domain "
        "on localhost whatever ROS_DOMAIN_ID says: it publishes recorded poses and policy chunks",
    )
    p.add_argument("--out", default="", help="output folder (default: runs/replay/<time>)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mambavla.control.config import load_params, safety_limits
    from mambavla.evaluation.bag import parse_maps
    from mambavla.evaluation.replay import find_bags
    from mambavla.runtime.policy_config import PolicyNodeConfig

    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    if not args.checkpoint and not args.preset:
        raise ValueError("give --checkpoint (or --preset NAME to score an untrained policy)")
    if args.checkpoint and not Path(args.checkpoint).is_dir():
        raise FileNotFoundError(f"checkpoint folder not found: {args.checkpoint}")
    if args.torch_threads < 0:
        raise ValueError("--torch-threads must be >= 0")
    if args.torch_threads > 0:
        import torch

        torch.set_num_threads(args.torch_threads)
    maps = parse_maps(args.map)
    bags = find_bags(args.bag)
    out = Path(args.out or f"runs/replay/{time.strftime('%Y%m%d-%H%M%S')}")
    policy_params = load_params(("policy.yaml",), "policy_node")
    limits = safety_limits(load_params(("controller.yaml",)))  # the robot's limits, as controller_node loads them

    if args.checkpoint:
        from mambavla.model.checkpoint import load_config

        config = load_config(args.checkpoint)
    else:
        from mambavla.model.config import preset

        config = preset(args.preset)
        log(f"no checkpoint: scoring an UNTRAINED {args.preset!r} policy (its actions are noise)")
    node = PolicyNodeConfig.from_params(policy_params, "config/policy.yaml")
    schedule = replace(
        node.schedule_config(len(config.cameras), config.policy_period, config.chunk_size * config.dt),
        **{k: v for k, v in (("infer_mode", args.infer_mode), ("infer_period", args.infer_period)) if v},
    )
    header = {
        "checkpoint": args.checkpoint or f"UNTRAINED preset {args.preset}",
        "instruction": args.instruction,
        "output": str(out),
    }

    if args.live:
        from mambavla.evaluation.live import replay_live

        summary = replay_live(bags, args, config, maps, schedule, limits, out, header, log)
    else:
        summary = _offline(args, config, bags, maps, schedule, limits, out, header, log, node)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary, log)
    return 0


def _offline(args, config, bags, maps, schedule, limits, out, header, log, node) -> dict:
    """`node`: policy_node's parameters (config/policy.yaml), which the replay follows as the node would."""
    from mambavla.evaluation.bag import inspect
    from mambavla.evaluation.replay import replay_bags

    # every bag's topics are found and checked before the model loads (seconds saved on a mistake)
    infos = [inspect(bag, config.cameras, maps, config.action_names, depth=config.use_depth) for bag in bags]
    from mambavla.runtime import PolicyRuntime

    if args.checkpoint:
        runtime = PolicyRuntime.from_checkpoint(
            args.checkpoint,
            device=args.device,
            seed=args.seed,
            backend=args.backend,
            threads=args.torch_threads or None,
            snap_instructions=node.snap_instructions,
        )
    else:
        runtime = PolicyRuntime.from_preset(
            args.preset, device=args.device, seed=args.seed, backend=args.backend, threads=args.torch_threads or None
        )
    if args.instruction:
        runtime.prepare_instruction(args.instruction)  # a refused --instruction stops here, before any bag
    return replay_bags(
        infos,
        runtime,
        args.instruction,
        schedule,
        limits,
        out,
        latency="zero" if args.zero_latency else "measured",
        progress=not args.no_progress,
        log=log,
        header=header,
        max_depth_offset=node.max_depth_offset,
    )


def _print_summary(summary: dict, log) -> None:
    m = summary["metrics"]
    log(
        f"replayed {len(summary['bags'])} bag(s), {summary.get('recorded_s', 0):.1f} s recorded, "
        f"mode {summary['mode']}: "
        f"{m.get('chunks', 0)} chunks"
    )
    if not m.get("chunks"):
        rejection = (summary.get("policy_node_status") or {}).get("last_rejection")  # live: what the node refused
        log("no chunk was produced " + (f"(policy_node's last rejection: {rejection})" if rejection
                                        else "(see the roles and notes in replay.json)"))
        return
    mae = m["mae"]
    log("MAE  " + "  ".join(f"{k} {v:.1f} {m['mae_units'][k]}" for k, v in mae.items()))
    h = m["by_horizon"]
    log(f"position error by horizon: first {h['position_mm'][0]:.1f} mm, last {h['position_mm'][-1]:.1f} mm")
    log(
        f"gripper agreement {m['gripper_agreement']:.1%}; "
        f"seams: mean jump {m['seams']['position_jump_mm'].get('mean', float('nan')):.1f} mm"
    )
    s = m["safety"]
    log(f"controller would reject {s['rejected']}/{s['chunks']} chunks: {s['rejected_by_kind'] or 'none'}")
    for key in ("inference_ms", "observation_to_chunk_ms"):
        st = m[key]
        if st.get("n"):
            log(f"{key}: p50 {st['p50']:.1f}  p95 {st['p95']:.1f}  p99 {st['p99']:.1f}")
    if summary.get("wall_s_per_recorded_minute") is not None:
        log(
            f"replay took {summary['replay_wall_s']:.1f} s "
            f"({summary['wall_s_per_recorded_minute']:.1f} s per recorded minute)"
        )
    log(f"written: {Path(summary['output']) / 'replay.json'} and {len(summary['pictures'])} pictures")
