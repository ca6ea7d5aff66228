"""`mambavla replay` without the argument parsing: bags in, `replay.json` and pictures out."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from mambavla.control.safety import SafetyLimits
from mambavla.data.dataset import find_episodes
from mambavla.evaluation.bag import BagInfo, ReplayError
from mambavla.evaluation.metrics import score
from mambavla.evaluation.plots import plot_horizon, plot_trajectories, plot_worst_frames
from mambavla.runtime.depth_frames import MAX_OFFSET
from mambavla.runtime.schedule import ScheduleConfig


def find_bags(path: str | Path) -> list[Path]:
    """The bag at `path`, or the bags directly inside it."""
    path = Path(path)
    if not path.exists():
        raise ReplayError(f"{path}: no such bag or directory")
    bags = find_episodes(path) if path.is_dir() else []
    if not bags:
        raise ReplayError(f"{path}: not a rosbag2 directory (no metadata.yaml or .mcap/.db3 file) and no bags inside")
    return bags


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def write_report(out: Path, runs: list, limits: SafetyLimits, action_names, header: dict) -> dict:
    """Score `runs` ([(name, chunks, recording)]), write replay.json and the pictures; returns the summary."""
    out.mkdir(parents=True, exist_ok=True)
    metrics, errors = score([(c, r) for _, c, r in runs], limits, tuple(action_names))
    per_bag = {}
    pictures = []
    for name, chunks, recording in runs:
        bag_metrics, _ = score([(chunks, recording)], limits, tuple(action_names))
        per_bag[name] = {k: bag_metrics.get(k) for k in ("chunks", "mae", "gripper_agreement", "safety")}
        if chunks:
            pictures.append(str(plot_trajectories(out / f"trajectories_{name}.png", chunks, recording, name)))
    if metrics.get("chunks"):
        pictures.append(str(plot_horizon(out / "horizon_error.png", metrics, header.get("checkpoint", ""))))
        pictures.append(str(plot_worst_frames(out / "worst_frames.png", [(n, c) for n, c, _ in runs], errors)))
    summary = _jsonable({**header, "metrics": metrics, "bags": per_bag, "pictures": pictures})
    (out / "replay.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def replay_bags(
    infos: list[BagInfo],
    runtime,
    instruction: str | None,
    schedule: ScheduleConfig,
    limits: SafetyLimits,
    out: Path,
    latency: str = "measured",
    progress: bool = True,
    log=print,
    header: dict | None = None,
    max_depth_offset: float = MAX_OFFSET,
) -> dict:
    """Offline replay of every bag (as `inspect` found its roles for the runtime) with one runtime; returns the
    summary written to out/replay.json (`header` first: what the caller adds, such as the checkpoint)."""
    from tqdm import tqdm

    from mambavla.evaluation.offline import replay_offline

    runs, notes, recorded_s, wall_s, dropped = [], {}, 0.0, 0.0, 0
    for info in tqdm(infos, desc="bags", unit="bag", disable=not progress or len(infos) < 2):
        path = info.path
        for note in info.notes:
            if not note.startswith(("camera", "joint_states", "ee_pose", "instruction", "actions")):
                log(f"{path.name}: {note}")
        notes[path.name] = {"roles": info.roles, "notes": info.notes}
        result = replay_offline(runtime, info, schedule, instruction, latency, progress, max_depth_offset)
        runs.append((path.name, result.chunks, result.recording))
        recorded_s += info.duration
        wall_s += result.wall_s
        dropped += result.frames_dropped
    header = {
        **(header or {}),
        "mode": "offline",
        "bags": [str(info.path) for info in infos],
        "roles": notes,
        "schedule": dataclasses.asdict(schedule),
        "latency_model": latency,
        "recorded_s": round(recorded_s, 3),
        "replay_wall_s": round(wall_s, 3),
        "wall_s_per_recorded_minute": round(60.0 * wall_s / recorded_s, 2) if recorded_s > 0 else None,
        "frames_dropped": dropped,
    }
    return write_report(out, runs, limits, runtime.action_names, header)
