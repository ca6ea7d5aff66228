"""Closed-loop evaluation on Meta-World under LeRobot's protocol: each task's `MT1(task, seed=42)`
environment, `episodes` reset seeds from `suite.EVAL_SEED_BASE + seed`, at most 500 steps, an episode
ends at success. The policy observes every `stride` steps (its `policy_period` over the suite's 12.5 ms
step), in stream mode continuing its state, and the first `stride` rows of each chunk are executed.

Tasks run in parallel processes, each loading the policy once (on the GPU where `device` says so).
The summary holds per task, per difficulty group (the mean of its tasks' rates), the mean of the four
groups (the published tables' "mean") and the mean over all evaluated tasks; `chart` and the episode
GIFs go beside it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mambavla.sim.metaworld import suite
from mambavla.sim.metaworld.env import require_metaworld
from mambavla.sim.stats import percentiles, wilson_interval

_POLICY = None  # the worker process's PolicyRuntime


@dataclass
class MetaWorldEpisode:
    task: str
    seed: int
    success: bool = False
    steps: int = 0
    end: str = ""  # success | timeout
    inference_ms: list[float] = field(default_factory=list)
    frames: list[np.ndarray] = field(default_factory=list, repr=False)


def load_policy(
    checkpoint: str | None,
    preset: str | None = None,
    embeddings: str | Path | None = None,
    device: str = "cpu",
    seed: int = 0,
    dtype=None,
):
    """A `PolicyRuntime` of a Meta-World checkpoint (or an untrained preset laid out for the suite); with
    `embeddings` (an instruction table or a pack folder) the instructions come from it, not the encoder."""
    import torch

    from mambavla.model.checkpoint import STATS, WEIGHTS, load_config
    from mambavla.model.config import preset as preset_config
    from mambavla.model.language import PrecomputedInstructions
    from mambavla.model.modeling_mambavla import MambaVLA
    from mambavla.runtime import PolicyRuntime
    from mambavla.sim.metaworld.demos import read_instruction_table

    if checkpoint:
        config = load_config(checkpoint)
        stats = json.loads((Path(checkpoint) / STATS).read_text())
    else:
        config = preset_config(preset).replace(
            cameras=(suite.CAMERA,),
            dt=suite.DT,
            policy_period=suite.DEFAULT_STRIDE * suite.DT,
            **suite.config_overrides(),
        )
        stats = None
    check_layout(config, checkpoint or f"preset {preset}")
    encoder = (
        None
        if embeddings is None
        else PrecomputedInstructions(read_instruction_table(embeddings), config.max_instruction_tokens)
    )
    torch.manual_seed(seed)
    model = MambaVLA(config, stats, instruction_encoder=encoder)
    if checkpoint:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(Path(checkpoint) / WEIGHTS)))
    return PolicyRuntime(model.eval(), device=device, seed=seed, dtype=dtype)


def check_layout(config, name: str) -> int:
    """The policy's stride in environment steps; ValueError unless it reads and commands Meta-World's layout."""
    if tuple(config.action_names) != suite.ACTION_NAMES or tuple(config.proprio_names) != suite.PROPRIO_NAMES:
        raise ValueError(
            f"{name} is not a Meta-World policy (actions {tuple(config.action_names)}, proprio "
            f"{tuple(config.proprio_names)}); train one on `mambavla collect --suite metaworld` data "
            "with `mambavla train --suite metaworld`"
        )
    if tuple(config.cameras) != (suite.CAMERA,) or abs(config.dt - suite.DT) > 1e-9:
        raise ValueError(
            f"{name}: cameras {tuple(config.cameras)} at dt {config.dt} s; Meta-World gives "
            f"({suite.CAMERA!r},) at {suite.DT} s"
        )
    stride = round(config.policy_period / config.dt)
    if stride < 1 or stride > config.chunk_size or abs(stride * config.dt - config.policy_period) > 1e-9:
        raise ValueError(
            f"{name}: policy period {config.policy_period} s is not 1..{config.chunk_size} steps of {config.dt} s"
        )
    return stride


def run_episode(runtime, task, seed: int, stride: int, keep_frames: bool) -> MetaWorldEpisode:
    """One closed-loop episode of `task` (a `MetaWorldTask` whose instruction the runtime has) from `seed`."""
    runtime.reset()
    proprio = task.reset(seed)
    ep = MetaWorldEpisode(task.task, seed)
    done = False
    while not done:
        frame = task.frame()
        if keep_frames:
            ep.frames.append(frame)
        chunk = runtime.step({"images": {suite.CAMERA: frame}, "proprio": proprio, "stamp": task.steps * suite.DT})
        ep.inference_ms.append(chunk.timing_ms["total"])
        for row in chunk.actions[:stride]:
            proprio, ep.success, done = task.step(row)
            if done:
                break
    ep.steps, ep.end = task.steps, "success" if ep.success else "timeout"
    return ep


def _init_worker(options: dict) -> None:
    global _POLICY
    import torch

    torch.set_num_threads(options.pop("threads"))
    _POLICY = load_policy(**options)


def _task_episodes(job: tuple) -> list[MetaWorldEpisode]:
    from mambavla.sim.metaworld.env import MetaWorldTask

    task_name, seeds, image_size, gif_episodes, max_steps = job
    stride = check_layout(_POLICY.config, "policy")
    task = MetaWorldTask(task_name, image_size=image_size, max_steps=max_steps)
    _POLICY.set_instruction(task.instruction)
    episodes = [run_episode(_POLICY, task, s, stride, keep_frames=i < gif_episodes) for i, s in enumerate(seeds)]
    task.close()
    return episodes


def evaluate(
    checkpoint: str | None,
    tasks: list[str],
    episodes: int = 10,
    out: str | Path = "eval-metaworld",
    preset: str | None = None,
    embeddings: str | Path | None = None,
    device: str = "cpu",
    seed: int = 0,
    workers: int = 0,
    gif_episodes: int = 1,
    progress: bool = True,
    dtype=None,
    max_steps: int = suite.MAX_STEPS,
) -> dict:
    """Evaluate over `tasks` in `workers` processes (0: one per CPU core, at most one per task); writes
    OUT/eval.json, OUT/episodes.jsonl, OUT/success.png and OUT/gifs/<task>.gif; returns the summary."""
    from mambavla.sim.eval_media import episodes_gif
    from mambavla.sim.metaworld.demos import run_parallel

    if episodes < 1:
        raise ValueError(f"--episodes must be >= 1 per task, got {episodes}")
    if gif_episodes < 0:
        raise ValueError("--gif-episodes must be >= 0")
    if not 0 <= seed < suite.EVAL_SEED_BASE:
        raise ValueError(f"--seed is an offset into the evaluation seeds: 0 .. {suite.EVAL_SEED_BASE - 1}")
    # fail here, not in every worker, when Meta-World is missing or the policy cannot run it
    require_metaworld()
    probe = load_policy(checkpoint, preset, embeddings, "cpu", seed)
    stride, image_size = check_layout(probe.config, checkpoint or f"preset {preset}"), tuple(probe.config.image_size)
    for t in tasks:
        probe.set_instruction(suite.instruction(t))  # every instruction is known (encoder or table)
    del probe
    workers = min(workers or os.cpu_count() or 1, len(tasks))
    options = {
        "checkpoint": checkpoint,
        "preset": preset,
        "embeddings": embeddings,
        "device": device,
        "seed": seed,
        "dtype": dtype,
        "threads": max(1, (os.cpu_count() or 1) // workers),
    }
    seeds = [suite.EVAL_SEED_BASE + seed + i for i in range(episodes)]
    jobs = [(t, seeds, image_size, gif_episodes, max_steps) for t in tasks]
    t0 = time.perf_counter()
    results = run_parallel(_task_episodes, jobs, workers, progress, "metaworld eval (tasks)", _init_worker, (options,))
    wall = time.perf_counter() - t0
    out = Path(out)
    (out / "gifs").mkdir(parents=True, exist_ok=True)
    with open(out / "episodes.jsonl", "w") as log:
        for ep in (e for eps in results for e in eps):
            log.write(json.dumps({"task": ep.task, "seed": ep.seed, "success": ep.success, "steps": ep.steps}) + "\n")
    summary = summarize(dict(zip(tasks, results)))
    summary.update(
        {
            "suite": "metaworld",
            "checkpoint": checkpoint,
            "preset": None if checkpoint else preset,
            "device": device,
            "stride": stride,
            "policy_period": stride * suite.DT,
            "image_size": list(image_size),
            "max_steps": max_steps,
            "first_seed": seeds[0],
            "workers": workers,
            "inference_ms": percentiles([m for eps in results for e in eps for m in e.inference_ms]),
            "wall_seconds": round(wall, 1),
        }
    )
    for s in summary["tasks"].values():
        s["ci95"] = [round(v, 3) for v in wilson_interval(s["successes"], s["episodes"])]
    summary["chart"] = str(success_chart(summary, out / "success.png"))
    summary["gifs"] = {
        t: str(p)
        for t, eps in zip(tasks, results)
        if (p := episodes_gif([e for e in eps if e.frames], out / "gifs" / f"{t}.gif", stride * suite.DT))
    }
    (out / "eval.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def summarize(results: dict[str, list[MetaWorldEpisode]]) -> dict:
    """Per task, per group (mean of its tasks' rates), the mean of the groups evaluated and of all tasks."""
    tasks = {}
    for t, eps in results.items():
        wins = [e for e in eps if e.success]
        tasks[t] = {
            "group": suite.group_of(t),
            "instruction": suite.instruction(t),
            "successes": len(wins),
            "episodes": len(eps),
            "success_rate": round(len(wins) / len(eps), 4),
            "mean_steps_success": round(float(np.mean([e.steps for e in wins])), 1) if wins else None,
            "failed_seeds": [e.seed for e in eps if not e.success],
        }
    groups = {}
    for g in suite.GROUP_NAMES:
        members = [t for t in suite.GROUPS[g] if t in tasks]
        if members:
            groups[g] = {
                "tasks": len(members),
                "of": len(suite.GROUPS[g]),
                "success_rate": round(float(np.mean([tasks[t]["success_rate"] for t in members])), 4),
            }
    return {
        "tasks": tasks,
        "groups": groups,
        "episodes_per_task": len(next(iter(results.values()))),
        "mean_of_groups": round(float(np.mean([s["success_rate"] for s in groups.values()])), 4),
        "mean_success_rate": round(float(np.mean([s["success_rate"] for s in tasks.values()])), 4),
        "complete_mt50": len(tasks) == len(suite.TASKS),
    }


GROUP_COLOURS = {"easy": "#4c9a6a", "medium": "#4878a8", "hard": "#dd8452", "very_hard": "#c44e52"}


def success_chart(summary: dict, path: str | Path) -> Path:
    """Horizontal bars: every task's success rate (95% Wilson interval) coloured by group, group means in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    names = list(summary["tasks"])
    rates = np.array([summary["tasks"][t]["success_rate"] for t in names])
    lo = np.array([summary["tasks"][t]["ci95"][0] for t in names])
    hi = np.array([summary["tasks"][t]["ci95"][1] for t in names])
    colours = [GROUP_COLOURS[summary["tasks"][t]["group"]] for t in names]
    fig, ax = plt.subplots(figsize=(8, 1.6 + 0.22 * len(names)), dpi=100)
    y = np.arange(len(names))[::-1]
    ax.barh(y, rates, color=colours, xerr=np.stack([rates - lo, hi - rates]), capsize=2, ecolor="0.3")
    ax.set_yticks(y, [n.removesuffix("-v3") for n in names], fontsize=8)
    handles = [Patch(color=GROUP_COLOURS[g], label=f"{g} ({s['tasks']}): {s['success_rate']:.1%}")
               for g, s in summary["groups"].items()]
    ax.set_xlim(0, 1)
    ax.set_xlabel("success rate (95% Wilson interval)")
    ax.legend(handles=handles, loc="lower right", fontsize=8)
    ax.set_title(
        f"Meta-World: mean of groups {summary['mean_of_groups']:.1%}, mean of {len(names)} tasks "
        f"{summary['mean_success_rate']:.1%} ({summary['episodes_per_task']} episodes each)",
        fontsize=10,
    )
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
