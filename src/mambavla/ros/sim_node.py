"""sim_node: the simulated workcell (`mambavla.sim.Workcell`) as a ROS node.

It serves the libfranka protocol on a loopback address (controller_node connects with real franky),
renders and publishes the cameras (with `depth`, each camera's depth aligned to its colour frames too,
16UC1 mm as an RGB-D driver publishes it, from the same snapshot and with the same stamp), and publishes
the task (`/sim/task`, JSON in std_msgs/String, transient-local, including the robot address) and its
success (`/sim/success`). Physics runs in the workcell's own 1 kHz thread; rendering happens on a separate
thread from snapshots.

With `publish_clock`, simulated time is the ROS clock: `/clock` follows the physics and camera frames
are stamped with the simulated time they show, so nodes started with `use_sim_time` see the world at
the pace it moves, however far the simulation falls behind real time on a loaded machine (the
simulated arm then moves, and the policy observes, exactly as in simulated-time training data).
"""

from __future__ import annotations

import json
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image
from std_msgs.msg import Bool, String

from mambavla.ros.convert import depth_to_image, rgb_to_image, seconds_to_stamp
from mambavla.ros.diagnostics import OK, WARN, diagnostic_array
from mambavla.ros.params import declare
from mambavla.ros.qos import DIAGNOSTICS_QOS, LATCHED_QOS, SENSOR_QOS, STATE_QOS
from mambavla.ros.startup import run_until_stopped
from mambavla.runtime.policy_config import depth_topic_of


class SimNode(Node):
    def __init__(self, **kwargs):
        super().__init__("sim_node", **kwargs)
        p = lambda *a, **k: declare(self, *a, **k)  # noqa: E731
        self.task = p("task", "lift", "task family (lift, place, push-left, push-right, push, all)")
        self.seed = p("seed", 0, "episode seed: layout, colours and instruction wording")
        self.cell = p("cell", "sim", "workcell: sim, changed or moved (camera pose, table, light: sim.config.CELLS)")
        self.host = p("host", "", "loopback address to serve on; empty takes the first free 127.x.y.z")
        self.camera_size = p("camera_size", [128, 128], "rendered image size [height, width]")
        self.camera_rate_hz = p("camera_rate_hz", 10.0, "camera publishing rate, Hz (render times: docs/simulation.md)")
        self.camera_topic = p("camera_topic", "/cameras/{camera}/image_raw", "topic pattern, {camera} = camera name")
        self.depth = p("depth", False, "also publish each camera's depth aligned to its colour frames (16UC1 mm, same "
                       "stamp); renders every camera twice")
        depth_topic = p("depth_topic", "", "depth topic pattern, {camera} = camera name; empty: beside each camera "
                        "topic, where policy_node and recorder_node take it by default (realsense-ros's "
                        "<folder>/aligned_depth_to_color/image_raw)")
        self.depth_topic = depth_topic or depth_topic_of(self.camera_topic)
        if self.depth and "{camera}" not in self.depth_topic:  # every camera's depth would share one topic
            raise ValueError(f"depth topic pattern {self.depth_topic!r} (depth_topic {depth_topic!r}, camera_topic "
                             f"{self.camera_topic!r}) has no {{camera}}: set depth_topic to a pattern with one")
        self.publish_instruction = p(
            "publish_instruction", False, "also publish the task's instruction on instruction_topic"
        )
        instruction_topic = p("instruction_topic", "/instruction", "where publish_instruction publishes")
        task_rate = p("task_rate_hz", 5.0, "success publishing rate, Hz")
        self.publish_clock = p(
            "publish_clock", False, "publish simulated time on /clock and stamp frames with it (nodes use_sim_time)"
        )
        clock_rate = p("clock_rate_hz", 200.0, "/clock publishing rate, Hz of wall time")

        from mambavla.sim import Workcell
        from mambavla.sim.config import cell_config

        self.workcell = Workcell(
            task=self.task, seed=self.seed, camera_size=tuple(self.camera_size), host=self.host or None,
            config=cell_config(self.cell),
        ).start()
        self.robot_ip = self.workcell.robot_ip
        self.get_logger().info(
            f"workcell serving the FR3 on {self.robot_ip}: task {self.task!r}, "
            f"instruction {self.workcell.instruction!r}"
        )
        self.image_pubs = {
            cam: self.create_publisher(Image, self.camera_topic.format(camera=cam), SENSOR_QOS)
            for cam in self.workcell.camera_names
        }
        self.depth_pubs = {
            cam: self.create_publisher(Image, self.depth_topic.format(camera=cam), SENSOR_QOS)
            for cam in (self.workcell.camera_names if self.depth else ())
        }
        self.task_pub = self.create_publisher(String, "/sim/task", LATCHED_QOS)
        self.success_pub = self.create_publisher(Bool, "/sim/success", STATE_QOS)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", DIAGNOSTICS_QOS)
        self._publish_task()
        if self.publish_instruction:
            pub = self.create_publisher(String, instruction_topic, LATCHED_QOS)
            pub.publish(String(data=self.workcell.instruction))
        self.frames_published = 0
        self.render_ms = 0.0
        self._rate = (time.monotonic(), self.workcell.steps, self.workcell.sim_time)
        self.loop_hz = float("nan")
        self.realtime_factor = float("nan")
        self.create_timer(1.0 / task_rate, self._publish_success)
        self.create_timer(1.0, self._publish_diagnostics)
        self._running = True
        self._camera_thread = threading.Thread(target=self._camera_loop, name="cameras", daemon=True)
        self._camera_thread.start()
        self._clock_thread = None
        if self.publish_clock:
            self.clock_pub = self.create_publisher(Clock, "/clock", 10)
            self._clock_thread = threading.Thread(
                target=self._clock_loop, args=(1.0 / clock_rate,), name="clock", daemon=True
            )
            self._clock_thread.start()

    def _clock_loop(self, period: float) -> None:
        while self._running:
            self.clock_pub.publish(Clock(clock=seconds_to_stamp(self.workcell.sim_time)))
            time.sleep(period)

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _publish_task(self) -> None:
        state = {**self.workcell.task_state(), "robot_ip": self.robot_ip, "cameras": list(self.workcell.camera_names)}
        self.task_pub.publish(String(data=json.dumps(state)))

    def _camera_loop(self) -> None:
        period = 1.0 / self.camera_rate_hz
        next_t = time.monotonic()
        while self._running:
            stamp = self._now()
            t0 = time.perf_counter()
            try:
                snap = self.workcell.snapshot()
                if self.depth:
                    images, depths = self.workcell.render_rgbd(snap=snap)
                else:
                    images, depths = self.workcell.render(snap=snap), {}
                if self.publish_clock:
                    stamp = snap.time  # the simulated moment the frame shows
            except Exception as err:  # stopping, or a GL failure: report and retry
                self.get_logger().error(f"render failed: {err}", throttle_duration_sec=5.0)
                time.sleep(0.5)
                continue
            self.render_ms = (
                0.9 * self.render_ms + 0.1 * (time.perf_counter() - t0) * 1e3
                if self.frames_published
                else (time.perf_counter() - t0) * 1e3
            )
            for cam, rgb in images.items():
                if cam in depths:  # first: a subscriber pairing depth with colour then rarely waits for it
                    self.depth_pubs[cam].publish(depth_to_image(depths[cam], stamp, f"{cam}_camera"))
                self.image_pubs[cam].publish(rgb_to_image(rgb, stamp, f"{cam}_camera"))
            self.frames_published += 1
            next_t += period
            delay = next_t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_t = time.monotonic()  # cannot keep up: publish as fast as rendering allows

    def _publish_success(self) -> None:
        self.success_pub.publish(Bool(data=bool(self.workcell.success())))

    def _publish_diagnostics(self) -> None:
        t, steps, sim_t = time.monotonic(), self.workcell.steps, self.workcell.sim_time
        t0, steps0, sim_t0 = self._rate
        if t > t0:
            self.loop_hz = (steps - steps0) / (t - t0)
            self.realtime_factor = (sim_t - sim_t0) / (t - t0)
        self._rate = (t, steps, sim_t)
        level = OK if self.realtime_factor > 0.9 else WARN
        values = {
            **self.workcell.task_state(),
            "robot_ip": self.robot_ip,
            "sim_loop_hz": self.loop_hz,
            "realtime_factor": self.realtime_factor,
            "frames_published": self.frames_published,
            "render_ms": self.render_ms,
            "depth": self.depth,
        }
        self.diag_pub.publish(
            diagnostic_array(
                self.get_clock().now().to_msg(),
                "mambavla/sim_node",
                self.robot_ip,
                level,
                f"task {self.workcell.spec.family}: {'success' if self.workcell.success() else 'running'}",
                values,
            )
        )

    def shutdown(self) -> None:
        self._running = False
        self._camera_thread.join(timeout=5.0)
        if self._clock_thread is not None:
            self._clock_thread.join(timeout=1.0)
        self.workcell.stop()


def main(args=None) -> None:
    # the workcell is built in the constructor; once it serves, a signal takes the ordinary shutdown
    run_until_stopped("sim_node", SimNode, lambda node: "", args, constructing="building the simulated workcell")


if __name__ == "__main__":
    main()
