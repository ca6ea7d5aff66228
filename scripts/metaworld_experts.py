"""The scripted experts alone (no camera) on Meta-World seeds: each task's success rate and mean episode length,
the groups' means, the mean of the four groups and of the tasks, as JSON (the experts' row of docs/metaworld.md).
Runs in .venv-metaworld:

    .venv-metaworld/bin/python scripts/metaworld_experts.py [--episodes 10] [--seed 1000000] [--workers N] > OUT.json

Seeds default to the evaluation seeds (`suite.EVAL_SEED_BASE` + 0, 1, ...), the layouts `eval-sim --suite
metaworld` scores a policy on."""

from __future__ import annotations

import argparse
import json
import time

from mambavla.sim.metaworld import suite
from mambavla.sim.metaworld.demos import expert_success_rates

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["all"], help="tasks, groups or all (default)")
    parser.add_argument("--episodes", type=int, default=10, help="seeds per task (default 10)")
    parser.add_argument("--seed", type=int, default=suite.EVAL_SEED_BASE, help="first reset seed")
    parser.add_argument("--workers", type=int, default=0, help="processes (default 0: one per CPU core)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    tasks = expert_success_rates(suite.resolve(args.tasks), args.episodes, args.seed, args.workers, progress=False)
    groups = {
        g: round(sum(tasks[t]["success_rate"] for t in members) / len(members), 4)
        for g in suite.GROUP_NAMES
        if (members := [t for t in suite.GROUPS[g] if t in tasks])
    }
    print(json.dumps({
        "episodes_per_task": args.episodes,
        "first_seed": args.seed,
        "successes": round(sum(s["success_rate"] * s["episodes"] for s in tasks.values())),
        "episodes": sum(s["episodes"] for s in tasks.values()),
        "groups": groups,
        "mean_of_groups": round(sum(groups.values()) / len(groups), 4),
        "mean_success_rate": round(sum(s["success_rate"] for s in tasks.values()) / len(tasks), 4),
        "seconds": round(time.perf_counter() - t0, 1),
        "tasks": tasks,
    }, indent=2))
