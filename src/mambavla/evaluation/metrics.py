"""Scores of predicted chunks against the recording, one function for offline and live replay.

Row k of a chunk is the target for time stamp + k*dt; it is compared with the recorded reference at
that time (the measured end-effector pose, else the commanded targets; the recorded gripper command,
else closed/open fingers). Rows past the end of the recording are not scored.
Safety counts come from `ControllerCore.submit` itself: for each chunk a controller that tracks the
recorded pose up to the chunk's publication time is asked to accept it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mambavla import spaces
from mambavla.control.core import ControllerCore, rejection_kind
from mambavla.control.safety import SafetyLimits
from mambavla.evaluation.recording import PredictedChunk, Recording, interpolate
from mambavla.runtime.chunk import ActionChunk

UNITS = {"x": "mm", "y": "mm", "z": "mm", "rx": "deg", "ry": "deg", "rz": "deg", "gripper": "command"}
SCALE = np.array([1e3, 1e3, 1e3, np.degrees(1.0), np.degrees(1.0), np.degrees(1.0), 1.0])


@dataclass
class ChunkErrors:
    """Per chunk c, row k, action dimension d: prediction - reference in report units (NaN: not scored)."""

    errors: np.ndarray  # [C, H, 7]
    position_mm: np.ndarray  # [C, H] Euclidean
    rotation_deg: np.ndarray  # [C, H] geodesic angle
    gripper_agree: np.ndarray  # [C, H] 1.0 / 0.0 / NaN
    reference: np.ndarray  # [C, H, 7] reference in robot units


def chunk_errors(chunks: list[PredictedChunk], recording: Recording, horizon: int) -> ChunkErrors:
    c = len(chunks)
    errors = np.full((c, horizon, 7), np.nan)
    reference = np.full((c, horizon, 7), np.nan)
    position = np.full((c, horizon), np.nan)
    rotation = np.full((c, horizon), np.nan)
    agree = np.full((c, horizon), np.nan)
    pose_t, pose_v, _ = recording.pose_series()
    grip_t, grip_v = recording.gripper_series()
    for i, chunk in enumerate(chunks):
        h = min(horizon, len(chunk.absolute))
        at = chunk.times()[:h]
        ref = np.concatenate([interpolate(pose_t, pose_v, at), interpolate(grip_t, grip_v, at)], axis=1)
        pred = chunk.absolute[:h]
        reference[i, :h] = ref
        errors[i, :h] = (pred - ref) * SCALE
        position[i, :h] = np.linalg.norm(pred[:, :3] - ref[:, :3], axis=1) * 1e3
        ok = np.all(np.isfinite(ref[:, :6]), axis=1)
        if ok.any():
            _, q_pred = spaces.vector_to_pose(pred[ok, :6])
            _, q_ref = spaces.vector_to_pose(ref[ok, :6])
            rotation[i, :h][ok] = np.degrees(spaces.quat_angle_between(q_pred, q_ref))
        g = np.isfinite(ref[:, 6])
        agree[i, :h][g] = (pred[g, 6] > spaces.GRIPPER_CLOSE_THRESHOLD) == (ref[g, 6] > spaces.GRIPPER_CLOSE_THRESHOLD)
    return ChunkErrors(errors, position, rotation, agree, reference)


def _stats(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"n": 0}
    return {
        "n": int(v.size),
        "mean": float(v.mean()),
        "p50": float(np.percentile(v, 50)),
        "p95": float(np.percentile(v, 95)),
        "p99": float(np.percentile(v, 99)),
        "max": float(v.max()),
    }


def _nanmean(x, axis=None):
    x = np.asarray(x, dtype=np.float64)
    count = np.sum(np.isfinite(x), axis=axis)
    total = np.nansum(x, axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _value_at(chunk: PredictedChunk, t: float) -> np.ndarray:
    """A chunk's target at time t as the controller would hold it (first/last row outside its span)."""
    times = chunk.times()
    return np.array([np.interp(t, times, chunk.absolute[:, d]) for d in range(chunk.absolute.shape[1])])


def _seam_jumps(chunks: list[PredictedChunk]) -> list[tuple[float, float, bool]]:
    """(position mm, rotation deg, gripper flipped) between the old chunk's target and the new one's
    at the moment the new one is published (when the controller switches)."""
    jumps = []
    for old, new in zip(chunks, chunks[1:]):
        a, b = _value_at(old, new.published), _value_at(new, new.published)
        _, qa = spaces.vector_to_pose(a[:6])
        _, qb = spaces.vector_to_pose(b[:6])
        jumps.append(
            (
                float(np.linalg.norm(a[:3] - b[:3]) * 1e3),
                float(np.degrees(spaces.quat_angle_between(qa, qb))),
                bool((a[6] > spaces.GRIPPER_CLOSE_THRESHOLD) != (b[6] > spaces.GRIPPER_CLOSE_THRESHOLD)),
            )
        )
    return jumps


def safety_checks(
    chunks: list[PredictedChunk],
    recording: Recording,
    limits: SafetyLimits,
    action_names: tuple[str, ...] = spaces.ACTION_NAMES,
) -> dict:
    """How many chunks controller_node's own admission checks would reject, by kind, with an example each."""
    pose_t, _, quats = recording.pose_series()
    positions = spaces.vector_to_pose(recording.pose_series()[1])[0]
    by_kind: dict[str, int] = {}
    examples: dict[str, str] = {}
    accepted = 0
    per_chunk = []
    for chunk in chunks:
        core = ControllerCore(limits=limits, action_names=action_names)
        now = chunk.published
        lo, hi = np.searchsorted(pose_t, now - core.pose_history), np.searchsorted(pose_t, now, side="right")
        for k in range(lo, hi):
            core.record_pose(pose_t[k], positions[k], quats[k])
        if hi == lo:  # e.g. published after the recording ended
            reason = f"no measured pose within {core.pose_history} s before the chunk was published"
            by_kind["no pose"] = by_kind.get("no pose", 0) + 1
            examples.setdefault("no pose", reason)
            per_chunk.append(reason)
            continue
        core.activate(now)
        reason = core.submit(
            ActionChunk(
                actions=chunk.actions,
                dt=chunk.dt,
                stamp=chunk.stamp,
                action_names=action_names,
                action_mode=chunk.action_mode,
            ),
            now,
        )
        per_chunk.append(reason)
        if reason is None:
            accepted += 1
        else:
            kind = rejection_kind(reason)
            by_kind[kind] = by_kind.get(kind, 0) + 1
            examples.setdefault(kind, reason)
    return {
        "chunks": len(chunks),
        "accepted": accepted,
        "rejected": len(chunks) - accepted,
        "rejected_by_kind": by_kind,
        "example_reasons": examples,
        "per_chunk": per_chunk,
    }


def score(
    runs: list[tuple[list[PredictedChunk], Recording]],
    limits: SafetyLimits,
    action_names: tuple[str, ...] = spaces.ACTION_NAMES,
) -> tuple[dict, list[ChunkErrors]]:
    """Every metric over one or more replays (chunks, recording) as a JSON-ready dict, and the per-row
    errors of each replay behind them. Seams and safety are taken within each replay."""
    chunks = [c for run_chunks, _ in runs for c in run_chunks]
    if not chunks:
        return {"chunks": 0}, []
    horizon = max(len(c.actions) for c in chunks)
    errs = [chunk_errors(run_chunks, recording, horizon) for run_chunks, recording in runs]
    errors = np.concatenate([e.errors for e in errs])
    position = np.concatenate([e.position_mm for e in errs])
    rotation = np.concatenate([e.rotation_deg for e in errs])
    agree = np.concatenate([e.gripper_agree for e in errs])
    safety = [safety_checks(run_chunks, recording, limits, action_names) for run_chunks, recording in runs]
    by_kind: dict[str, int] = {}
    examples: dict[str, str] = {}
    for s in safety:
        for kind, n in s["rejected_by_kind"].items():
            by_kind[kind] = by_kind.get(kind, 0) + n
        for kind, reason in s["example_reasons"].items():
            examples.setdefault(kind, reason)
    jumps = [jump for run_chunks, _ in runs for jump in _seam_jumps(run_chunks)]
    dt = chunks[0].dt
    metrics = {
        "chunks": len(chunks),
        "scored_rows": int(np.isfinite(position).sum()),
        "reference": sorted({r.reference_source for _, r in runs}),
        "gripper_reference": sorted({r.gripper_source for _, r in runs}),
        "mae": {name: float(_nanmean(np.abs(errors[:, :, d]))) for d, name in enumerate(spaces.ACTION_NAMES)},
        "mae_units": UNITS,
        "position_error_mm": _stats(position),
        "rotation_error_deg": _stats(rotation),
        "by_horizon": {
            "t_s": [round(k * dt, 6) for k in range(horizon)],
            "position_mm": [float(v) for v in _nanmean(position, axis=0)],
            "rotation_deg": [float(v) for v in _nanmean(rotation, axis=0)],
            "gripper_abs": [float(v) for v in _nanmean(np.abs(errors[:, :, 6]), axis=0)],
        },
        "gripper_agreement": float(_nanmean(agree)),
        "seams": {
            "seams": len(jumps),
            "position_jump_mm": _stats([j[0] for j in jumps]),
            "rotation_jump_deg": _stats([j[1] for j in jumps]),
            "gripper_flips": sum(j[2] for j in jumps),
        },
        "safety": {
            "chunks": len(chunks),
            "accepted": sum(s["accepted"] for s in safety),
            "rejected": sum(s["rejected"] for s in safety),
            "rejected_by_kind": by_kind,
            "example_reasons": examples,
        },
        "inference_ms": _stats([c.inference_ms for c in chunks]),
        "observation_to_chunk_ms": _stats([(c.published - c.receipt) * 1e3 for c in chunks]),
    }
    return metrics, errs
