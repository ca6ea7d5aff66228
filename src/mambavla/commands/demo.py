"""`mambavla demo`: the simulated workcell, controller_node and policy_node, started as child processes
with the same config/*.yaml the launch files use; publishes the task's instruction and reports.

Writes `summary.json`, `demo.png` (final front camera frame | top view over the workspace box of the
targets the policy asked for, the targets the controller streamed and the end-effector path) and the
node logs to the output folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="run the simulated arm following the task's instruction (sim + controller + "
                                           "policy nodes)")
    p.add_argument("--task", default="lift", help="workcell task: lift, place, push-left, push-right, push, all "
                                                  "(default: lift)")
    p.add_argument("--seed", type=int, default=4,
                   help="episode seed (default: 4, a lift layout the shipped policy was trained on; held-out seeds "
                        "start at 1000000)")
    p.add_argument("--checkpoint", default=os.environ.get("MAMBAVLA_CHECKPOINT", ""),
                   help="checkpoint folder (default: $MAMBAVLA_CHECKPOINT, else the policy shipped with the package)")
    p.add_argument("--untrained", action="store_true",
                   help="run an UNTRAINED --preset instead (the stack without a policy)")
    p.add_argument("--preset", default="tiny", help="preset for --untrained (default: tiny)")
    p.add_argument("--seconds", type=float, default=25.0,
                   help="how long the policy runs after the instruction, in simulated seconds (default: 25, "
                        "eval-sim's episode limit)")
    p.add_argument("--wall-clock", action="store_true",
                   help="run the nodes on the wall clock instead of the simulator's /clock (then the simulation, "
                        "slower than real time on a loaded CPU, no longer moves at the pace the policy and controller "
                        "assume)")
    p.add_argument("--device", default="cpu", help="policy device (default: cpu)")
    p.add_argument("--controller-rate", type=float, default=0.0,
                   help="controller target rate in Hz (default: config/controller_sim.yaml)")
    p.add_argument("--out", default="", help="output folder (default: runs/demo/<time>)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 <pid>` shows where a run hangs
    os.environ.setdefault("MUJOCO_GL", "osmesa")
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    if args.seconds <= 0:
        raise ValueError("--seconds must be positive")
    if args.untrained:
        args.checkpoint = ""
    elif not args.checkpoint:
        from mambavla.model.checkpoint import shipped_checkpoint

        args.checkpoint = str(shipped_checkpoint())
    if args.checkpoint and not Path(args.checkpoint).is_dir():
        raise FileNotFoundError(f"checkpoint folder not found: {args.checkpoint}")
    out = Path(args.out or f"runs/demo/{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print

    from mambavla.model.config import preset

    if args.checkpoint:
        from mambavla.model.checkpoint import load_config

        config = load_config(args.checkpoint)
        policy_source = f"checkpoint {args.checkpoint}"
    else:
        config = preset(args.preset)
        policy_source = f"UNTRAINED preset {args.preset!r}"
        log(f"--untrained: running an UNTRAINED {args.preset!r} policy. Its actions are noise, so expect the "
            f"controller to reject most chunks and the arm to hold.")

    _exit_if_stuck(budget=20 * args.seconds + 600.0)  # simulated seconds can run 10x slower than wall time here
    summary = _run_stack(args, config, out, log)
    summary["policy"] = policy_source
    summary["untrained"] = not args.checkpoint
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary, log)
    return 0


def _exit_if_stuck(budget: float) -> None:
    """Whatever blocks, the demo ends: after `budget` s print every thread's stack and exit; the nodes
    get SIGINT from the kernel when their parent dies (see mambavla.ros.launcher)."""
    import faulthandler
    import threading

    def watchdog():
        time.sleep(budget)
        print(f"mambavla demo: still running after {budget:.0f} s; giving up. Thread stacks:", file=sys.stderr)
        faulthandler.dump_traceback(all_threads=True)
        os._exit(3)

    threading.Thread(target=watchdog, name="demo-watchdog", daemon=True).start()


def _run_stack(args, config, out: Path, log) -> dict:
    import rclpy
    from std_msgs.msg import String

    from mambavla.ros.launcher import NodeProcess
    from mambavla.ros.qos import LATCHED_QOS

    # A private DDS domain unless the caller chose one: the demo must not drive someone else's nodes.
    if "ROS_DOMAIN_ID" not in os.environ:
        os.environ["ROS_DOMAIN_ID"] = str(100 + os.getpid() % 100)
    rclpy.init()
    monitor = _Monitor()
    processes: list[NodeProcess] = []
    summary: dict = {"task": args.task, "seed": args.seed, "seconds": args.seconds, "output": str(out)}
    try:
        log("starting sim_node ...")
        sim_time = not args.wall_clock
        # a depth checkpoint gets the cameras' aligned depth, as sim.launch.py's depth:=auto gives it
        sim = NodeProcess("sim_node", ["sim_node.yaml"],
                          {"task": args.task, "seed": args.seed, "publish_clock": sim_time,
                           "camera_size": list(config.image_size), "depth": config.use_depth}, out / "sim_node.log")
        processes.append(sim)
        task = monitor.wait(lambda: monitor.task, 90.0, "sim_node to publish /sim/task", processes)
        log(f"workcell up on {task['robot_ip']}: {task['instruction']!r}")
        controller_params = {"robot_ip": task["robot_ip"], "use_sim_time": sim_time}
        if args.controller_rate > 0:
            controller_params["rate_hz"] = args.controller_rate
        processes.append(NodeProcess("controller_node", ["controller.yaml", "controller_sim.yaml"], controller_params,
                                     out / "controller_node.log"))
        policy_params = {"checkpoint": args.checkpoint, "preset": args.preset, "device": args.device,
                         "use_sim_time": sim_time}
        processes.append(NodeProcess("policy_node", ["policy.yaml", "policy_sim.yaml"], policy_params,
                                     out / "policy_node.log"))
        monitor.wait(lambda: monitor.status("controller").get("state") == "IDLE", 90.0, "controller_node to track",
                     processes)
        monitor.wait(lambda: monitor.status("policy").get("state") == "WAITING", 300.0, "policy_node to load",
                     processes)
        start_pose = monitor.pose()
        pub = monitor.node.create_publisher(String, "/instruction", LATCHED_QOS)
        pub.publish(String(data=task["instruction"]))
        clock = monitor.sim_time if sim_time else time.monotonic
        log(f"instruction published; running for {args.seconds:.0f} {'simulated ' if sim_time else ''}s ...")
        t0, wall0 = clock(), time.monotonic()
        while clock() - t0 < args.seconds and not monitor.success:
            if not all(p.alive for p in processes):
                dead = [p.node for p in processes if not p.alive]
                logs = "\n".join(p.log_tail() for p in processes if not p.alive)
                raise RuntimeError(f"node(s) exited: {dead}\n" + logs)
            monitor.spin.raise_if_failed("the run to end (/clock would stand still)")
            time.sleep(0.1)
        summary["elapsed_s"] = round(clock() - t0, 2)
        summary["clock"] = "simulated (/clock)" if sim_time else "wall"
        summary["wall_s"] = round(time.monotonic() - wall0, 2)
        summary.update(_collect(monitor, task, start_pose))
        _write_picture(out / "demo.png", monitor, task)
        summary["picture"] = str(out / "demo.png")
    finally:
        for proc in reversed(processes):  # policy first, then the controller stops the arm, then the sim
            proc.stop()
        try:
            monitor.close()
        finally:
            rclpy.try_shutdown()
    return summary


class _Monitor:
    """Records what the nodes publish: diagnostics, poses, targets, chunks, the last front frame."""

    def __init__(self):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseStamped
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import Image
        from std_msgs.msg import Bool, String
        from trajectory_msgs.msg import JointTrajectory

        from mambavla.ros.qos import COMMAND_QOS, DIAGNOSTICS_QOS, LATCHED_QOS, SENSOR_QOS, STATE_QOS
        from mambavla.ros.spin import BackgroundSpin

        self.node = rclpy.create_node("mambavla_demo")
        self.statuses: dict[str, dict] = {}
        self.poses: list[np.ndarray] = []
        self.targets: list[np.ndarray] = []
        self.requested: list[np.ndarray] = []  # chunk rows as the policy published them (absolute mode)
        self.chunks = 0
        self.frame = None
        self.task = None
        self.success = False
        n = self.node
        n.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, DIAGNOSTICS_QOS)
        n.create_subscription(PoseStamped, "/ee_pose", lambda m: self.poses.append(_position(m)), STATE_QOS)
        n.create_subscription(PoseStamped, "/controller_node/target_pose", lambda m: self.targets.append(_position(m)),
                              STATE_QOS)
        n.create_subscription(JointTrajectory, "/action_chunk", self._on_chunk, COMMAND_QOS)
        n.create_subscription(Image, "/cameras/front/image_raw", lambda m: setattr(self, "frame", m), SENSOR_QOS)
        n.create_subscription(String, "/sim/task", lambda m: setattr(self, "task", json.loads(m.data)), LATCHED_QOS)
        n.create_subscription(Bool, "/sim/success", lambda m: setattr(self, "success", self.success or m.data),
                              STATE_QOS)
        n.create_subscription(Clock, "/clock", lambda m: setattr(self, "clock", m.clock.sec + m.clock.nanosec * 1e-9),
                              10)
        self.clock = 0.0
        self.spin = BackgroundSpin(n)

    def _on_diag(self, msg) -> None:
        from mambavla.ros.diagnostics import status_values

        for status in msg.status:
            self.statuses[status.name.split("/")[-1].replace("_node", "")] = status_values(msg, status.name)

    def _on_chunk(self, msg) -> None:
        self.chunks += 1
        if not msg.header.frame_id.endswith("/ee_at_stamp") and list(msg.joint_names[:3]) == ["x", "y", "z"]:
            self.requested.extend(np.array(p.positions[:3]) for p in msg.points)  # absolute targets asked for

    def sim_time(self) -> float:
        """The simulator's time from /clock (seconds)."""
        return self.clock

    def status(self, name: str) -> dict:
        return dict(self.statuses.get(name) or {})

    def pose(self) -> np.ndarray | None:
        return self.poses[-1] if self.poses else None

    def wait(self, predicate, timeout: float, what: str, processes) -> object:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            result = predicate()
            if result:
                return result
            dead = [p for p in processes if not p.alive]
            if dead:
                raise RuntimeError(f"{dead[0].node} exited while waiting for {what}:\n{dead[0].log_tail()}")
            self.spin.raise_if_failed(what)
            time.sleep(0.05)
        raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")

    def close(self) -> None:
        self.spin.stop()


def _position(msg) -> np.ndarray:
    p = msg.pose.position
    return np.array([p.x, p.y, p.z])


def _number(value, default=float("nan")) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _collect(monitor: _Monitor, task: dict, start_pose) -> dict:
    ctrl, policy, sim = monitor.status("controller"), monitor.status("policy"), monitor.status("sim")
    poses = np.array(monitor.poses) if monitor.poses else np.zeros((0, 3))
    end_pose = poses[-1] if len(poses) else None
    return {
        "instruction": task["instruction"],
        "success": bool(monitor.success),
        "chunks_published": int(_number(policy.get("chunks_published"), 0)),
        "chunks_executed": int(_number(ctrl.get("chunks_accepted"), 0)),
        "chunks_rejected": int(_number(ctrl.get("chunks_rejected"), 0)),
        "rejections_by_kind": json.loads(ctrl.get("rejections_by_kind") or "{}"),
        "last_rejection": ctrl.get("last_rejection", ""),
        "controller_state": ctrl.get("state", ""),
        "latency_ms": {k: _number(policy.get(f"{k}_latency_ms")) for k in ("p50", "p99", "mean")},
        "inference_ms_mean": _number(policy.get("mean_inference_ms")),
        "frames_dropped": int(_number(policy.get("frames_dropped"), 0)),
        "controller_rate_hz": _number(ctrl.get("target_rate_hz")),
        "controller_jitter_ms": _number(ctrl.get("target_jitter_ms")),
        "controller_max_period_ms": _number(ctrl.get("target_max_period_ms")),
        "sim_loop_hz": _number(sim.get("sim_loop_hz")),
        "sim_realtime_factor": _number(sim.get("realtime_factor")),
        "ee_moved_m": (float(np.linalg.norm(end_pose - start_pose))
                       if end_pose is not None and start_pose is not None else 0.0),
        "ee_path_m": float(np.linalg.norm(np.diff(poses, axis=0), axis=1).sum()) if len(poses) > 1 else 0.0,
        "tracking_error_m": _number(ctrl.get("tracking_error")),
    }


def _print_summary(s: dict, log) -> None:
    log(f"\n{s['policy']} on task {s['task']!r}: {s['instruction']!r}")
    log(f"  success:            {s['success']}")
    log(f"  chunks published:   {s['chunks_published']}   executed: {s['chunks_executed']}   "
        f"rejected: {s['chunks_rejected']} {s['rejections_by_kind'] or ''}")
    if s["last_rejection"]:
        log(f"  last rejection:     {s['last_rejection']}")
    lat = s["latency_ms"]
    log(f"  latency (frame in -> chunk out): p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms; inference "
        f"{s['inference_ms_mean']:.1f} ms")
    log(f"  controller:         {s['controller_rate_hz']:.1f} Hz, jitter (std) {s['controller_jitter_ms']:.2f} ms, "
        f"longest period {s['controller_max_period_ms']:.1f} ms, state {s['controller_state']}")
    log(f"  franky-sim loop:    {s['sim_loop_hz']:.0f} Hz (real-time factor {s['sim_realtime_factor']:.2f})")
    log(f"  end effector moved: {s['ee_moved_m'] * 100:.1f} cm (path {s['ee_path_m'] * 100:.1f} cm)")
    log(f"  wrote {s['output']}/summary.json and {s.get('picture', '')}")


def _top_view(poses: np.ndarray, targets: np.ndarray, requested: np.ndarray, size: int = 256) -> np.ndarray:
    """Top view over the controller's workspace box, x forward (up), y left (left): policy-requested
    targets (orange, clipped to the box edge), controller targets (red), end-effector path (blue), start (green)."""
    import yaml

    from mambavla.control.config import config_path

    params = yaml.safe_load(config_path("controller.yaml").read_text())["controller_node"]["ros__parameters"]
    lo, hi = np.array(params["workspace_min"]), np.array(params["workspace_max"])
    img = np.full((size, size, 3), 255, np.uint8)
    img[[0, -1], :] = img[:, [0, -1]] = 120  # the workspace box outline

    def pixel(p):
        u = (hi[1] - p[..., 1]) / (hi[1] - lo[1]) * (size - 1)
        v = (hi[0] - p[..., 0]) / (hi[0] - lo[0]) * (size - 1)
        return np.clip(np.rint(v), 0, size - 1).astype(int), np.clip(np.rint(u), 0, size - 1).astype(int)

    requested = np.asarray(requested)[np.all(np.isfinite(requested), axis=1)] if len(requested) else requested
    for points, colour in ((requested, (250, 170, 60)), (targets, (220, 40, 40)), (poses, (30, 90, 220))):
        if len(points):
            v, u = pixel(np.asarray(points))
            for dv in (-1, 0, 1):
                for du in (-1, 0, 1):
                    img[np.clip(v + dv, 0, size - 1), np.clip(u + du, 0, size - 1)] = colour
    if len(poses):
        v, u = pixel(np.asarray(poses[:1]))
        img[max(v[0] - 3, 0): v[0] + 4, max(u[0] - 3, 0): u[0] + 4] = (20, 160, 60)  # start
    return img


def _write_picture(path: Path, monitor: _Monitor, task: dict, size: int = 256) -> None:
    from mambavla.data.images import image_to_rgb
    from mambavla.data.preview import write_png

    frame = image_to_rgb(monitor.frame) if monitor.frame is not None else np.zeros((size, size, 3), np.uint8)
    scale_y, scale_x = max(1, size // frame.shape[0]), max(1, size // frame.shape[1])
    big = np.repeat(np.repeat(frame, scale_y, axis=0), scale_x, axis=1)[:size, :size]
    left = np.zeros((size, size, 3), np.uint8)
    left[: big.shape[0], : big.shape[1]] = big
    right = _top_view(np.array(monitor.poses), np.array(monitor.targets), np.array(monitor.requested[-2000:]), size)
    write_png(path, np.concatenate([left, np.full((size, 4, 3), 255, np.uint8), right], axis=1))
