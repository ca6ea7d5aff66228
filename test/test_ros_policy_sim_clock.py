"""policy_node under `use_sim_time`, on a simulated clock that stands still while the node works.

A simulation slower than the node (franky-sim on two busy cores in `mambavla demo`) can leave /clock where it
is for a whole step. Here the clock moves only when the next set of frames goes out (lockstep), so each chunk
is published at the very ROS time its frames arrived. The latency and wait the node reports are its own
compute time (the steady clock), not the 0 ms the standing ROS clock would give."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from ros_harness import NodeProcess, Probe, stamp_to_seconds
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import JointState
from std_msgs.msg import String

from mambavla.model.config import preset
from mambavla.ros.convert import pose_to_msg, rgb_to_image, seconds_to_stamp
from mambavla.spaces import EE_REFERENCE_QUAT

pytestmark = [pytest.mark.ros, pytest.mark.slow]

POLICY = "mambavla/policy_node"


def test_latency_is_the_nodes_own_time_when_the_simulated_clock_stands_still(tmp_path):
    probe = Probe("sim_clock_probe")
    clock_pub = probe.node.create_publisher(Clock, "/clock", 10)
    sim_time = [1000.0]
    clock_lock = threading.Lock()  # the clock moves in one place at a time: never past a set the test stamped
    running, advancing = threading.Event(), threading.Event()
    running.set()
    advancing.set()

    def publish_clock():  # simulated time at 100 Hz (as sim_node does): running at real time, or standing still
        while running.is_set():
            with clock_lock:
                if advancing.is_set():
                    sim_time[0] += 0.01
                now = sim_time[0]
            clock_pub.publish(Clock(clock=seconds_to_stamp(now)))
            time.sleep(0.01)

    ticker = threading.Thread(target=publish_clock, daemon=True)
    ticker.start()
    size = preset("tiny").image_size
    rng = np.random.default_rng(0)
    node = NodeProcess("policy_node", ["policy.yaml", "policy_sim.yaml"],
                       {"preset": "tiny", "use_sim_time": True, "infer_mode": "frame", "max_observation_age": 1.0,
                        "diagnostics_rate_hz": 5.0}, tmp_path / "policy.log")
    try:
        probe.instruction_pub.publish(String(data="pick up the red cube"))
        probe.wait_status(POLICY, lambda s: s["state"] in ("WAITING", "RUNNING"), "the policy to load", timeout=300.0)
        with clock_lock:
            advancing.clear()
            start = sim_time[0]
        for k in range(12):
            with clock_lock:  # the clock moves, then stands still until the chunk is out
                sim_time[0] = stamp = start + 0.1 * (k + 1)
            time.sleep(0.05)  # the node's clock is at `stamp` now
            probe.pose_pub.publish(pose_to_msg(np.array([0.55, 0.0, 0.4]), EE_REFERENCE_QUAT, stamp, "fr3_link0"))
            js = JointState(name=[f"fr3_joint{i}" for i in range(1, 8)] + ["fr3_finger_joint1", "fr3_finger_joint2"],
                            position=[0.0] * 7 + [0.04, 0.04])
            js.header.stamp = seconds_to_stamp(stamp)
            probe.joint_pub.publish(js)
            time.sleep(0.02)  # the state first, so the frames pair with it
            for cam, pub in probe.image_pubs.items():
                pub.publish(rgb_to_image(rng.integers(0, 256, (*size, 3), dtype=np.uint8), stamp, cam))

            def chunk_for_this_set(stamp=stamp):
                with probe.lock:
                    return any(abs(stamp_to_seconds(msg.header.stamp) - stamp) < 1e-6 for _, msg in probe.chunks)

            probe.wait_for(chunk_for_this_set, f"the chunk of the frames stamped {stamp:.1f}", timeout=60.0)
        advancing.set()  # diagnostics run on the simulated clock too: let it report the last chunks
        status = probe.wait_status(POLICY, lambda s: int(s["chunks_published"]) >= 10, "ten chunks reported")
    finally:
        node.stop()
        running.clear()
        ticker.join()
        probe.close()
    inference, latency, wait = (float(status[key]) for key in ("p50_inference_ms", "p50_latency_ms", "p50_wait_ms"))
    # receipt -> published holds the step itself; on the simulated clock every one of them would be 0.0 ms
    assert 0.0 < inference <= latency, status
    assert 0.0 < wait < latency, status
