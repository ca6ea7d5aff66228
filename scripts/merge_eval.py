"""Merge `mambavla eval-sim` runs made in chunks (e.g. two at a time on a small machine) into one summary:
reads each OUT/episodes.jsonl (in order: an episode that ended in a franky error, a host failure rather
than the policy's, may be re-run by a later run of the same seed, which replaces it), writes OUT_MERGED/eval.json (eval-sim's per-task layout, Wilson intervals)
and OUT_MERGED/success.png. Inference latency is per run only (eval.json of each chunk): episodes.jsonl
does not keep every step's timing, so the merged summary reports each chunk's p50 instead.

    python scripts/merge_eval.py OUT_MERGED EVAL_DIR [EVAL_DIR ...]
"""

from __future__ import annotations

import json
import sys
from dataclasses import fields
from pathlib import Path

from mambavla.sim.eval_media import success_chart
from mambavla.sim.evaluate import EpisodeResult, summarize


def load(folder: Path) -> list[EpisodeResult]:
    known = {f.name for f in fields(EpisodeResult)}
    results = []
    for line in (folder / "episodes.jsonl").read_text().splitlines():
        d = json.loads(line)
        d["closest"] = d.pop("closest_m", {})
        results.append(EpisodeResult(**{k: v for k, v in d.items() if k in known}))
    return results


def main(out: str, folders: list[str]) -> dict:
    episodes: dict[tuple[str, int], EpisodeResult] = {}
    replaced = []
    for folder in map(Path, folders):
        for r in load(folder):
            earlier = episodes.get((r.task, r.seed))
            if earlier is not None and earlier.end != "error":
                raise ValueError(f"{folder}: {r.task} seed {r.seed} is in two runs")
            if earlier is not None:  # the host failed that episode (franky error), not the policy: a later run replaces it
                replaced.append(f"{r.task} seed {r.seed}: {earlier.error}")
            episodes[(r.task, r.seed)] = r
    seen = set(episodes)
    by_task: dict[str, list[EpisodeResult]] = {}
    for (task, _), r in sorted(episodes.items()):
        by_task.setdefault(task, []).append(r)
    summary = summarize(by_task)
    summary["replaced_errors"] = replaced
    for task in summary["tasks"].values():
        task.pop("inference_ms")  # not in episodes.jsonl: see each run's eval.json
    summary["runs"] = {}
    for folder in folders:
        run = json.loads((Path(folder) / "eval.json").read_text()) if (Path(folder) / "eval.json").is_file() else {}
        summary["runs"][folder] = {"checkpoint": run.get("checkpoint"), "inference_ms": run.get("inference_ms"),
                                   "wall_seconds": run.get("wall_seconds"), "seeds": run.get("seeds")}
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "eval.json").write_text(json.dumps(summary, indent=2) + "\n")
    success_chart(summary, Path(out) / "success.png",
                  title=f"eval-sim, held-out seeds: mean success {summary['mean_success_rate']:.0%} "
                        f"({sum(t['successes'] for t in summary['tasks'].values())} / {len(seen)})")
    return summary


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    s = main(sys.argv[1], sys.argv[2:])
    for name, t in s["tasks"].items():
        print(f"{name:<11} {t['successes']:>3} / {t['episodes']:<3} ci95 {t['ci95']}  named cube {t['approached_named_cube_rate']:.0%}")
