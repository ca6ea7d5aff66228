"""Compare policies evaluated with `mambavla eval-sim` (or merged by scripts/merge_eval.py) on the same
held-out seeds: one grouped bar chart (success rate per task, 95% Wilson interval) and a JSON table.
`--seeds-below S` keeps only episodes with seed < S, so a policy evaluated on more seeds is compared on the
seeds every policy ran; a task a policy was not evaluated on is left out of its bars.

    python scripts/compare_evals.py OUT_PREFIX NAME=EVAL_DIR [NAME=EVAL_DIR ...] [--seeds-below S]
    -> OUT_PREFIX.png, OUT_PREFIX.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from mambavla.sim.evaluate import EpisodeResult, summarize


def table(folder: Path, seeds_below: int | None) -> dict[str, dict]:
    """Per task: eval-sim's own summary (`summarize`: successes, rate, Wilson interval, ...) of the kept
    episodes of FOLDER/eval.json, without the episode list, plus the first and last seed kept."""
    out = {}
    for task, summary in json.loads((folder / "eval.json").read_text())["tasks"].items():
        kept = [EpisodeResult.from_dict(e) for e in summary["episodes_detail"]
                if seeds_below is None or e["seed"] < seeds_below]
        if kept:
            rows = summarize({task: kept})["tasks"][task]
            out[task] = {**{k: v for k, v in rows.items() if k != "episodes_detail"},
                         "seeds": [min(r.seed for r in kept), max(r.seed for r in kept)]}
    return out


def chart(tables: dict[str, dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(t for rows in tables.values() for t in rows))
    width = 0.8 / len(tables)
    fig, ax = plt.subplots(figsize=(2 + 2.2 * len(tasks), 4.8), dpi=100)
    for i, (name, rows) in enumerate(tables.items()):
        x = np.array([k for k, t in enumerate(tasks) if t in rows]) + (i - (len(tables) - 1) / 2) * width
        rate = np.array([rows[t]["success_rate"] for t in tasks if t in rows])
        lo, hi = (np.array([rows[t]["ci95"][j] for t in tasks if t in rows]) for j in (0, 1))
        ax.bar(x, rate, width, label=name, yerr=np.stack([rate - lo, hi - rate]), capsize=3, ecolor="black")
        for xi, t in zip(x, [t for t in tasks if t in rows]):
            ax.text(xi, 1.02, f"{rows[t]['successes']}/{rows[t]['episodes']}", ha="center", va="bottom", fontsize=7,
                    rotation=90)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylim(0, 1.2)
    ax.set_ylabel("success rate (95% Wilson interval)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="OUT_PREFIX: writes OUT_PREFIX.png and OUT_PREFIX.json")
    parser.add_argument("runs", nargs="+", help="NAME=EVAL_DIR (a folder with eval.json)")
    parser.add_argument("--seeds-below", type=int, default=None, help="keep episodes with seed < S only")
    args = parser.parse_args()
    runs = {}
    for item in args.runs:
        name, sep, folder = item.partition("=")
        if not sep or not (Path(folder) / "eval.json").is_file():
            parser.error(f"{item!r}: expected NAME=EVAL_DIR with EVAL_DIR/eval.json")
        runs[name] = table(Path(folder), args.seeds_below)
    seeds = f"seeds < {args.seeds_below}" if args.seeds_below is not None else "all seeds evaluated"
    chart(runs, args.out.with_suffix(".png"), f"eval-sim, held-out layouts ({seeds})")
    table = {"seeds_below": args.seeds_below, "policies": runs}
    args.out.with_suffix(".json").write_text(json.dumps(table, indent=2) + "\n")
    for name, rows in runs.items():
        print(f"{name:<28}", "  ".join(f"{t} {r['successes']}/{r['episodes']}" for t, r in rows.items()))
