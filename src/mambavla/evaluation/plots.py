"""Replay pictures (matplotlib, Agg): predicted vs recorded per dimension, error by horizon step, and a
contact sheet of the observations whose chunks were furthest off."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mambavla import spaces
from mambavla.evaluation.metrics import SCALE, UNITS, ChunkErrors
from mambavla.evaluation.recording import PredictedChunk, Recording


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_trajectories(path: Path, chunks: list[PredictedChunk], recording: Recording, title: str) -> Path:
    """One panel per action dimension: the recorded reference (black) and every predicted chunk (colour)."""
    plt = pyplot()
    pose_t, pose_v, _ = recording.pose_series()
    grip_t, grip_v = recording.gripper_series()
    t0 = recording.start or 0.0
    fig, axes = plt.subplots(len(spaces.ACTION_NAMES), 1, figsize=(11, 13), sharex=True)
    colours = plt.cm.viridis(np.linspace(0, 1, max(len(chunks), 1)))
    for d, (ax, name) in enumerate(zip(axes, spaces.ACTION_NAMES)):
        t, v = (pose_t, pose_v[:, d]) if d < 6 else (grip_t, grip_v)
        ax.plot(
            t - t0,
            v * SCALE[d],
            color="black",
            lw=1.6,
            label=f"recorded ({recording.reference_source if d < 6 else recording.gripper_source})",
        )
        for chunk, colour in zip(chunks, colours):
            ax.plot(chunk.times() - t0, chunk.absolute[:, d] * SCALE[d], color=colour, lw=0.8, alpha=0.8)
            ax.plot(chunk.stamp - t0, chunk.absolute[0, d] * SCALE[d], ".", color=colour, ms=3)
        ax.set_ylabel(f"{name} [{UNITS[name]}]")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper right", fontsize=8)
    axes[0].set_title(f"{title}: predicted chunks (colour, dot = observation) vs recorded (black)")
    axes[-1].set_xlabel("bag time [s]")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_horizon(path: Path, metrics: dict, title: str) -> Path:
    plt = pyplot()
    h = metrics["by_horizon"]
    t = np.asarray(h["t_s"])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key, label in zip(
        axes,
        ("position_mm", "rotation_deg", "gripper_abs"),
        ("position error [mm]", "rotation error [deg]", "|gripper error| [command]"),
    ):
        ax.plot(t, h[key], "o-", ms=3)
        ax.set_xlabel("horizon: time after the observation [s]")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    fig.suptitle(f"{title}: mean error by horizon step ({metrics['chunks']} chunks)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_worst_frames(
    path: Path, runs: list[tuple[str, list[PredictedChunk]]], errors: list[ChunkErrors], count: int = 8
) -> Path:
    """The observations whose chunks had the largest mean position error, all cameras side by side."""
    plt = pyplot()
    ranked = []
    for (name, chunks), err in zip(runs, errors):
        for i, chunk in enumerate(chunks):
            row = err.position_mm[i]
            if np.isfinite(row).any():
                ranked.append((float(np.nanmean(row)), name, chunk))
    ranked.sort(key=lambda item: -item[0])
    ranked = ranked[:count]
    cols = min(4, max(len(ranked), 1))
    rows = max(1, -(-len(ranked) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (error, name, chunk) in zip(axes.ravel(), ranked):
        ax.imshow(np.concatenate(list(chunk.images.values()), axis=1), interpolation="nearest")
        ax.set_title(f"{name} t={chunk.stamp:.2f} s\n{error:.0f} mm mean position error", fontsize=8)
    if not ranked:
        axes[0, 0].text(0.5, 0.5, "no scored chunks", ha="center")
    fig.suptitle(
        "observations with the largest chunk error (cameras left to right: " + ", ".join(ranked[0][2].images) + ")"
        if ranked
        else "no scored chunks",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
