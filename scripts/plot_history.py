"""Step latency against history length, Mamba vs Transformer fusion, from `mambavla bench --json` files.

    python scripts/plot_history.py docs/benchmarks/fusions/bench_base_h100_history.json \
        docs/benchmarks/fusions/bench_base_cpu_history.json --out docs/benchmarks/fusions/history_latency.png

One panel per file (its device and preset in the title); p50 with a p95 band per fusion, labelled with the
mode the benchmark ran it in (CUDA graph or eager), on log-log axes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("benchmarks", nargs="+", help="JSON files written by `mambavla bench --json --out`")
    parser.add_argument("--out", required=True, help="PNG to write")
    args = parser.parse_args()
    fig, axes = plt.subplots(1, len(args.benchmarks), figsize=(5.5 * len(args.benchmarks), 4.2), squeeze=False)
    for ax, path in zip(axes[0], args.benchmarks):
        bench = json.loads(Path(path).read_text())
        swept = {name: f["history_sweep"] for name, f in bench["fusions"].items() if f.get("history_sweep")}
        if not swept:
            raise SystemExit(f"{path}: no history_sweep (run `mambavla bench` with --history)")
        for name, sweep in swept.items():
            frames = [p["history_frames"] for p in sweep["points"]]
            p50 = [p["p50"] for p in sweep["points"]]
            ax.plot(frames, p50, marker="o", label=f"{name} ({sweep['mode'].replace('_', ' ')})")
            ax.fill_between(frames, p50, [p["p95"] for p in sweep["points"]], alpha=0.2)
        device = bench.get("device_name") or bench.get("device")
        ax.set(xscale="log", yscale="log", xlabel="history (frames in context)",
               ylabel="step latency, ms (p50, band to p95)",
               title=f"{bench['preset']} on {device}, {bench.get('dtype', '')}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(json.dumps({"out": args.out, "panels": len(args.benchmarks)}))


if __name__ == "__main__":
    main()
