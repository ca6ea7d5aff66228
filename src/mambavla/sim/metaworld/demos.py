"""Expert demonstrations for Meta-World, generated from seeds and written as a training pack.

Each task's scripted expert (`metaworld.policies`) runs from reset seeds `seed`, `seed + 1`, ... until it
has `episodes` successes or has tried `max_tries` seeds; an episode ends at the step the environment
reports success, and only successful episodes are kept (as LeRobot's `lerobot/metaworld_mt50` holds
them). The same seeds give the same demonstrations. Frames are kept at the policy rate (every `stride`
steps: the observation before that step), actions at every step, so `TrainingEpisodes` reads them as
it reads the workcell's episodes. Tasks run in parallel processes, one environment each.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from mambavla.sim.metaworld import suite
from mambavla.sim.metaworld.env import require_metaworld


def expert_episode(task, seed: int, stride: int, render: bool = True) -> dict:
    """One expert episode of `task` (a `MetaWorldTask`) from `seed` -> {"success", "steps", "frames" uint8
    [F, h, w, 3], "proprio" float32 [F, 4], "actions" float32 [steps, 4]}, F = ceil(steps / stride)."""
    proprio = task.reset(seed)
    frames, states, actions = [], [], []
    success = done = False
    while not done:
        if task.steps % stride == 0:
            states.append(proprio)
            if render:
                frames.append(task.frame())
        action = task.expert_action()
        actions.append(action)
        proprio, success, done = task.step(action)
    return {
        "success": success,
        "steps": task.steps,
        "frames": np.stack(frames) if frames else None,
        "proprio": np.stack(states),
        "actions": np.stack(actions),
    }


def _task_demos(job: tuple) -> dict:
    """Worker: one task's demonstrations (successful episodes only) and every try's outcome."""
    from mambavla.sim.metaworld.env import MetaWorldTask

    task_name, episodes, seed, max_tries, image_size, stride, render = job
    task = MetaWorldTask(task_name, image_size=image_size, render=render)
    kept, tries = [], []
    t0 = time.perf_counter()
    for s in range(seed, seed + max_tries):
        if len(kept) == episodes:
            break
        ep = expert_episode(task, s, stride, render)
        tries.append({"seed": s, "success": ep["success"], "steps": ep["steps"]})
        if ep["success"]:
            kept.append({"seed": s, **ep})
    task.close()
    return {"task": task_name, "kept": kept, "tries": tries, "seconds": time.perf_counter() - t0}


def run_parallel(fn, jobs: list, workers: int, progress: bool, desc: str, initializer=None, initargs: tuple = ()):
    """fn(job) for every job in `workers` spawned processes (each with its own GL context; `initializer` runs
    once in each), results in job order. One worker: in this process."""
    from tqdm import tqdm

    if workers <= 1 or len(jobs) <= 1:
        if initializer:
            initializer(*initargs)
        return [fn(j) for j in tqdm(jobs, desc=desc, disable=not progress, dynamic_ncols=True)]
    import multiprocessing as mp

    results = [None] * len(jobs)
    with mp.get_context("spawn").Pool(min(workers, len(jobs)), initializer, initargs) as pool:
        bar = tqdm(total=len(jobs), desc=desc, disable=not progress, dynamic_ncols=True)
        for i, result in pool.imap_unordered(_indexed, [(fn, i, j) for i, j in enumerate(jobs)]):
            results[i] = result
            bar.update()
        bar.close()
    return results


def _indexed(item: tuple) -> tuple:
    fn, i, job = item
    return i, fn(job)


def collect_demos(
    tasks: list[str],
    episodes: int,
    out: str | Path,
    seed: int = 0,
    image_size: tuple[int, int] = (128, 128),
    stride: int = suite.DEFAULT_STRIDE,
    workers: int = 0,
    max_tries: int | None = None,
    embeddings: str | Path | None = None,
    quality: int = 90,
    shards: int = 1,
    progress: bool = True,
) -> dict:
    """Demonstrations of each task into the training pack `out` (`TrainingEpisodes.load` reads it), and
    OUT/summary.json with the experts' success rate per task. `embeddings`: an instruction table written by
    `write_instruction_table` (machines without the language encoder's weights); default: the encoder.
    `workers` 0: one process per CPU core."""
    from mambavla.data.packed import TrainingEpisodes, write_pack

    if episodes < 1:
        raise ValueError(f"--episodes must be >= 1 per task, got {episodes}")
    if stride < 1:
        raise ValueError(f"--stride must be >= 1 environment steps, got {stride}")
    if seed >= suite.EVAL_SEED_BASE:
        raise ValueError(f"demonstration seeds must stay below the evaluation seeds ({suite.EVAL_SEED_BASE})")
    max_tries = 2 * episodes + 10 if max_tries is None else max_tries
    if max_tries < episodes:
        raise ValueError(f"--max-tries must be at least --episodes ({episodes}), got {max_tries}")
    require_metaworld()
    encoder = instruction_encoder(embeddings)  # before the work: a missing table fails at once
    workers = workers or os.cpu_count() or 1
    t0 = time.perf_counter()
    jobs = [(t, episodes, seed, max_tries, tuple(image_size), stride, True) for t in tasks]
    results = run_parallel(_task_demos, jobs, workers, progress, "metaworld demos (tasks)")
    kept = [(r["task"], ep) for r in results for ep in r["kept"]]
    if not kept:
        raise ValueError(f"no successful expert episode in {max_tries} tries of each task: nothing to write")
    counts = [len(ep["frames"]) for _, ep in kept]
    lengths = [len(ep["actions"]) for _, ep in kept]
    demos = TrainingEpisodes(
        cameras=(suite.CAMERA,),
        image_size=tuple(image_size),
        dt=suite.DT,
        stride=stride,
        frames={suite.CAMERA: np.concatenate([ep["frames"] for _, ep in kept])},
        proprio=np.concatenate([ep["proprio"] for _, ep in kept]).astype(np.float32),
        actions=np.concatenate([ep["actions"] for _, ep in kept]).astype(np.float32),
        frame_start=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        action_start=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        instructions=[suite.instruction(t) for t, _ in kept],
        meta=[{"task": t, "seed": ep["seed"], "suite": "metaworld", "group": suite.group_of(t)} for t, ep in kept],
    )
    generated = time.perf_counter() - t0
    pack = write_pack(demos, out, encoder, shards=shards, quality=quality)
    by_task = {
        r["task"]: {
            "kept": len(r["kept"]),
            "tries": len(r["tries"]),
            "expert_success_rate": round(sum(t["success"] for t in r["tries"]) / len(r["tries"]), 4),
            "mean_steps_kept": round(float(np.mean([ep["steps"] for ep in r["kept"]])), 1) if r["kept"] else None,
            "failed_seeds": [t["seed"] for t in r["tries"] if not t["success"]],
        }
        for r in results
    }
    short = sorted(t for t, s in by_task.items() if s["kept"] < episodes)
    summary = {
        "suite": "metaworld",
        "out": str(out),
        "tasks": len(tasks),
        "episodes_per_task": episodes,
        "episodes": len(kept),
        "frames": int(sum(counts)),
        "steps": int(sum(lengths)),
        "first_seed": seed,
        "stride": stride,
        "policy_period": stride * suite.DT,
        "image_size": list(image_size),
        "expert_success_rate": round(
            sum(s["kept"] for s in by_task.values()) / max(1, sum(s["tries"] for s in by_task.values())), 4
        ),
        "tasks_short_of_episodes": short,
        "workers": workers,
        "generate_seconds": round(generated, 1),
        "seconds": round(time.perf_counter() - t0, 1),
        "pack_mib": pack["total_mib"],
        "by_task": by_task,
    }
    (Path(out) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def expert_success_rates(
    tasks: list[str], episodes: int, seed: int = suite.EVAL_SEED_BASE, workers: int = 0, progress: bool = True
) -> dict:
    """The experts alone on `episodes` seeds per task (no camera): {task: {"success_rate", "mean_steps"}}."""
    jobs = [(t, episodes, seed, episodes, None, 1, False) for t in tasks]
    results = run_parallel(_task_demos, jobs, workers or os.cpu_count() or 1, progress, "metaworld experts (tasks)")
    return {
        r["task"]: {
            "success_rate": round(sum(t["success"] for t in r["tries"]) / len(r["tries"]), 4),
            "episodes": len(r["tries"]),
            "mean_steps": round(float(np.mean([t["steps"] for t in r["tries"]])), 1),
        }
        for r in results
    }


def instruction_encoder(embeddings: str | Path | None = None):
    """The language encoder, or with `embeddings` its precomputed table (`write_instruction_table`)."""
    from mambavla.model.language import InstructionEncoder, PrecomputedInstructions

    if embeddings is None:
        return InstructionEncoder("minilm")
    return PrecomputedInstructions(read_instruction_table(embeddings))


def write_instruction_table(path: str | Path, encoder=None) -> Path:
    """Every suite instruction's token embeddings from the frozen encoder, as an .npz (texts, embeddings
    [N, L, width] zero-padded, lengths), for generating packs and evaluating where the encoder's weights are not."""
    from mambavla.model.language import InstructionEncoder

    encoder = encoder or InstructionEncoder("minilm")
    texts = sorted({text for text, _ in suite.TASKS.values()})
    rows = [encoder.encode_one(t).float().cpu().numpy() for t in texts]
    table = np.zeros((len(texts), max(len(r) for r in rows), rows[0].shape[1]), np.float32)
    for i, r in enumerate(rows):
        table[i, : len(r)] = r
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, texts=np.array(texts), embeddings=table, lengths=np.array([len(r) for r in rows]))
    return path


def read_instruction_table(path: str | Path) -> dict[str, np.ndarray]:
    """An instruction table from `write_instruction_table`, or a training pack's folder (its instructions.npz)."""
    path = Path(path)
    if path.is_dir():
        index = json.loads((path / "pack.json").read_text()) if (path / "pack.json").is_file() else None
        if index is None:
            raise FileNotFoundError(f"{path}: neither an instruction table (.npz) nor a training pack (no pack.json)")
        table = np.load(path / "instructions.npz")
        texts = index["instruction_texts"]
    elif path.is_file():
        table = np.load(path)
        texts = [str(t) for t in table["texts"]]
    else:
        raise FileNotFoundError(
            f"{path}: no instruction table; write one with "
            "`python scripts/metaworld_instructions.py FILE` where the encoder is installed"
        )
    missing = sorted({text for text, _ in suite.TASKS.values()} - set(texts))
    if missing:
        print(
            f"warning: {path} has no embedding for {len(missing)} suite instruction(s), e.g. {missing[0]!r}",
            file=sys.stderr,
        )
    return {t: table["embeddings"][i, : table["lengths"][i]].astype(np.float32) for i, t in enumerate(texts)}
