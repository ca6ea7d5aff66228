"""Demonstration collection: the scripted expert solves seeded episodes while a recorder thread turns
policy-rate snapshots into rosbag2 frames (render, robot state, commanded action).

The expert thread streams targets to franky; the recorder thread renders from snapshots taken by the
server thread, so neither rendering nor bag writing ever runs inside the 1 kHz loop.
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from mambavla import spaces
from mambavla.data.bags import EpisodeWriter
from mambavla.sim.config import cell_config
from mambavla.sim.expert import ScriptedExpert
from mambavla.sim.tasks import is_eval_seed
from mambavla.sim.workcell import Snapshot, Workcell


def episode_name(seed: int) -> str:
    return f"episode_{seed:07d}"


def check_seeds(seeds: list[int], out: Path, allow_eval_seeds: bool) -> None:
    """Refuse, before anything starts, seeds that are held out for evaluation or already recorded in `out`."""
    if not allow_eval_seeds and any(is_eval_seed(s) for s in seeds):
        raise ValueError(f"seeds {seeds[0]}..{seeds[-1]} reach the held-out evaluation range; "
                         "pass --eval to record them")
    existing = [s for s in seeds if (out / episode_name(s)).exists()]
    if existing:
        raise FileExistsError(f"{out / episode_name(existing[0])} exists already; choose another --seed or --out")


def record_episode(cell: Workcell, robot, gripper, path: str | Path, seed: int, task: str | None = None,
                   render: bool = True, compression: str = "message", image_format: str = "raw",
                   noise: float = 0.0, depth: bool = False, cell_name: str = "sim") -> dict:
    """Reset to `seed`, run the expert and record the episode as a bag at `path`. Returns its summary.
    `noise`: DART target-noise scale in metres (`ScriptedExpert`); the recorded actions stay the expert's.
    `depth`: every camera's aligned depth too (uint16 mm on `bags.depth_topic`)."""
    wall0 = time.perf_counter()
    spec = cell.reset(seed=seed, task=task)
    meta = {"task": spec.family, "instruction": spec.instruction, "seed": seed, "cube": spec.cube, "plate": spec.plate,
            "source": "mambavla-sim-expert", "held_out": is_eval_seed(seed), "dart_noise": noise, "cell": cell_name}
    cameras = cell.camera_names if render else ()
    writer = EpisodeWriter(path, cameras, cell.config.camera_size, cell.config.policy_dt, meta, compression,
                           image_format, depth_cameras=cameras if depth else ())
    samples = cell.start_sampling()
    t0 = cell.sim_time
    errors: list[BaseException] = []
    render_ms: list[float] = []

    def recorder() -> None:
        try:
            while (snap := samples.get()) is not None:
                write_snapshot(cell, writer, snap, t0, render_ms if render else None)
        except BaseException as err:  # surfaced in the caller's thread
            errors.append(err)

    thread = threading.Thread(target=recorder, name="episode-recorder", daemon=True)
    writer.write_instruction(0.0, spec.instruction)
    thread.start()
    try:
        success = ScriptedExpert(cell, robot, gripper, noise=noise).run(seed)
    except BaseException:
        errors.append(None)  # the expert failed: no partial episode is left behind (see below)
        raise
    finally:
        cell.stop_sampling()
        samples.put(None)
        thread.join()
        if errors:  # a partial bag would block re-running this seed and pass for an episode
            writer.abort()
            shutil.rmtree(path, ignore_errors=True)
    sim_seconds = cell.sim_time - t0
    if errors:
        raise errors[0]
    writer.close(success=bool(success), sim_seconds=round(sim_seconds, 3))
    return {"path": str(path), "task": spec.family, "instruction": spec.instruction, "seed": seed,
            "success": bool(success), "frames": writer.frames, "sim_seconds": round(sim_seconds, 3),
            "wall_seconds": round(time.perf_counter() - wall0, 3),
            "render_ms_per_frame": round(float(np.mean(render_ms)), 2) if render_ms else None}


def write_snapshot(cell: Workcell, writer: EpisodeWriter, snap: Snapshot, t0: float, render_ms: list | None) -> None:
    state = cell.robot_state(snap)
    depth = None
    if render_ms is not None:
        start = time.perf_counter()
        if writer.depth_cameras:
            images, depth = cell.render_rgbd(snap=snap)
        else:
            images = cell.render(snap=snap)
        render_ms.append(1000 * (time.perf_counter() - start))
    else:
        images = {}
    action = snap.action
    if action is None:  # before the expert's first command: hold where the arm is, gripper open
        action = np.concatenate([spaces.pose_to_vector(state.ee_position, state.ee_quat), [0.0]])
    writer.write_frame(snap.time - t0, images, state.joint_positions, state.finger_positions, state.ee_position,
                       state.ee_quat, action, state.joint_velocities, depth)


def collect(
    task: str,
    episodes: int,
    out: str | Path,
    seed: int = 0,
    camera_size: tuple[int, int] | None = None,
    allow_eval_seeds: bool = False,
    progress: bool = True,
    render: bool = True,
    speed: float = 1.0,
    compression: str = "message",
    image_format: str = "raw",
    rate_hz: float | None = None,
    attempts: int = 3,
    noise: float = 0.0,
    cell_name: str = "sim",
    depth: bool = False,
) -> dict:
    """Record `episodes` expert episodes with seeds seed, seed+1, ... into `out`; returns the summary
    (also written to `out/summary.json`)."""
    import franky
    from tqdm import tqdm

    from mambavla.realtime import keep_thread_scheduling

    out = Path(out)
    seeds = list(range(seed, seed + episodes))
    if rate_hz is not None and not 0 < rate_hz <= 1000:
        raise ValueError("--rate must be in (0, 1000] Hz")
    if episodes < 1:
        raise ValueError("--episodes must be at least 1")
    if depth and not render:
        raise ValueError("--depth records each camera's depth: it needs the cameras (leave out --no-render)")
    if not noise >= 0:
        raise ValueError(f"--dart-noise must be >= 0 metres, got {noise}")
    check_seeds(seeds, out, allow_eval_seeds)
    out.mkdir(parents=True, exist_ok=True)
    results, failures = [], []
    wall0 = time.perf_counter()
    config = cell_config(cell_name)
    config = config if rate_hz is None else replace(config, policy_dt=1.0 / rate_hz)

    def connect(cell: Workcell):
        with keep_thread_scheduling():
            robot = franky.Robot(cell.robot_ip, realtime_config=franky.RealtimeConfig.Ignore)
            return robot, franky.Gripper(cell.robot_ip)

    with Workcell(task=task, seed=seed, camera_size=camera_size, speed=speed, config=config) as cell:
        robot, gripper = connect(cell)
        sim0, steps0, wall_loop0 = cell.sim_time, cell.steps, time.perf_counter()
        bar = tqdm(seeds, desc=f"collect {task}", unit="episode", disable=not progress)
        for s in bar:
            for attempt in range(1, attempts + 1):
                try:
                    results.append(record_episode(cell, robot, gripper, out / episode_name(s), s, task, render=render,
                                                  compression=compression, image_format=image_format, noise=noise,
                                                  depth=depth, cell_name=cell_name))
                    break
                except franky.Exception as err:  # e.g. "UDP receive: Timeout" when the loaded host starves the loop
                    last_error = str(err)
                    print(f"\nwarning: seed {s}, attempt {attempt}/{attempts}: franky: {err}; reconnecting",
                          file=sys.stderr)
                    del robot, gripper
                    robot, gripper = connect(cell)
            else:
                failures.append({"seed": s, "error": last_error})
            done = sum(r["success"] for r in results)
            bar.set_postfix(success=f"{done}/{len(results)}", errors=len(failures))
        loop_wall = time.perf_counter() - wall_loop0
        sim_elapsed, steps = cell.sim_time - sim0, cell.steps - steps0
    summary = summarize(results)
    summary.update({
        "task": task, "cell": cell_name, "episodes": episodes, "out": str(out), "seeds": [seeds[0], seeds[-1]],
        "camera_size": list(cell.config.camera_size), "rate_hz": round(1.0 / cell.config.policy_dt, 3),
        "render": render, "dart_noise": noise, "speed": speed, "compression": compression,
        "image_format": image_format, "depth": depth,
        "wall_seconds": round(time.perf_counter() - wall0, 2),
        "real_time_factor": round(sim_elapsed / loop_wall, 3) if loop_wall > 0 else None,
        "server_loop_hz": round(steps / loop_wall, 1) if loop_wall > 0 else None,
        "failed_seeds": failures,  # franky faults on every attempt: no episode written for these
        "episodes_detail": results,
    })
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if render:
        from mambavla.data.preview import contact_sheet, write_png

        write_png(out / "preview.png", contact_sheet([r["path"] for r in results[:6]]))
    return summary


def summarize(results: list[dict]) -> dict:
    by_task: dict[str, list[bool]] = {}
    for r in results:
        by_task.setdefault(r["task"], []).append(r["success"])
    render = [r["render_ms_per_frame"] for r in results if r.get("render_ms_per_frame") is not None]
    return {
        "success_rate": round(float(np.mean([r["success"] for r in results])), 4) if results else 0.0,
        "success_by_task": {k: {"success_rate": round(float(np.mean(v)), 4), "episodes": len(v)}
                            for k, v in sorted(by_task.items())},
        "seconds_per_episode": round(float(np.mean([r["wall_seconds"] for r in results])), 3) if results else None,
        "sim_seconds_per_episode": round(float(np.mean([r["sim_seconds"] for r in results])), 3) if results else None,
        "frames": int(sum(r["frames"] for r in results)),
        "render_ms_per_frame_all_cameras": round(float(np.mean(render)), 2) if render else None,
    }
