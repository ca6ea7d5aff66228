"""Hostile input on every input topic of the node suite, bounded in time (MAMBAVLA_FUZZ_SECONDS, default
20 s): action chunks, teleoperation twists and gripper commands, camera frames, instructions, robot state
(policy_node's inputs), service calls (the command-source switch among them).
Nothing may crash a node, and nothing unsafe may reach the arm: every streamed target is finite and
inside the workspace box, the arm stays inside it, and the target moves no faster than max_linear_speed but
where it snaps onto the arm's measured pose (the watchdog's hold, a re-enable).

Run longer for the README figures: MAMBAVLA_FUZZ_SECONDS=120 pytest -s test/test_ros_fuzz.py
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
from geometry_msgs.msg import PoseStamped, Twist, TwistStamped
from ros_harness import NodeProcess, Probe, chunk_message, line_rows
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from mambavla.control import SafetyLimits
from mambavla.ros.convert import pose_to_msg, rgb_to_image, seconds_to_stamp
from mambavla.ros.qos import COMMAND_QOS, LATCHED_QOS, SENSOR_QOS, STATE_QOS

pytestmark = [pytest.mark.ros, pytest.mark.sim, pytest.mark.slow]

CTRL, POLICY = "mambavla/controller_node", "mambavla/policy_node"
SECONDS = float(os.environ.get("MAMBAVLA_FUZZ_SECONDS", "20"))
LIMITS = SafetyLimits()  # config/controller.yaml uses these values


def hostile_chunk(rng, probe: Probe) -> JointTrajectory:
    now = probe.now()
    start, quat = probe.pose()
    rows = line_rows(start, quat, rng.normal(0, 0.2, 3), rows=int(rng.integers(1, 40)), dt=0.05)
    kind = rng.integers(12)
    if kind == 0:
        rows[rng.integers(len(rows)), rng.integers(7)] = rng.choice([np.nan, np.inf, -np.inf, 1e300])
    elif kind == 1:
        rows += rng.normal(0, 1.0, rows.shape)  # far outside the workspace, tilted, jumping
    elif kind == 2:
        rows[:, 3:6] = rng.uniform(-np.pi, np.pi, 3)  # tilted gripper
    elif kind == 3:
        return chunk_message(rows, now + rng.choice([-1e9, -5.0, 5.0, 1e9]))
    elif kind == 4:
        return chunk_message(rows, now, dt=float(rng.choice([1e-9, 1e-4, 30.0, 1e6])))
    elif kind == 5:
        return chunk_message(rows, now, names=tuple(rng.choice(list("abcdefgxyz"), 7, replace=False)))
    elif kind == 6:
        return chunk_message(rows, now, frame_id=str(rng.choice(["", "camera", "fr3_link0/ee_at_stamp", "\x00"])))
    elif kind == 7:
        msg = chunk_message(rows, now)
        for point in msg.points[: rng.integers(1, len(msg.points) + 1)]:
            point.positions = point.positions[: rng.integers(0, 7)]
        return msg
    elif kind == 8:
        msg = chunk_message(rows, now)
        msg.points.reverse()
        return msg
    elif kind == 9:
        rows = rows[:1]  # a hold target, stamped with the observation time
    elif kind == 10:
        deltas = rng.normal(0, 0.05, (len(rows), 7))
        return chunk_message(deltas, now - 0.05, frame_id="fr3_link0/ee_at_stamp")
    return chunk_message(rows, now)  # kind 11 (and the mutated ones above): may be valid


def hostile_twist(rng, now: float) -> TwistStamped:
    msg = TwistStamped()
    msg.header.stamp = seconds_to_stamp(now)
    msg.header.frame_id = str(rng.choice(["fr3_link0", "", "fr3_hand_tcp", "camera", "\x00"]))
    values = rng.normal(0, 0.1, 6)  # may be valid: the arm moves, inside every limit
    kind = rng.integers(6)
    if kind == 0:
        values[rng.integers(6)] = rng.choice([np.nan, np.inf, -np.inf])
    elif kind == 1:
        values *= rng.choice([1e3, 1e300])
    elif kind == 2:
        msg.header.stamp = seconds_to_stamp(now + float(rng.choice([-1e9, -5.0, 5.0, 1e9])))
    elif kind == 3:
        values[3:5] = rng.uniform(-6.0, 6.0, 2)  # roll and pitch: toward max_tilt
    (msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z) = (float(v) for v in values[:3])
    (msg.twist.angular.x, msg.twist.angular.y, msg.twist.angular.z) = (float(v) for v in values[3:])
    return msg


def hostile_image(rng, stamp: float) -> Image:
    kind = rng.integers(9)
    if kind == 0:
        h, w = int(rng.integers(1, 700)), int(rng.integers(1, 700))
        return rgb_to_image(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), stamp, "cam")
    msg = rgb_to_image(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8), stamp, "cam")
    if kind == 1:
        msg.encoding = str(rng.choice(["yuv422", "32FC1", "", "RGB8", "bayer_rggb8", "mono16"]))
    elif kind == 2:
        msg.data = bytes(msg.data)[: rng.integers(0, len(msg.data))]
    elif kind == 3:
        msg.step = int(rng.integers(0, 200))
    elif kind == 4:
        msg.height, msg.width, msg.step, msg.encoding = 500_000, 1, 1, "mono8"
        msg.data = bytes(500_000)
    elif kind == 5:
        msg.height, msg.width = int(rng.integers(0, 2**31)), int(rng.integers(0, 2**31))
    elif kind == 6:
        msg.header.stamp = seconds_to_stamp(stamp + float(rng.choice([3600.0, 5.0, -3600.0])))
    elif kind == 7:
        msg.height, msg.width, msg.step, msg.encoding = 1, 300_000, 300_000, "mono8"
        msg.data = bytes(300_000)
    return msg


def hostile_instruction(rng) -> str:
    kind = rng.integers(7)
    return [
        "",
        "\u200b\u200c\u200d\ufeff" * int(rng.integers(1, 50)),
        "".join(chr(c) for c in rng.integers(0, 32, 20)),
        "x" * int(rng.integers(1001, 200_000)),
        "".join(chr(c) for c in rng.integers(0x20, 0x2FFFF, 50) if not 0xD800 <= c <= 0xDFFF),
        "pick up the red cube",
        "lift the \u0301\u0301\u0301 cube \U0001F600",
    ][kind]


def hostile_pose(rng, now: float) -> PoseStamped:
    values = rng.choice([np.nan, np.inf, 0.0, 1e308, -1e308, 0.5], 7)
    return pose_to_msg(values[:3], values[3:], now + float(rng.choice([0.0, -1e6, 1e6])), "fr3_link0")


def hostile_joint_state(rng, now: float) -> JointState:
    names = ["fr3_finger_joint1", "fr3_finger_joint2"] + [f"j{i}" for i in range(int(rng.integers(0, 5)))]
    rng.shuffle(names)
    msg = JointState(name=names, position=list(rng.choice([np.nan, 0.04, -1.0, 1e9], int(rng.integers(0, 8)))))
    msg.header.stamp = seconds_to_stamp(now + float(rng.choice([0.0, 1e6, -1e6])))
    return msg


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    logs = tmp_path_factory.mktemp("fuzz")
    probe = Probe("fuzz_probe")
    sim = NodeProcess("sim_node", ["sim_node.yaml"], {"camera_rate_hz": 2.0, "camera_size": [32, 32]}, logs / "sim.log")
    nodes = [sim]
    try:
        task = probe.wait_for(lambda: probe.task, "sim_node's /sim/task")
        nodes.append(NodeProcess("controller_node", ["controller.yaml", "controller_sim.yaml"],
                                 {"robot_ip": task["robot_ip"], "diagnostics_rate_hz": 5.0}, logs / "controller.log"))
        # policy_node's inputs come from the fuzzer alone; its chunks go to a topic of their own
        nodes.append(NodeProcess("policy_node", ["policy.yaml", "policy_sim.yaml"],
                                 {"preset": "tiny", "diagnostics_rate_hz": 5.0, "action_topic": "/fuzz/policy_chunk",
                                  "ee_pose_topic": "/fuzz/ee_pose", "joint_states_topic": "/fuzz/joint_states",
                                  "instruction_topic": "/fuzz/instruction",
                                  "camera_topics": ["/fuzz/front", "/fuzz/wrist"]}, logs / "policy.log"))
        probe.wait_status(CTRL, lambda s: s["state"] == "IDLE", "controller tracking")
        probe.wait_status(POLICY, lambda s: s["state"] == "WAITING", "policy loaded", timeout=300.0)
        yield probe, nodes
    finally:
        for node in reversed(nodes):
            node.stop()
        probe.close()


def test_hostile_input_on_every_topic_never_crashes_a_node_nor_reaches_the_arm(stack):
    probe, nodes = stack
    node = probe.node
    targets: list = []
    node.create_subscription(PoseStamped, "/controller_node/target_pose",
                             lambda m: targets.append((time.monotonic(), np.array([m.pose.position.x, m.pose.position.y,
                                                                                   m.pose.position.z]))), STATE_QOS)
    pubs = {
        "chunk": node.create_publisher(JointTrajectory, "/action_chunk", COMMAND_QOS),
        "twist": node.create_publisher(TwistStamped, "/teleop/twist", COMMAND_QOS),
        "cmd_vel": node.create_publisher(Twist, "/teleop/cmd_vel", COMMAND_QOS),
        "gripper": node.create_publisher(Float64, "/teleop/gripper", COMMAND_QOS),
        "front": node.create_publisher(Image, "/fuzz/front", SENSOR_QOS),
        "wrist": node.create_publisher(Image, "/fuzz/wrist", SENSOR_QOS),
        "instruction": node.create_publisher(String, "/fuzz/instruction", LATCHED_QOS),
        "pose": node.create_publisher(PoseStamped, "/fuzz/ee_pose", STATE_QOS),
        "joints": node.create_publisher(JointState, "/fuzz/joint_states", STATE_QOS),
    }
    clients = {name: node.create_client(Trigger, f"/controller_node/{name}")
               for name in ("enable", "stop", "recover", "use_policy", "use_teleop")}
    counts = dict.fromkeys(list(pubs) + ["service"], 0)
    stop = threading.Event()

    def fuzz(seed: int, topics: tuple[str, ...]):
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            topic = topics[rng.integers(len(topics))]
            now = probe.now()
            if topic == "chunk":
                pubs["chunk"].publish(hostile_chunk(rng, probe))
            elif topic == "twist":
                pubs["twist"].publish(hostile_twist(rng, now))
            elif topic == "cmd_vel":
                pubs["cmd_vel"].publish(hostile_twist(rng, now).twist)
            elif topic == "gripper":
                pubs["gripper"].publish(Float64(data=float(rng.choice([np.nan, np.inf, -1e9, 0.0, 1.0, 0.5, 7.0]))))
            elif topic in ("front", "wrist"):
                pubs[topic].publish(hostile_image(rng, now))
            elif topic == "instruction":
                pubs["instruction"].publish(String(data=hostile_instruction(rng)))
            elif topic == "pose":
                pubs["pose"].publish(hostile_pose(rng, now))
            elif topic == "joints":
                pubs["joints"].publish(hostile_joint_state(rng, now))
            else:
                clients[str(rng.choice(list(clients)))].call_async(Trigger.Request())
            counts[topic] += 1
            time.sleep(float(rng.uniform(0.0, 0.01)))

    commands = ("chunk", "chunk", "chunk", "twist", "twist", "cmd_vel", "gripper", "service")
    threads = [threading.Thread(target=fuzz, args=(1, commands), daemon=True),
               threading.Thread(target=fuzz, args=(2, ("front", "wrist", "instruction", "pose", "joints")),
                                daemon=True)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < SECONDS:
            assert all(n.alive for n in nodes), [n.log_tail() for n in nodes if not n.alive]
            time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()

    lo, hi = np.array(LIMITS.workspace_min), np.array(LIMITS.workspace_max)
    streamed = np.array([p for _, p in targets])
    with probe.lock:
        arm_times = np.array([t for t, _, _ in probe.poses if t > t0])
        arm = np.array([p for t, p, _ in probe.poses if t > t0])
    outside = np.any((streamed < lo) | (streamed > hi), axis=1)
    unsafe_targets = int(np.sum(~np.all(np.isfinite(streamed), axis=1) | outside))
    unsafe_poses = int(np.sum(np.any((arm < lo - 0.01) | (arm > hi + 0.01), axis=1)))
    # a step between two published targets covers at most their interval at max_linear_speed (and the 5 mm a
    # late publication may add), unless the target snapped onto the arm: then it lands on the measured pose
    times = np.array([t for t, _ in targets])
    jumps = np.linalg.norm(np.diff(streamed, axis=0), axis=1)
    fast = np.flatnonzero(jumps > LIMITS.max_linear_speed * np.diff(times) + 0.005)
    at = np.clip(np.searchsorted(arm_times, times[fast + 1]), 0, len(arm) - 1)
    off_arm = np.linalg.norm(streamed[fast + 1] - arm[at], axis=1) if len(fast) else np.zeros(1)
    print(f"\nfuzz {SECONDS:.0f} s: {sum(counts.values())} hostile inputs {counts}; {len(streamed)} streamed targets, "
          f"{unsafe_targets} unsafe; {len(arm)} poses, {unsafe_poses} outside the box; largest target step "
          f"{jumps.max() * 1e3:.1f} mm; {len(fast)} steps faster than max_linear_speed, each landing within "
          f"{off_arm.max() * 1e3:.1f} mm of the arm")
    assert all(n.alive for n in nodes)
    assert min(counts.values()) > 0 and sum(counts.values()) > 20 * SECONDS
    assert len(streamed) > 2 * SECONDS and len(arm) > 5 * SECONDS  # ~/stop calls pause the streaming now and then
    assert unsafe_targets == 0 and unsafe_poses == 0
    assert off_arm.max() < 0.01
    # still answering, still reporting
    ctrl, policy = probe.latest(CTRL), probe.latest(POLICY)
    assert int(ctrl["chunks_rejected"]) > 0 and int(ctrl["teleop_rejected"]) > 0 and int(policy["inputs_rejected"]) > 0
    future = clients["stop"].call_async(Trigger.Request())
    probe.wait_for(future.done, "~/stop answered after the fuzz", timeout=30.0)
    t1 = time.monotonic()
    probe.wait_for(lambda: probe.latest(POLICY) and probe.status_history[POLICY][-1][0] > t1,
                   "policy diagnostics after the fuzz")
