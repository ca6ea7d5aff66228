"""policy_node over Fast DDS with the real (untrained `tiny`) PolicyRuntime: the test plays camera driver,
robot and operator. Instructions in, chunks out; bad images and instructions are rejected, not fatal."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from ros_harness import NodeProcess, Probe, stamp_to_seconds
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String

from mambavla.model.config import preset
from mambavla.ros.convert import pose_to_msg, rgb_to_image, seconds_to_stamp
from mambavla.spaces import ACTION_NAMES, EE_REFERENCE_QUAT

pytestmark = [pytest.mark.ros, pytest.mark.slow]

POLICY = "mambavla/policy_node"
FIRST = "pick up the red cube"


class FakeWorld:
    """Publishes camera frames (10 Hz) and robot state (50 Hz) the way a driver and controller would."""

    def __init__(self, probe: Probe):
        self.probe = probe
        self.stamp_offset = 0.0  # seconds added to image stamps (negative: stale frames)
        self.front_override = None  # a function stamp -> Image replacing the front frame
        self.stamps: list[float] = []
        self._running = True
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self):
        rng = np.random.default_rng(0)
        k = 0
        while self._running:
            now = self.probe.now()
            if k % 5 == 0:
                stamp = now + self.stamp_offset
                self.stamps.append(stamp)
                front = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)  # not the policy's size: resized
                msg = self.front_override(stamp) if self.front_override else rgb_to_image(front, stamp, "front")
                self.probe.image_pubs["front"].publish(msg)
                wrist = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                self.probe.image_pubs["wrist"].publish(rgb_to_image(wrist, stamp, "wrist"))
            self.probe.pose_pub.publish(pose_to_msg(np.array([0.55, 0.0, 0.4]), EE_REFERENCE_QUAT, now, "fr3_link0"))
            js = JointState(name=[f"fr3_joint{i}" for i in range(1, 8)] + ["fr3_finger_joint1", "fr3_finger_joint2"],
                            position=[0.0] * 7 + [0.04, 0.04])
            js.header.stamp = seconds_to_stamp(now)
            self.probe.joint_pub.publish(js)
            k += 1
            time.sleep(0.02)

    def close(self):
        self._running = False
        self._thread.join()


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    logs = tmp_path_factory.mktemp("policy")
    probe = Probe("policy_probe")
    probe.instruction_pub.publish(String(data=FIRST))  # before the node exists: it must still get it
    world = FakeWorld(probe)
    node = NodeProcess("policy_node", ["policy.yaml", "policy_sim.yaml"],
                       {"preset": "tiny", "max_observation_age": 1.0, "diagnostics_rate_hz": 5.0}, logs / "policy.log")
    try:
        probe.wait_status(POLICY, lambda s: s["state"] in ("WAITING", "RUNNING"), "the policy to load", timeout=300.0)
        yield probe, world, node
    finally:
        node.stop()
        world.close()
        probe.close()


def chunks_after(probe: Probe, t: float):
    with probe.lock:
        return [msg for receipt, msg in probe.chunks if receipt > t]


def test_late_joiner_gets_the_instruction_and_chunks_come_out(policy):
    probe, world, node = policy
    status = probe.wait_status(POLICY, lambda s: int(s["chunks_published"]) >= 3, "chunks published")
    assert status["instruction"] == FIRST
    assert "UNTRAINED" in status["policy"]
    msg = probe.wait_for(lambda: chunks_after(probe, 0.0), "a chunk on /action_chunk")[-1]
    tiny = preset("tiny")
    assert tuple(msg.joint_names) == ACTION_NAMES
    assert msg.header.frame_id == "fr3_link0"  # absolute targets in the base frame
    assert len(msg.points) == tiny.chunk_size
    times = [p.time_from_start.sec + 1e-9 * p.time_from_start.nanosec for p in msg.points]
    np.testing.assert_allclose(times, np.arange(tiny.chunk_size) * tiny.dt, atol=1e-6)
    stamp = stamp_to_seconds(msg.header.stamp)
    assert min(abs(stamp - s) for s in world.stamps) < 1e-6  # stamped with the observation's time
    assert all(np.isfinite(p.positions).all() for p in msg.points)
    assert float(status["p50_latency_ms"]) > 0.0 and int(status["frames_dropped"]) == 0


def test_by_default_one_chunk_per_policy_period_of_frame_time(policy):
    probe, _, _ = policy
    t = time.monotonic()
    msgs = probe.wait_for(lambda: (lambda c: c if len(c) >= 6 else None)(chunks_after(probe, t)), "six chunks")
    stamps = np.array([stamp_to_seconds(m.header.stamp) for m in msgs])
    period = preset("tiny").policy_period  # 0.2 s; frames come every 0.1 s, `consumed` would step every 0.1 s
    assert np.diff(stamps).min() >= period - 0.011, np.diff(stamps)


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda s: Image(height=32, width=32, encoding="32FC1", step=128, data=bytes(4096)),
         "unsupported image encoding"),
        (lambda s: Image(height=32, width=32, encoding="rgb8", step=96, data=bytes(1000)), "truncated"),
        (lambda s: Image(height=32, width=32, encoding="rgb8", step=10, data=bytes(3072)), "step"),
    ],
    ids=["wrong-encoding", "truncated", "bad-step"],
)
def test_bad_images_are_rejected_with_a_reason_and_the_node_keeps_going(policy, make, fragment):
    probe, world, node = policy
    probe.wait_status(POLICY, lambda s: int(s["chunks_published"]) >= 1, "running")
    before = int(probe.latest(POLICY)["inputs_rejected"])
    world.front_override = lambda stamp: _stamped(make(stamp), stamp)
    try:
        # a frame of the previous case may still be in flight: wait for this case's own rejection
        status = probe.wait_status(POLICY,
                                   lambda s: int(s["inputs_rejected"]) > before and fragment in s["last_rejection"],
                                   f"the {fragment!r} rejection")
        assert "/cameras/front" in status["last_rejection"]
    finally:
        world.front_override = None
    t = time.monotonic()
    probe.wait_for(lambda: chunks_after(probe, t), "chunks again once frames are valid")
    assert node.alive


def _stamped(msg: Image, stamp: float) -> Image:
    msg.header.stamp = seconds_to_stamp(stamp)
    return msg


@pytest.mark.parametrize(("text", "fragment"),
                         [("", "empty"), ("   ", "empty"), ("\u200b\u200c\u200d\ufeff", "empty"),
                          ("\x01\x02\x7f\x1b", "empty"), ("x" * 100_000, "characters")],
                         ids=["empty", "blank", "zero-width-only", "control-only", "100kB"])
def test_a_rejected_instruction_ends_the_current_task_so_the_controller_holds(policy, text, fragment):
    probe, _, node = policy
    probe.wait_status(POLICY, lambda s: int(s["chunks_published"]) >= 1 and s["instruction"], "running")
    before = int(probe.latest(POLICY)["inputs_rejected"])
    probe.instruction_pub.publish(String(data=text))
    status = probe.wait_status(POLICY, lambda s: int(s["inputs_rejected"]) > before and fragment in s["last_rejection"],
                               f"the {fragment!r} rejection")
    status = probe.wait_status(POLICY, lambda s: s["instruction"] == "" and s["state"] == "WAITING", "the task ended")
    assert status["level"] >= 1 and "holds" in status["reason"]
    time.sleep(0.3)  # a chunk already in flight
    t = time.monotonic()
    time.sleep(1.0)
    assert not chunks_after(probe, t), "chunks for the previous task after a rejected instruction"
    probe.instruction_pub.publish(String(data=FIRST))
    probe.wait_for(lambda: chunks_after(probe, t), "chunks once a valid instruction arrives")
    assert node.alive


def test_mambavla_instruct_replaces_the_instruction(policy):
    probe, _, _ = policy
    done = subprocess.run([sys.executable, "-m", "mambavla.cli", "instruct", "push  the blue cube to the left"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "1 subscriber" in done.stdout or "subscriber(s)" in done.stdout
    probe.wait_status(POLICY, lambda s: s["instruction"] == "push the blue cube to the left", "the new instruction")
    t = time.monotonic()
    probe.wait_for(lambda: chunks_after(probe, t), "chunks for the new instruction")


def test_future_stamped_frames_are_rejected_and_do_not_stall_the_policy(policy):
    probe, world, node = policy
    probe.wait_status(POLICY, lambda s: int(s["chunks_published"]) >= 1, "running")
    before = int(probe.latest(POLICY)["inputs_rejected"])
    good = world.front_override
    world.front_override = lambda stamp: rgb_to_image(np.zeros((48, 64, 3), np.uint8), stamp + 3600.0, "front")
    try:
        status = probe.wait_status(POLICY,
                                   lambda s: int(s["inputs_rejected"]) > before and "future" in s["last_rejection"],
                                   "the future-stamp rejection")
        assert "/cameras/front" in status["last_rejection"]
    finally:
        world.front_override = good
    t = time.monotonic()
    probe.wait_for(lambda: chunks_after(probe, t), "chunks within seconds once the clock is right", timeout=10.0)
    assert node.alive


def test_an_extreme_frame_shape_is_rejected_fast_and_the_node_keeps_going(policy):
    probe, world, node = policy
    probe.wait_status(POLICY, lambda s: int(s["chunks_published"]) >= 1, "running")
    before = int(probe.latest(POLICY)["inputs_rejected"])
    # 500 kB, within the byte limit
    tall = Image(height=500_000, width=1, encoding="mono8", step=1, data=bytes(500_000))
    world.front_override = lambda stamp: _stamped(tall, stamp)
    try:
        probe.wait_status(POLICY, lambda s: int(s["inputs_rejected"]) > before and "px per side" in s["last_rejection"],
                          "the size rejection")
    finally:
        world.front_override = None
    t = time.monotonic()
    probe.wait_for(lambda: chunks_after(probe, t), "chunks again", timeout=20.0)
    assert node.alive


def test_camera_names_that_do_not_match_the_checkpoint_are_an_error(tmp_path):
    probe = Probe("camera_probe")
    node = NodeProcess("policy_node", ["policy.yaml", "policy_sim.yaml"],
                       {"preset": "tiny", "camera_names": ["front", "top"], "diagnostics_rate_hz": 5.0,
                        "camera_topics": ["/cameras/front/image_raw", "/cameras/top/image_raw"]},
                       tmp_path / "policy.log")
    try:
        status = probe.wait_status(POLICY, lambda s: s["state"] == "ERROR", "ERROR for unknown camera names",
                                   timeout=300.0)
        assert "top" in status["reason"] and "wrist" in status["reason"]
        assert node.alive  # reported, not crashed
    finally:
        node.stop()
        probe.close()


def test_stale_frames_are_dropped_and_counted(policy):
    probe, world, _ = policy
    before = int(probe.latest(POLICY)["frames_dropped"])
    world.stamp_offset = -5.0  # a camera driver with a broken clock, or a stalled pipeline
    try:
        status = probe.wait_status(POLICY, lambda s: int(s["frames_dropped"]) > before, "dropped frames")
        assert int(status["frames_dropped"]) > before
    finally:
        world.stamp_offset = 0.0
    t = time.monotonic()
    probe.wait_for(lambda: chunks_after(probe, t), "chunks once frames are fresh again")
