"""`mambavla collect`: record scripted-expert demonstrations in the simulated workcell as rosbag2 episodes."""

from __future__ import annotations

import argparse
import json

from mambavla.commands import metaworld

# the options that shape the expert's own bag, at their defaults (a recorder_node bag under --teleop takes none)
EXPERT_BAG = {"no_render": False, "speed": 1.0, "compression": "message", "image_format": "raw", "dart_noise": 0.0}


def register(subparsers: argparse._SubParsersAction) -> None:
    from mambavla.sim.tasks import TASK_CHOICES

    p = subparsers.add_parser("collect", help="record expert demonstrations in simulation (one bag per episode)")
    p.add_argument("--task", choices=TASK_CHOICES,  # required for the workcell
                   help="task family; 'push' alternates sides, 'all' cycles every family")
    p.add_argument("--episodes", type=int, required=True, help="number of episodes (seeds SEED, SEED+1, ...)")
    p.add_argument("--out", required=True, help="output directory (one episode_<seed>/ bag per episode, summary.json)")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--camera-size", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"), default=None,
                   help="image size (default 128 128)")
    p.add_argument("--rate", type=float, default=None, metavar="HZ", help="recording (policy) rate in Hz (default 20)")
    p.add_argument("--no-render", action="store_true", help="record robot state and actions only (no images; faster)")
    p.add_argument("--speed", type=float, default=EXPERT_BAG["speed"], metavar="FACTOR",
                   help="simulation speed: 1 = real time (default), 2 = twice as fast, 0 = as fast as the CPU allows")
    p.add_argument("--compression", choices=("message", "file", "none"), default=EXPERT_BAG["compression"],
                   help="rosbag2 zstd compression (default message: plain .mcap of compressed messages)")
    p.add_argument("--image-format", choices=("raw", "jpeg"), default=EXPERT_BAG["image_format"],
                   help="cameras as sensor_msgs/Image rgb8 (default) or CompressedImage JPEG on <topic>/compressed "
                        "(image_transport's layout; a 168-frame sim lift episode: 1.4 MB against 2.6 MB raw)")
    p.add_argument("--depth", action="store_true",
                   help="record each camera's depth aligned to its colour frames too (16UC1 mm on "
                        "/cameras/NAME/aligned_depth_to_color/image_raw), for RGB-D policies (train --depth)")
    p.add_argument("--dart-noise", type=float, default=EXPERT_BAG["dart_noise"], metavar="METRES",
                   help="DART: add a smooth seeded offset of this standard deviation to the targets the expert streams "
                        "while it moves; the recorded actions stay the expert's, so the episodes show recoveries "
                        "(default 0: clean)")
    p.add_argument("--teleop", action="store_true",
                   help="record through the teleoperation path as on the robot: sim_node, controller_node taking a "
                        "scripted operator's /teleop/twist and /teleop/gripper, recorder_node writing the bag "
                        "(JPEG frames at --rate, default 10 Hz; the controller's streamed target as the action)")
    p.add_argument("--time-limit", type=float, default=60.0, metavar="S",
                   help="with --teleop: seconds the operator gets per episode (default 60)")
    p.add_argument("--eval", action="store_true", help="allow held-out evaluation seeds (>= 1000000)")
    add_cell_argument(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    metaworld.add_collect_arguments(p)
    p.set_defaults(func=run)


def add_cell_argument(p: argparse.ArgumentParser) -> None:
    from mambavla.sim.config import CELLS

    p.add_argument("--cell", choices=tuple(CELLS), default="sim",
                   help="workcell: sim (default, where the shipped policy was trained), changed (front camera 6.6 cm "
                        "and 5 degrees off, another table colour and light) or moved (as changed, camera 18.5 cm and "
                        "14 degrees off): cells that are not ours (docs/own-data.md)")


def run(args: argparse.Namespace) -> int:
    if args.suite == "metaworld":
        return metaworld.run_collect(args)
    if not args.task:
        raise ValueError("--task is required (a workcell task family)")
    if args.teleop:
        return run_teleop(args)
    from mambavla.sim.collect import collect

    summary = collect(args.task, args.episodes, args.out, seed=args.seed, camera_size=args.camera_size,
                      allow_eval_seeds=args.eval, progress=not args.json, render=not args.no_render,
                      speed=args.speed, compression=args.compression, image_format=args.image_format,
                      rate_hz=args.rate, noise=args.dart_noise, cell_name=args.cell,
                      depth=args.depth)
    if args.json:
        print(json.dumps({k: v for k, v in summary.items() if k != "episodes_detail"}, indent=2))
        return 0
    print(f"{summary['episodes']} episodes of {summary['task']} in {summary['out']}")
    print(f"  success rate        {summary['success_rate']:.1%}")
    for task, s in summary["success_by_task"].items():
        print(f"    {task:<12} {s['success_rate']:.1%} of {s['episodes']}")
    print(f"  seconds per episode {summary['seconds_per_episode']:.2f} (simulated "
          f"{summary['sim_seconds_per_episode']:.2f})")
    print(f"  real-time factor    {summary['real_time_factor']}  (server loop {summary['server_loop_hz']} Hz)")
    preview = f", {summary['out']}/preview.png" if summary["render"] else ""
    print(f"  summary             {summary['out']}/summary.json{preview}")
    return 0


def run_teleop(args: argparse.Namespace) -> int:
    """`collect --teleop`: the options that shape the expert's own bag do not apply to a recorder_node bag."""
    unused = ["--" + name.replace("_", "-") for name, default in EXPERT_BAG.items() if getattr(args, name) != default]
    if unused:
        raise ValueError(f"{', '.join(unused)} shape(s) the expert's own bag; --teleop records through recorder_node "
                         "(JPEG frames, zstd per message, real time): leave them out")
    if not args.time_limit > 0:
        raise ValueError(f"--time-limit must be > 0 s, got {args.time_limit}")
    from mambavla.ros.teleop_collect import collect_teleop

    summary = collect_teleop(args.task, args.episodes, args.out, seed=args.seed, cell=args.cell, depth=args.depth,
                             camera_rate_hz=args.rate or 10.0, camera_size=args.camera_size,
                             time_limit=args.time_limit, allow_eval_seeds=args.eval, progress=not args.json)
    if args.json:
        print(json.dumps({k: v for k, v in summary.items() if k != "episodes_detail"}, indent=2))
        return 0
    recorded = len(summary["episodes_detail"])
    print(f"{recorded} teleoperated episodes of {summary['task']} in {summary['out']}")
    print(f"  success rate        {summary['success_rate']:.1%}")
    if summary["failed_seeds"]:
        print(f"  not recorded        seeds {[f['seed'] for f in summary['failed_seeds']]} (errors in summary.json)")
    print(f"  seconds per episode {summary['seconds_per_episode']:.1f} (nodes started and stopped for each)")
    print(f"  summary             {summary['out']}/summary.json")
    return 0 if not summary["failed_seeds"] else 1
