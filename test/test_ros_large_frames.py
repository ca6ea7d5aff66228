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
