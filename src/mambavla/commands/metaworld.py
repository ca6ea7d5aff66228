"""The `--suite metaworld` options of `collect`, `train` and `eval-sim`, and what those commands run with them.
Not a command of its own: the commands add these arguments and hand over when `--suite metaworld` is given."""

from __future__ import annotations

import argparse
import json

SUITES = ("workcell", "metaworld")
SUITE_HELP = (
    "workcell: the franky-sim FR3 workcell (default); metaworld: Meta-World MT50 under LeRobot's protocol, "
    "run from .venv-metaworld (make metaworld; docs/metaworld.md)"
)


def add_shared_arguments(g: argparse._ArgumentGroup, tasks_flag: str) -> None:
    """--suite and the Meta-World options collect and eval-sim share; `tasks_flag` is eval-sim's --metaworld-tasks,
    its --tasks naming workcell families."""
    g.add_argument("--suite", choices=SUITES, default="workcell", help=SUITE_HELP)
    g.add_argument(
        tasks_flag,
        nargs="+",
        default=["all"],
        metavar="TASK",
        help="Meta-World tasks (e.g. reach-v3), groups (easy medium hard very_hard) or all (default)",
    )
    g.add_argument(
        "--workers",
        type=int,
        default=0,
        help="parallel processes, one task at a time each (default 0: one per CPU core)",
    )
    g.add_argument(
        "--instructions",
        metavar="TABLE",
        help="instruction embeddings (scripts/metaworld_instructions.py, or a training pack's folder) where the "
        "language encoder's weights are not (default: the encoder)",
    )


def add_collect_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("--suite metaworld (writes a training pack of expert demonstrations)")
    add_shared_arguments(g, "--tasks")
    g.add_argument(
        "--stride",
        type=int,
        default=None,
        metavar="STEPS",
        help="environment steps (12.5 ms) per policy frame (default 4: the policy observes at 20 Hz)",
    )
    g.add_argument(
        "--max-tries",
        type=int,
        default=None,
        metavar="N",
        help="seeds tried per task for its successful episodes (default 2 x episodes + 10)",
    )


def refuse_workcell_options(args: argparse.Namespace) -> None:
    """--cell, --wordings and --depth name the workcell's variants; Meta-World has its own scenes, task texts and
    one colour camera."""
    for flag, default in (("cell", "sim"), ("wordings", "trained"), ("depth", False)):
        if getattr(args, flag, default) != default:
            raise ValueError(f"--{flag} is the workcell's; it does not apply to --suite metaworld")


def run_collect(args: argparse.Namespace) -> int:
    from mambavla.sim.metaworld import suite
    from mambavla.sim.metaworld.demos import collect_demos

    if args.eval:
        raise ValueError(
            "--eval does not apply to --suite metaworld: demonstration seeds stay below its evaluation seeds"
        )
    refuse_workcell_options(args)
    summary = collect_demos(
        suite.resolve(args.tasks),
        args.episodes,
        args.out,
        seed=args.seed,
        image_size=tuple(args.camera_size or (128, 128)),
        stride=suite.DEFAULT_STRIDE if args.stride is None else args.stride,
        workers=args.workers,
        max_tries=args.max_tries,
        embeddings=args.instructions,
        progress=not args.json,
    )
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(
        f"{summary['episodes']} successful expert episodes of {summary['tasks']} Meta-World tasks in {summary['out']} "
        f"({summary['frames']} frames, {summary['pack_mib']} MiB)"
    )
    print(f"  expert success rate {summary['expert_success_rate']:.1%} of the seeds tried")
    for task, s in summary["by_task"].items():
        if s["expert_success_rate"] < 1:
            print(f"    {task:<30} {s['expert_success_rate']:.0%} of {s['tries']} tries")
    if summary["tasks_short_of_episodes"]:
        print(f"  short of {args.episodes} episodes: {', '.join(summary['tasks_short_of_episodes'])}")
    print(
        f"  {summary['generate_seconds']} s generating, {summary['seconds']} s in all; "
        f"summary {summary['out']}/summary.json"
    )
    return 0


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--suite",
        choices=SUITES,
        default="workcell",
        help="the data's action and proprio layout: workcell (default) or metaworld (4-D each)",
    )


def train_overrides(args: argparse.Namespace) -> dict:
    if getattr(args, "suite", "workcell") != "metaworld":
        return {}
    from mambavla.sim.metaworld.suite import config_overrides

    return config_overrides()


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("--suite metaworld")
    add_shared_arguments(g, "--metaworld-tasks")
    g.add_argument(
        "--max-steps",
        type=int,
        default=500,
        metavar="N",
        help="steps per episode (default 500, the protocol's; fewer only for smoke tests)",
    )


def run_eval(args: argparse.Namespace) -> int:
    from mambavla.runtime.policy_runtime import runtime_dtype
    from mambavla.sim.metaworld import suite
    from mambavla.sim.metaworld.evaluate import evaluate

    if args.backend != "torch":
        raise ValueError("--suite metaworld runs the torch backend")
    refuse_workcell_options(args)
    summary = evaluate(
        args.checkpoint,
        suite.resolve(args.metaworld_tasks),
        args.episodes,
        args.out,
        preset=args.preset,
        embeddings=args.instructions,
        device=args.device,
        seed=args.seed,
        workers=args.workers,
        gif_episodes=args.gif_episodes,
        progress=not args.json,
        dtype=runtime_dtype(args.dtype, args.device, args.backend),
        max_steps=args.max_steps,
    )
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    name = args.checkpoint or f"untrained preset {args.preset}"
    print(
        f"eval-sim --suite metaworld: {name}, {summary['episodes_per_task']} episodes per task, "
        f"at most {summary['max_steps']} steps, seeds from {summary['first_seed']}"
    )
    for task, s in summary["tasks"].items():
        print(f"  {task:<30} {s['group']:<10} {s['success_rate']:6.1%}  {s['successes']}/{s['episodes']}")
    for g, s in summary["groups"].items():
        print(f"  group {g:<10} {s['success_rate']:6.1%}  ({s['tasks']} of {s['of']} tasks)")
    print(
        f"  mean of groups {summary['mean_of_groups']:.1%}, mean of {len(summary['tasks'])} tasks "
        f"{summary['mean_success_rate']:.1%}"
    )
    print(
        f"  wall {summary['wall_seconds']} s in {summary['workers']} processes; inference p50 "
        f"{summary['inference_ms']['p50']} ms"
    )
    print(f"  written {args.out}/eval.json, {summary['chart']}, {len(summary['gifs'])} GIFs in {args.out}/gifs/")
    return 0
