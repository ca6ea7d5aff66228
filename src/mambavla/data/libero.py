"""Import LIBERO HDF5 demonstrations as episode bags, so LIBERO data trains through the same dataset.

LIBERO layout (robomimic style): `data/demo_N/obs/{agentview_rgb, eye_in_hand_rgb, ee_states,
gripper_states, joint_states}`, `data/demo_N/actions` (T, 7), and the language instruction in the
JSON attribute `data.attrs["problem_info"]["language_instruction"]` (else taken from the file name).

Mapping onto `mambavla.spaces`:
- cameras: agentview -> `front`, eye_in_hand -> `wrist`; LIBERO renders upside down, so frames are
  flipped vertically (`flip_images`).
- ee pose: `ee_states` is position + base-frame axis-angle; stored as a pose, so proprio comes out
  through `spaces.pose_to_vector` like every other episode. Fingers: `gripper_states`.
- actions: LIBERO's are OSC deltas in [-1, 1]; converted to absolute targets
  p = p_ee + 0.05 * a[:3], R = exp(0.5 * a[3:6]) R_ee (robosuite's default OSC output scale),
  gripper (a[6] + 1) / 2, so 1 = close as in our convention.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mambavla import spaces
from mambavla.data.bags import EpisodeError, EpisodeWriter

LIBERO_DT = 0.05  # LIBERO demonstrations are recorded at 20 Hz
OSC_POSITION_SCALE = 0.05  # m per unit action
OSC_ROTATION_SCALE = 0.5  # rad per unit action
CAMERAS = {"agentview_rgb": "front", "eye_in_hand_rgb": "wrist"}


def libero_instruction(f, path: Path) -> str:
    info = f["data"].attrs.get("problem_info")
    if info is not None:
        if isinstance(info, bytes):
            info = info.decode()
        try:
            text = json.loads(info).get("language_instruction", "")
            if text:
                return str(text).strip()
        except (json.JSONDecodeError, AttributeError):
            pass
    return path.stem.removesuffix("_demo").replace("_", " ").strip()


def libero_actions(actions: np.ndarray, ee_states: np.ndarray) -> np.ndarray:
    """(T, 7) LIBERO OSC delta actions + (T, 6) ee states -> (T, 7) absolute actions in spaces layout."""
    ee_pos, ee_quat = ee_states[:, :3], spaces.rotvec_to_quat(ee_states[:, 3:6])
    target_pos = ee_pos + OSC_POSITION_SCALE * actions[:, :3]
    target_quat = spaces.quat_multiply(spaces.rotvec_to_quat(OSC_ROTATION_SCALE * actions[:, 3:6]), ee_quat)
    gripper = np.clip((actions[:, 6:7] + 1.0) / 2.0, 0.0, 1.0)
    return np.concatenate([spaces.pose_to_vector(target_pos, target_quat), gripper], axis=1)


def import_libero(hdf5_path: str | Path, out_dir: str | Path, flip_images: bool = True) -> list[Path]:
    """Write one bag per demo of a LIBERO HDF5 file into out_dir; returns the bag paths."""
    import h5py

    hdf5_path, out_dir = Path(hdf5_path), Path(out_dir)
    try:
        f = h5py.File(hdf5_path, "r")
    except OSError as err:
        raise EpisodeError(f"{hdf5_path}: not a readable HDF5 file ({err})") from err
    written = []
    with f:
        if "data" not in f:
            raise EpisodeError(f"{hdf5_path}: no 'data' group (not a LIBERO/robomimic file)")
        instruction = libero_instruction(f, hdf5_path)
        demos = sorted(f["data"].keys(), key=lambda k: int(k.split("_")[-1]) if k.split("_")[-1].isdigit() else k)
        if not demos:
            raise EpisodeError(f"{hdf5_path}: no demonstrations under data/")
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in demos:
            demo = f["data"][name]
            obs = demo["obs"]
            missing = [k for k in (*CAMERAS, "ee_states", "gripper_states", "joint_states") if k not in obs]
            if missing or "actions" not in demo:
                raise EpisodeError(
                    f"{hdf5_path}: data/{name} lacks {', '.join(missing + ([] if 'actions' in demo else ['actions']))}"
                )
            images = {cam: np.asarray(obs[key]) for key, cam in CAMERAS.items()}
            if flip_images:
                images = {cam: img[:, ::-1] for cam, img in images.items()}
            ee, fingers, joints = (
                np.asarray(obs[k], dtype=np.float64) for k in ("ee_states", "gripper_states", "joint_states")
            )
            actions = libero_actions(np.asarray(demo["actions"], dtype=np.float64), ee)
            size = images["front"].shape[1:3]
            path = out_dir / f"{hdf5_path.stem}_{name}"
            meta = {
                "task": hdf5_path.stem.removesuffix("_demo"),
                "instruction": instruction,
                "seed": None,
                "success": True,
                "source": f"libero:{hdf5_path.name}:{name}",
            }
            with EpisodeWriter(path, tuple(images), size, LIBERO_DT, meta) as writer:
                writer.write_instruction(0.0, instruction)
                for t in range(len(actions)):
                    writer.write_frame(
                        t * LIBERO_DT,
                        {c: img[t] for c, img in images.items()},
                        joints[t, :7],
                        fingers[t, :2],
                        ee[t, :3],
                        spaces.rotvec_to_quat(ee[t, 3:6]),
                        actions[t],
                    )
            written.append(path)
    return written
