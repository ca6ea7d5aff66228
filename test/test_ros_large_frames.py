"""Real camera sizes arrive over DDS: a node started by `run_node` (as every mambavla node is) publishes
best-effort 640x480 and 1280x720 rgb8 frames at 30 Hz, and they reach a subscriber with policy_node's
camera QoS. Fast DDS's default 512 kB shared-memory segment delivered 1 of 146 such 640x480 frames."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from ros_harness import Probe
from sensor_msgs.msg import Image

from mambavla.ros.qos import SENSOR_QOS

pytestmark = [pytest.mark.ros, pytest.mark.slow]

CAMERA = """
import sys, numpy as np
from rclpy.node import Node
from sensor_msgs.msg import Image
from mambavla.ros.qos import SENSOR_QOS
from mambavla.ros.spin import run_node

class Camera(Node):
    def __init__(self):
        super().__init__("fake_camera")
        h, w = int(sys.argv[1]), int(sys.argv[2])
        self.msg = Image(height=h, width=w, encoding="rgb8", step=3 * w, data=np.zeros(h * w * 3, np.uint8).tobytes())
        self.pub = self.create_publisher(Image, "/large_frames", SENSOR_QOS)
        self.create_timer(1 / 30, lambda: self.pub.publish(self.msg))

    def shutdown(self):
        pass

run_node(Camera)
"""


@pytest.mark.parametrize(("height", "width"), [(480, 640), (720, 1280)])
def test_real_camera_sizes_arrive_best_effort(height, width):
    probe = Probe("large_frame_probe")
    received = []
    lock = threading.Lock()

    def on_frame(msg: Image):
        with lock:
            received.append(len(msg.data))

    sub = probe.node.create_subscription(Image, "/large_frames", on_frame, SENSOR_QOS)
    camera = subprocess.Popen([sys.executable, "-c", CAMERA, str(height), str(width)])
    try:
        probe.wait_for(lambda: probe.node.count_publishers("/large_frames") > 0, "the camera", timeout=60.0)
        time.sleep(1.0)
        with lock:
            received.clear()
        time.sleep(3.0)  # 90 frames sent
        with lock:
            got = list(received)
    finally:
        camera.send_signal(2)
        camera.wait(timeout=20)
        probe.node.destroy_subscription(sub)
        probe.close()
    assert len(got) > 30, f"{len(got)} of ~90 {width}x{height} frames arrived"
    assert all(n == height * width * 3 for n in got)


EXECUTOR_PROBE = """
import os, signal, sys
from rclpy.node import Node
from mambavla.ros.spin import run_node

class ExecutorProbe(Node):
    def __init__(self):
        super().__init__("executor_probe")
        self.create_timer(0.05, self._report)

    def _report(self):
        print(type(self.executor).__name__, flush=True)
        os.kill(os.getpid(), signal.SIGINT)

    def shutdown(self):
        print("shutdown", flush=True)

run_node(ExecutorProbe, **({"threads": int(sys.argv[1])} if len(sys.argv) > 1 else {}))
"""


def test_nodes_spin_single_threaded_unless_they_ask_for_threads():
    # rclpy's MultiThreadedExecutor delivers large frames to a node of one callback group far slower than the
    # single-threaded one (docs/benchmarks.md): policy_node, echo_node and sim_node take the default
    from mambavla.ros.spin import EXECUTOR_THREADS

    lines = {}
    for args in ([], [str(EXECUTOR_THREADS)]):
        out = subprocess.run([sys.executable, "-c", EXECUTOR_PROBE, *args], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        lines[tuple(args)] = out.stdout.split()
    assert lines[()] == ["SingleThreadedExecutor", "shutdown"]
    assert lines[(str(EXECUTOR_THREADS),)] == ["MultiThreadedExecutor", "shutdown"]
    import inspect

    from mambavla.ros import controller_node, echo_node, policy_node, sim_node

    assert "threads=EXECUTOR_THREADS" in inspect.getsource(controller_node.main)  # its services wait side by side
    for module in (policy_node, echo_node, sim_node):
        assert "threads" not in inspect.getsource(module.main)


def _minor_faults(pid: int) -> int:
    """Minor page faults of a process so far (/proc/PID/stat, field 10)."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[7])


def test_a_node_takes_camera_frames_without_faulting_in_fresh_memory_for_each():
    # glibc handed every 921 kB buffer a frame passes through (Fast DDS's sample, the deserialised message,
    # rclpy's copy) back to the kernel, so each frame would be faulted in afresh (hundreds of page faults a
    # frame). run_node keeps freed blocks (reuse_large_buffers)
    from mambavla.ros.launcher import NodeProcess

    probe = Probe("fault_probe")
    camera = subprocess.Popen([sys.executable, "-c", CAMERA, "480", "640"])
    echo = NodeProcess("echo_node", [], {"camera_topics": ["/large_frames"]})
    try:
        probe.wait_for(lambda: len(probe.chunks) > 15, "echoes of the first frames", timeout=60.0)  # warmed up
        with probe.lock:
            echoes = len(probe.chunks)
        faults = _minor_faults(echo.process.pid)
        time.sleep(3.0)  # ~90 frames
        faults = _minor_faults(echo.process.pid) - faults
        with probe.lock:
            echoes = len(probe.chunks) - echoes
    finally:
        echo.stop()
        camera.send_signal(2)
        camera.wait(timeout=20)
        probe.close()
    assert echoes > 30, f"echo_node answered {echoes} of ~90 frames"
    pages_per_frame = 640 * 480 * 3 / 4096  # 225
    assert faults / echoes < pages_per_frame / 4, f"{faults / echoes:.0f} page faults per frame taken"
