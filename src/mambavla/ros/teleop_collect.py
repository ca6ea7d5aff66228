"""Demonstrations recorded through the teleoperation path, in simulation (`mambavla collect --teleop`).

Each episode runs the nodes an operator runs on the robot: sim_node's FR3 (the seed's layout, in the chosen
cell), controller_node taking `/teleop/twist` and `/teleop/gripper` under its safety rules, recorder_node writing
the episode bag through its services. The scripted operator (`mambavla.sim.operator.ScriptedOperator`) plays the
person at the SpaceMouse: it reads `/ee_pose` and publishes the twist and gripper command toward the scripted
expert's waypoints. What lands in the bag is what a user's recording holds (the controller's streamed target as
the action, frames as the cameras published them), not the expert's own targets as `collect` writes them.

The stack is started fresh for every episode: sim_node serves one layout per process, and the controller's
connection belongs to that simulated robot.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from mambavla.sim.collect import check_seeds, episode_name, summarize
from mambavla.sim.tasks import is_eval_seed, resolve_task

CONTROLLER, RECORDER = "mambavla/controller_node", "mambavla/recorder_node"
START_TIMEOUT = 120.0  # s for a node to come up on a loaded 2-core machine (imports, franky-sim's server)
OPERATOR_HZ = 20.0  # how often the operator sends a twist: well inside the controller's teleop_command_timeout (0.25 s)
SETTLE_S = 0.5  # after the operator's last waypoint, so the recording shows the arm at rest


class _Client:
    """The operator's side: reads /ee_pose, /sim/task, /sim/success and /diagnostics; publishes the teleoperation
    stream; calls the recorder's services."""

    def __init__(self):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseStamped, TwistStamped
        from std_msgs.msg import Bool, Float64, String

        from mambavla.ros.qos import COMMAND_QOS, DIAGNOSTICS_QOS, LATCHED_QOS, STATE_QOS
        from mambavla.ros.spin import BackgroundSpin

        self.node = rclpy.create_node("mambavla_teleop_collect")
        self.task: dict | None = None
        self.success = False
        self.pose: tuple[np.ndarray, np.ndarray] | None = None
        self.statuses: dict[str, dict] = {}
        n = self.node
        n.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, DIAGNOSTICS_QOS)
        n.create_subscription(PoseStamped, "/ee_pose", self._on_pose, STATE_QOS)
        n.create_subscription(String, "/sim/task", lambda m: setattr(self, "task", json.loads(m.data)), LATCHED_QOS)
        n.create_subscription(Bool, "/sim/success", lambda m: setattr(self, "success", bool(m.data)), STATE_QOS)
        self.twist_pub = n.create_publisher(TwistStamped, "/teleop/twist", COMMAND_QOS)
        self.gripper_pub = n.create_publisher(Float64, "/teleop/gripper", COMMAND_QOS)
        self._twist, self._float = TwistStamped, Float64
        self.spin = BackgroundSpin(n)

    def _on_diag(self, msg) -> None:
        from mambavla.ros.diagnostics import status_values

        for status in msg.status:
            self.statuses[status.name] = status_values(msg, status.name)

    def _on_pose(self, msg) -> None:
        from mambavla.ros.convert import pose_from_msg

        self.pose = pose_from_msg(msg)

    def forget(self) -> None:
        """Before a new stack: nothing the last one said counts."""
        self.task, self.success, self.pose, self.statuses = None, False, None, {}

    def status(self, name: str) -> dict:
        return dict(self.statuses.get(name) or {})

    def wait(self, predicate, what: str, processes, timeout: float = START_TIMEOUT):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            result = predicate()
            if result:
                return result
            for p in processes:
                if not p.alive:
                    raise RuntimeError(f"{p.node} exited while waiting for {what}:\n{p.log_tail()}")
            self.spin.raise_if_failed(what)
            time.sleep(0.05)
        raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")

    def call(self, service: str, processes) -> tuple[bool, str]:
        from std_srvs.srv import Trigger

        client = self.node.create_client(Trigger, service)
        try:
            if not client.wait_for_service(timeout_sec=START_TIMEOUT):
                raise RuntimeError(f"service {service} did not appear")
            future = client.call_async(Trigger.Request())
            self.wait(future.done, f"{service} to answer", processes, timeout=30.0)
            result = future.result()
            return bool(result.success), result.message
        finally:
            self.node.destroy_client(client)

    def publish(self, command) -> None:
        from mambavla.ros.convert import seconds_to_stamp

        msg = self._twist()
        msg.header.stamp = seconds_to_stamp(self.node.get_clock().now().nanoseconds * 1e-9)
        msg.header.frame_id = "fr3_link0"  # the operator's velocities are in the robot's base frame
        (msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z) = (float(v) for v in command.linear)
        (msg.twist.angular.x, msg.twist.angular.y, msg.twist.angular.z) = (float(v) for v in command.angular)
        self.twist_pub.publish(msg)
        self.gripper_pub.publish(self._float(data=float(command.gripper)))

    def close(self) -> None:
        self.spin.stop()


def record_teleop_episode(client: _Client, path: Path, task: str, seed: int, cell: str, depth: bool,
                          camera_rate_hz: float, camera_size: tuple[int, int] | None, time_limit: float,
                          logs: Path) -> dict:
    """One episode of `task` with layout `seed`, teleoperated by the scripted operator, saved as the bag `path`.
    Returns its summary. Nothing is left at `path` when the episode fails to record."""
    from mambavla.ros.launcher import NodeProcess
    from mambavla.sim.config import cell_config
    from mambavla.sim.operator import ScriptedOperator

    wall0 = time.monotonic()
    client.forget()
    staging = path.parent / f".{path.name}.recording"
    shutil.rmtree(staging, ignore_errors=True)
    logs.mkdir(parents=True, exist_ok=True)
    sim_params = {"task": task, "seed": seed, "cell": cell, "depth": depth, "camera_rate_hz": camera_rate_hz}
    if camera_size:
        sim_params["camera_size"] = list(camera_size)
    processes = [NodeProcess("sim_node", ["sim_node.yaml"], sim_params, logs / "sim_node.log")]
    try:
        info = client.wait(lambda: client.task if client.task and int(client.task["seed"]) == seed else None,
                           "sim_node's /sim/task", processes)
        processes.append(NodeProcess("controller_node", ["controller.yaml", "controller_sim.yaml"],
                                     {"robot_ip": info["robot_ip"], "command_source": "teleop",
                                      "diagnostics_rate_hz": 5.0}, logs / "controller_node.log"))
        meta = {"task": info["task"], "seed": seed, "cell": cell, "operator": "mambavla-sim-scripted-teleop",
                "held_out": is_eval_seed(seed)}
        processes.append(NodeProcess("recorder_node", [], {
            "root": str(staging), "cameras": list(info["cameras"]), "instruction": info["instruction"],
            "reset_time_s": 0.0, "diagnostics_rate_hz": 5.0, "depth": depth, "episode_meta": json.dumps(meta)},
            logs / "recorder_node.log"))
        client.wait(lambda: client.status(CONTROLLER).get("state") == "IDLE"
                    and client.status(CONTROLLER).get("command_source") == "teleop", "controller_node to track",
                    processes)
        client.wait(lambda: (s := client.status(RECORDER)).get("state") == "READY" and not s.get("missing"),
                    "recorder_node's inputs", processes)
        client.wait(lambda: client.pose is not None, "/ee_pose", processes)
        operator = ScriptedOperator(info["task"], seed, cell_config(cell))
        ok, message = client.call("/recorder_node/start", processes)
        if not ok:
            raise RuntimeError(f"recorder_node refused to start: {message}")
        t0, done = time.monotonic(), False
        while time.monotonic() - t0 < time_limit:
            command = operator.command(*client.pose, time.monotonic())
            client.publish(command)
            if command.done:
                done = True
                break
            dead = [p for p in processes if not p.alive]
            if dead:
                raise RuntimeError(f"{dead[0].node} exited mid-episode:\n{dead[0].log_tail()}")
            time.sleep(1.0 / OPERATOR_HZ)
        end = time.monotonic() + SETTLE_S
        while time.monotonic() < end:  # zero twists, gripper as it is: the arm comes to rest on camera
            client.publish(command)
            time.sleep(1.0 / OPERATOR_HZ)
        success = client.success and done
        client.call(f"/recorder_node/{'mark_success' if success else 'mark_failure'}", processes)
        ok, message = client.call("/recorder_node/save", processes)
        if not ok:
            raise RuntimeError(f"recorder_node did not save: {message}")
        status = client.wait(lambda: (s := client.status(RECORDER)) and int(s.get("saved", 0)) >= 1 and s,
                             "the save on /diagnostics", processes)
        if int(status.get("dropped", 0)) or status.get("error"):
            raise RuntimeError(f"recorder_node dropped {status.get('dropped')} messages: {status.get('error')}")
        controller = client.status(CONTROLLER)
    finally:
        for process in reversed(processes):  # the recorder, then the controller stops the arm, then the sim
            process.stop()
    recorded = sorted(staging.glob("episode_*"))
    if len(recorded) != 1:
        raise RuntimeError(f"expected one episode in {staging}, found {[p.name for p in recorded]}")
    sidecar = json.loads((recorded[0] / "episode.json").read_text())
    recorded[0].rename(path)
    shutil.rmtree(staging, ignore_errors=True)
    # the keys sim.collect.summarize reads, as `collect` reports its episodes ("sim" seconds: recorded ones)
    return {"path": str(path), "task": info["task"], "instruction": info["instruction"], "seed": seed,
            "success": success, "operator_finished": done, "frames": int(sidecar["frames"]),
            "sim_seconds": float(sidecar["seconds"]), "wall_seconds": round(time.monotonic() - wall0, 2),
            "render_ms_per_frame": None, "teleop_limited": controller.get("teleop_limited", ""), "saved": message}


def collect_teleop(task: str, episodes: int, out: str | Path, seed: int = 0, cell: str = "sim", depth: bool = False,
                   camera_rate_hz: float = 10.0, camera_size: tuple[int, int] | None = None,
                   time_limit: float = 60.0, allow_eval_seeds: bool = False, progress: bool = True,
                   attempts: int = 2) -> dict:
    """Record `episodes` teleoperated episodes, seeds seed, seed+1, ..., into `out` (one bag per episode, named as
    `collect` names them, and summary.json). Every episode is kept, failed ones marked as such in the sidecar."""
    import rclpy
    from tqdm import tqdm

    out = Path(out)
    seeds = list(range(seed, seed + episodes))
    if episodes < 1:
        raise ValueError("--episodes must be at least 1")
    if not 0 < camera_rate_hz <= 60:
        raise ValueError(f"the camera rate must be in (0, 60] Hz, got {camera_rate_hz}")
    check_seeds(seeds, out, allow_eval_seeds)
    out.mkdir(parents=True, exist_ok=True)
    # a private DDS domain on this machine unless the caller chose one: these nodes must not meet a live robot's
    if "ROS_DOMAIN_ID" not in os.environ:
        os.environ["ROS_DOMAIN_ID"] = str(100 + os.getpid() % 100)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    owns_context = not rclpy.ok()
    if owns_context:
        rclpy.init()
    client = _Client()
    details: list[dict] = []
    failures: list[dict] = []
    t0 = time.monotonic()
    try:
        bar = tqdm(seeds, desc=f"teleop {task}", unit="ep", disable=not progress, file=sys.stderr)
        for s in bar:
            for attempt in range(1, attempts + 1):
                try:
                    details.append(record_teleop_episode(client, out / episode_name(s), resolve_task(task, s), s, cell,
                                                         depth, camera_rate_hz, camera_size, time_limit,
                                                         out / "logs" / episode_name(s)))
                    break
                except RuntimeError as err:  # a node that died or never came up: the seed's nodes start afresh
                    last_error = str(err).splitlines()[0]
                    print(f"\nwarning: seed {s}, attempt {attempt}/{attempts}: {last_error} (logs in "
                          f"{out / 'logs' / episode_name(s)})", file=sys.stderr)
                    shutil.rmtree(out / f".{episode_name(s)}.recording", ignore_errors=True)
            else:
                failures.append({"seed": s, "error": last_error})
            bar.set_postfix(success=f"{sum(d['success'] for d in details)}/{len(details)}", errors=len(failures))
    finally:
        try:
            client.close()
        finally:
            if owns_context:
                rclpy.try_shutdown()
    summary = summarize(details)
    summary.update({"task": task, "cell": cell, "episodes": episodes, "out": str(out), "seeds": [seeds[0], seeds[-1]],
                    "depth": depth, "camera_rate_hz": camera_rate_hz, "time_limit_s": time_limit,
                    "path": "teleoperation: sim_node, controller_node (command_source teleop) driven by the scripted "
                            "operator's /teleop/twist and /teleop/gripper, recorder_node",
                    "wall_seconds": round(time.monotonic() - t0, 2),
                    "failed_seeds": failures,  # every attempt failed: no episode written for these
                    "episodes_detail": details})
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
