"""policy_node with `image_transport: compressed` over Fast DDS: JPEG sensor_msgs/CompressedImage frames on
`<camera topic>/compressed` (as image_transport publishes them) reach the untrained `tiny` policy and chunks come
out stamped with the frames' time; truncated and oversized JPEG/PNG frames are rejected and the node keeps going.

A private rclpy context on its own DDS domain (163, loopback discovery): the other ROS tests of the run
keep theirs."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rclpy.executors import SingleThreadedExecutor
from ros_harness import TIMEOUT, NodeProcess
from sensor_msgs.msg import CompressedImage, JointState
from std_msgs.msg import String
from test_images import camera_frame, jpeg_claiming, png_header
from trajectory_msgs.msg import JointTrajectory

from mambavla.ros.convert import pose_to_msg, seconds_to_stamp, stamp_to_seconds
from mambavla.ros.diagnostics import status_values
from mambavla.ros.qos import COMMAND_QOS, DIAGNOSTICS_QOS, LATCHED_QOS, SENSOR_QOS, STATE_QOS
from mambavla.spaces import EE_REFERENCE_QUAT

pytestmark = [pytest.mark.ros, pytest.mark.slow]

DOMAIN = 163
ONNX_DOMAIN = 164  # its own graph: the module's torch-backend node publishes the same diagnostics name
POLICY = "mambavla/policy_node"
CAMERAS = ("front", "wrist")


class CompressedCameras:
    """Plays two JPEG cameras (640x480, 10 Hz), the robot state (50 Hz) and the operator, on its own domain."""

    def __init__(self, domain: int = DOMAIN):
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        n = self.node = rclpy.create_node("compressed_camera_probe", context=self.context)
        self.lock = threading.Lock()
        self.status: dict = {}
        self.chunks: list[tuple[float, JointTrajectory]] = []
        self.stamps: list[float] = []
        self.front_override = None  # stamp -> bytes replacing the front camera's JPEG
        n.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, DIAGNOSTICS_QOS)
        n.create_subscription(JointTrajectory, "/action_chunk", self._on_chunk, COMMAND_QOS)
        self.compressed_pubs = {c: n.create_publisher(CompressedImage, f"/cameras/{c}/image_raw/compressed", SENSOR_QOS)
                                for c in CAMERAS}
        self.instruction_pub = n.create_publisher(String, "/instruction", LATCHED_QOS)
        self.pose_pub = n.create_publisher(PoseStamped, "/ee_pose", STATE_QOS)
        self.joint_pub = n.create_publisher(JointState, "/joint_states", STATE_QOS)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(n)
        self._spin = threading.Thread(target=self.executor.spin, daemon=True)
        self._spin.start()
        bgr = np.ascontiguousarray(camera_frame()[..., ::-1])
        self.jpeg = cv2.imencode(".jpg", bgr)[1].tobytes()
        self._running = True
        self._loop_thread = threading.Thread(target=self._loop, daemon=True)
        self._loop_thread.start()

    def now(self) -> float:
        return self.node.get_clock().now().nanoseconds * 1e-9

    def _on_diag(self, msg: DiagnosticArray) -> None:
        with self.lock:
            for status in msg.status:
                self.status[status.name] = status_values(msg, status.name)

    def _on_chunk(self, msg: JointTrajectory) -> None:
        with self.lock:
            self.chunks.append((time.monotonic(), msg))

    def _loop(self) -> None:
        k = 0
        while self._running:
            now = self.now()
            if k % 5 == 0:
                self.stamps.append(now)
                for cam in CAMERAS:
                    data = self.front_override(now) if cam == "front" and self.front_override else self.jpeg
                    msg = CompressedImage(format="rgb8; jpeg compressed bgr8", data=data)
                    msg.header.stamp = seconds_to_stamp(now)
                    self.compressed_pubs[cam].publish(msg)
            self.pose_pub.publish(pose_to_msg(np.array([0.55, 0.0, 0.4]), EE_REFERENCE_QUAT, now, "fr3_link0"))
            js = JointState(name=[f"fr3_joint{i}" for i in range(1, 8)] + ["fr3_finger_joint1", "fr3_finger_joint2"],
                            position=[0.0] * 7 + [0.04, 0.04])
            js.header.stamp = seconds_to_stamp(now)
            self.joint_pub.publish(js)
            k += 1
            time.sleep(0.02)

    def latest(self) -> dict:
        with self.lock:
            return dict(self.status.get(POLICY) or {})

    def chunks_after(self, t: float) -> list[JointTrajectory]:
        with self.lock:
            return [msg for receipt, msg in self.chunks if receipt > t]

    def wait_for(self, predicate, what: str, timeout: float = TIMEOUT):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if result := predicate():
                return result
            time.sleep(0.02)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    def wait_status(self, predicate, what: str, timeout: float = TIMEOUT) -> dict:
        return self.wait_for(lambda: (lambda s: s if s and predicate(s) else None)(self.latest()), what, timeout)

    def close(self) -> None:
        self._running = False
        self._loop_thread.join()
        self.executor.shutdown()
        self._spin.join(timeout=5.0)
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


@pytest.fixture(scope="module")
def compressed_policy(tmp_path_factory):
    logs = tmp_path_factory.mktemp("policy_compressed")
    cams = CompressedCameras()
    cams.instruction_pub.publish(String(data="pick up the red cube"))
    node = NodeProcess("policy_node", ["policy.yaml", "policy_sim.yaml"],
                       {"preset": "tiny", "image_transport": "compressed", "max_observation_age": 1.0,
                        "diagnostics_rate_hz": 5.0}, logs / "policy.log", env={"ROS_DOMAIN_ID": str(DOMAIN)})
    try:
        cams.wait_status(lambda s: s["state"] in ("WAITING", "RUNNING"), "the policy to load", timeout=300.0)
        yield cams, node
    finally:
        node.stop()
        cams.close()


def test_jpeg_frames_on_the_compressed_topics_produce_chunks_stamped_with_the_frames(compressed_policy):
    cams, node = compressed_policy
    status = cams.wait_status(lambda s: int(s["chunks_published"]) >= 3, "chunks from JPEG frames")
    assert int(status["inputs_rejected"]) == 0, status["last_rejection"]
    msg = cams.wait_for(lambda: cams.chunks_after(0.0), "a chunk on /action_chunk")[-1]
    stamp = stamp_to_seconds(msg.header.stamp)
    assert min(abs(stamp - s) for s in cams.stamps) < 1e-6  # the observation is the JPEG frames' time
    assert all(np.isfinite(p.positions).all() for p in msg.points)
    assert "/cameras/front/image_raw/compressed" in node.log_tail(200)  # the subscribed topics are logged at load


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (lambda jpeg: jpeg[: len(jpeg) // 2], "truncated or corrupt JPEG"),
        (lambda jpeg: jpeg_claiming(60_000, 60_000), "px per side"),
        (lambda jpeg: png_header(8000, 8000), "bytes exceeds"),
        (lambda jpeg: b"not an image" * 10, "neither JPEG nor PNG"),
    ],
    ids=["truncated-jpeg", "jpeg-claims-60000px", "png-bomb-192MB", "garbage"],
)
def test_hostile_compressed_frames_are_rejected_and_the_node_keeps_going(compressed_policy, data, fragment):
    cams, node = compressed_policy
    cams.wait_status(lambda s: int(s["chunks_published"]) >= 1, "running")
    before = int(cams.latest()["inputs_rejected"])
    bad = data(cams.jpeg)
    cams.front_override = lambda stamp: bad
    try:
        status = cams.wait_status(lambda s: int(s["inputs_rejected"]) > before and fragment in s["last_rejection"],
                                  f"the {fragment!r} rejection")
        assert "/cameras/front/image_raw/compressed" in status["last_rejection"]
    finally:
        cams.front_override = None
    t = time.monotonic()
    cams.wait_for(lambda: cams.chunks_after(t), "chunks again once frames are valid", timeout=30.0)
    assert node.alive


def test_the_onnx_backend_serves_the_node(tmp_path):
    """policy_node with `backend: onnx` (the graph exported at load) publishes chunks and says which
    ONNX Runtime provider runs the step."""
    cams = CompressedCameras(ONNX_DOMAIN)
    cams.instruction_pub.publish(String(data="pick up the red cube"))
    node = NodeProcess("policy_node", ["policy.yaml", "policy_sim.yaml"],
                       {"preset": "tiny", "image_transport": "compressed", "backend": "onnx", "torch_threads": 1,
                        "max_observation_age": 1.0, "diagnostics_rate_hz": 5.0}, tmp_path / "policy.log",
                       env={"ROS_DOMAIN_ID": str(ONNX_DOMAIN)})
    try:
        status = cams.wait_status(lambda s: int(s["chunks_published"]) >= 3, "chunks from the ONNX backend",
                                  timeout=300.0)
        assert status["backend"] == "onnx (CPUExecutionProvider)", status["backend"]
        msg = cams.wait_for(lambda: cams.chunks_after(0.0), "a chunk on /action_chunk")[-1]
        assert len(msg.points) > 1 and all(np.isfinite(p.positions).all() for p in msg.points)
    finally:
        node.stop()
        cams.close()
