"""Pictures of an evaluation: success-rate bar chart with 95% intervals, and episode GIFs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CAPTION_HEIGHT = 14  # px strip above each GIF frame


def success_chart(summary: dict, path: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(summary["tasks"])
    rates = np.array([summary["tasks"][t]["success_rate"] for t in tasks])
    lo = np.array([summary["tasks"][t]["ci95"][0] for t in tasks])
    hi = np.array([summary["tasks"][t]["ci95"][1] for t in tasks])
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(tasks), 3.6), dpi=100)
    ax.bar(tasks, rates, color="#4878a8", yerr=np.stack([rates - lo, hi - rates]), capsize=6, ecolor="black")
    for i, t in enumerate(tasks):
        s = summary["tasks"][t]
        ax.text(i, 1.03, f"{s['successes']}/{s['episodes']}", ha="center", va="bottom", fontsize=9)
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("success rate (95% Wilson interval)")
    ax.set_title(title or f"eval-sim: mean success {summary['mean_success_rate']:.0%}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def episodes_gif(episodes: list, path: str | Path, frame_seconds: float = 0.2, max_frames: int = 400) -> Path | None:
    """One GIF of the episodes' kept frames (front | wrist), captioned with task, seed, time and outcome.
    `frame_seconds`: simulated time between frames; played back at that rate."""
    from PIL import Image, ImageDraw

    frames = []
    for ep in episodes:
        outcome = "success" if ep.success else (ep.end.split(":")[0] or "failed")
        for i, rgb in enumerate(ep.frames):
            h, w = rgb.shape[:2]
            canvas = Image.new("RGB", (w, h + CAPTION_HEIGHT), (0, 0, 0))
            canvas.paste(Image.fromarray(rgb), (0, CAPTION_HEIGHT))
            ImageDraw.Draw(canvas).text((2, 1), f"{ep.task} {ep.seed} t={i * frame_seconds:4.1f}s {outcome}",
                                        fill=(120, 255, 120) if ep.success else (255, 200, 120))
            frames.append(canvas)
    if not frames:
        return None
    if len(frames) > max_frames:  # keep a GIF small: drop frames evenly
        frames = [frames[int(i)] for i in np.linspace(0, len(frames) - 1, max_frames)]
    path = Path(path)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(frame_seconds * 1000), loop=0,
                   optimize=True)
    return path


def trace_plot(rows: np.ndarray, columns: tuple[str, ...], path: str | Path, title: str = "") -> Path:
    """One episode's trace (rows of `columns`, as `mambavla.sim.evaluate.TRACE_COLUMNS`): per axis the
    controller's target, the measured hand and the named cube, in cm; then the finger width and the
    gripper command. Where a grasp went wrong shows as the hand's offset from the cube when the fingers closed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    col = {name: rows[:, i] for i, name in enumerate(columns)}
    t = col["t"] - col["t"][0] if len(rows) else col["t"]
    fig, axes = plt.subplots(4, 1, figsize=(7, 7.5), dpi=100, sharex=True)
    for ax, axis in zip(axes, "xyz"):
        ax.plot(t, 100 * col[f"target_{axis}"], "--", color="#999999", lw=1, label="target")
        ax.plot(t, 100 * col[f"hand_{axis}"], color="#4878a8", lw=1.5, label="hand")
        ax.plot(t, 100 * col[f"cube_{axis}"], ":", color="#c44e52", lw=2, label="named cube")
        ax.set_ylabel(f"{axis} (cm)")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper right", fontsize=8, ncol=3)
    axes[3].plot(t, 100 * col["finger_width"], color="#4878a8", label="finger width (cm)")
    axes[3].step(t, 8 * col["closed"], where="post", color="#dd8452", label="commanded closed")
    axes[3].set_ylabel("gripper")
    axes[3].set_xlabel("simulated time (s)")
    axes[3].legend(loc="upper right", fontsize=8)
    axes[3].grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
