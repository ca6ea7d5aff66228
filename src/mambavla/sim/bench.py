"""Workcell measurements, printed as JSON: `python -m mambavla.sim.bench [--seconds S] [--size H W]`.

- idle: franky-sim's server loop rate and real-time factor with no client and no rendering;
- render: ms per frame per camera, rendered from snapshots on this (non-server) thread;
- rendering: loop rate and real-time factor while a thread renders both cameras back to back;
- tracking: the same with franky's CartesianImpedanceTracker streaming targets (the collection load).
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import numpy as np


def _rate(cell, seconds: float) -> dict:
    steps0, sim0, wall0 = cell.steps, cell.sim_time, time.perf_counter()
    time.sleep(seconds)
    wall = time.perf_counter() - wall0
    return {"loop_hz": round((cell.steps - steps0) / wall, 1),
            "real_time_factor": round((cell.sim_time - sim0) / wall, 3)}


def measure(seconds: float = 3.0, camera_size: tuple[int, int] = (128, 128), frames: int = 30) -> dict:
    import franky

    from mambavla.realtime import keep_thread_scheduling
    from mambavla.sim.workcell import Workcell

    result: dict = {"camera_size": list(camera_size)}
    with Workcell(task="lift", seed=0, camera_size=camera_size) as cell:
        time.sleep(0.5)
        result["idle"] = _rate(cell, seconds)
        cell.render()  # create the GL context outside the timing
        per_camera = {}
        for name in cell.camera_names:
            times = []
            for _ in range(frames):
                start = time.perf_counter()
                cell.render(cameras=(name,))
                times.append(1000 * (time.perf_counter() - start))
            per_camera[name] = {"median": round(float(np.median(times)), 2),
                                "p90": round(float(np.percentile(times, 90)), 2)}
        result["render_ms_per_frame"] = per_camera

        stop = threading.Event()
        rendered = [0]

        def render_loop() -> None:
            while not stop.is_set():
                cell.render()
                rendered[0] += 1

        thread = threading.Thread(target=render_loop, daemon=True)
        thread.start()
        wall0 = time.perf_counter()
        result["rendering"] = _rate(cell, seconds)
        result["rendering"]["frames_per_s_both_cameras"] = round(rendered[0] / (time.perf_counter() - wall0), 1)

        with keep_thread_scheduling():
            robot = franky.Robot(cell.robot_ip, realtime_config=franky.RealtimeConfig.Ignore)
        with franky.CartesianImpedanceTracker(robot, translational_stiffness=1000.0, period=0.01) as tracker:
            pose = robot.current_pose.end_effector_pose
            done = threading.Event()

            def stream() -> None:
                while not done.is_set() and tracker.tick():
                    tracker.set_target(pose)

            streamer = threading.Thread(target=stream, daemon=True)
            streamer.start()
            result["tracking_and_rendering"] = _rate(cell, seconds)
            done.set()
            streamer.join()
        stop.set()
        thread.join()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--size", type=int, nargs=2, default=(128, 128), metavar=("HEIGHT", "WIDTH"))
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.seconds, tuple(args.size)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
