"""Merge `mambavla eval-sim` runs made in chunks (e.g. two at a time on a small machine) into one summary:
OUT_MERGED/eval.json (eval-sim's per-task layout, Wilson intervals, every episode) and
OUT_MERGED/success.png. See `mambavla.sim.evaluate.merge_runs` for how a seed re-run after a franky
error is handled.

    python scripts/merge_eval.py OUT_MERGED EVAL_DIR [EVAL_DIR ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mambavla.sim.eval_media import success_chart
from mambavla.sim.evaluate import merge_runs

if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out, summary = Path(sys.argv[1]), merge_runs(sys.argv[2:])
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(summary, indent=2) + "\n")
    episodes = sum(t["episodes"] for t in summary["tasks"].values())
    successes = sum(t["successes"] for t in summary["tasks"].values())
    success_chart(summary, out / "success.png",
                  title=f"eval-sim, held-out seeds: mean success {summary['mean_success_rate']:.0%} "
                        f"({successes} / {episodes})")
    for name, t in summary["tasks"].items():
        print(f"{name:<11} {t['successes']:>3} / {t['episodes']:<3} ci95 {t['ci95']}  named cube "
              f"{t['approached_named_cube_rate']:.0%}")
