"""`mambavla replay --live`: play bags into a policy_node child process over rclpy / Fast DDS and score
the chunks it publishes with the same metrics as offline replay. This checks the node itself.

The node runs in a private DDS domain with localhost discovery, whatever ROS_DOMAIN_ID the shell exports
(on a robot PC that is the live robot's graph, and replay publishes recorded poses, an instruction and
policy chunks); `--ros-domain-id N` joins domain N on purpose (e.g. to watch in rviz). It runs with
config/policy.yaml and the command's checkpoint; messages go to the node's topics at their recorded pace
(`--rate`). Stamps keep the bag's spacing but are shifted onto the node's clock (now at playback start):
the node ages frames against its clock, so the recorded absolute times would all look stale. Chunks are
shifted back for scoring.
This is the ROS side of the command (an entry point): it may import rclpy and `mambavla.ros`.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mambavla.control.config import load_params
from mambavla.data.images import resize_rgb
from mambavla.data.roles import depth_role
from mambavla.evaluation.bag import ReplayError, inspect, read_messages
from mambavla.evaluation.recording import PredictedChunk, Recording, absolute_targets, interpolate
from mambavla.evaluation.replay import write_report

PRIVATE_DOMAINS = range(100, 200)  # where live replay picks its own domain


def dds_environment(requested: int | None, environ: dict) -> dict:
    """The DDS variables live replay and its policy_node run with: domain `requested` as the user asked, else a
    private domain on localhost that is not the exported one (an empty value removes the variable)."""
    if requested is not None:
        if not 0 <= requested <= 232:
            raise ValueError(f"--ros-domain-id must be within 0..232 (DDS's port range), got {requested}")
        return {"ROS_DOMAIN_ID": str(requested)}
    exported = environ.get("ROS_DOMAIN_ID", "")
    domain = PRIVATE_DOMAINS[os.getpid() % len(PRIVATE_DOMAINS)]
    if str(domain) == exported.strip():
        domain = PRIVATE_DOMAINS[(os.getpid() + 1) % len(PRIVATE_DOMAINS)]
    return {"ROS_DOMAIN_ID": str(domain), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_STATIC_PEERS": ""}


def replay_live(bags: list[Path], args, config, maps: dict, schedule, limits, out: Path, header: dict, log) -> dict:
    for name, value in dds_environment(args.ros_domain_id, os.environ).items():
        if value:
            os.environ[name] = value
        else:
            os.environ.pop(name, None)
    log(
        f"live replay in ROS domain {os.environ['ROS_DOMAIN_ID']} "
        f"({'as asked' if args.ros_domain_id is not None else 'private, localhost only'})"
    )
    infos = [inspect(b, config.cameras, maps, config.action_names, depth=config.use_depth) for b in bags]
    instructions = []
    for info in infos:
        text = args.instruction or next((m.value for m in read_messages(info, ["instruction"])), None)
        if not text:
            raise ReplayError(
                f"{info.path}: no instruction recorded; give one with --instruction TEXT. The bag has:\n{info.table()}"
            )
        instructions.append(text)
    out.mkdir(parents=True, exist_ok=True)

    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped
    from rclpy.context import Context
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import String
    from trajectory_msgs.msg import JointTrajectory

    from mambavla.ros.diagnostics import status_values
    from mambavla.ros.launcher import NodeProcess
    from mambavla.ros.qos import COMMAND_QOS, DIAGNOSTICS_QOS, LATCHED_QOS, SENSOR_QOS, STATE_QOS
    from mambavla.ros.spin import BackgroundSpin
    from mambavla.runtime.policy_config import PolicyNodeConfig

    params = load_params(("policy.yaml",), "policy_node")
    cameras = list(config.cameras)
    camera_topics = list(params.get("camera_topics", [f"/cameras/{c}/image_raw" for c in cameras]))
    if len(camera_topics) != len(cameras):
        camera_topics = [f"/cameras/{c}/image_raw" for c in cameras]
    overrides = {
        "checkpoint": args.checkpoint,
        "preset": args.preset or "tiny",
        "device": args.device,
        "seed": args.seed,
        "infer_mode": schedule.infer_mode,
        "camera_topics": camera_topics,
        "torch_threads": 1,
        "max_observation_age": schedule.max_observation_age,
        "infer_rate_hz": 1.0 / schedule.infer_period,
    }

    # a context of its own, in the private domain: the calling process may have rclpy up in another one
    context = Context()
    rclpy.init(context=context)
    node = rclpy.create_node("mambavla_replay", context=context)
    lock = threading.Lock()
    received: list[tuple[float, JointTrajectory]] = []
    status: dict = {}

    def on_chunk(msg):
        with lock:
            received.append((time.time(), msg))

    def on_diag(msg):
        for s in msg.status:
            if "policy" in s.name:
                status.update(status_values(msg, s.name))

    node.create_subscription(JointTrajectory, params.get("action_topic", "/action_chunk"), on_chunk, COMMAND_QOS)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, DIAGNOSTICS_QOS)
    # a depth policy: each camera's depth on the topic policy_node takes it from (its depth_topics, or derived)
    node_config = PolicyNodeConfig.from_params({**params, **overrides}, "config/policy.yaml")
    depth_topics = list(node_config.depth_topics_used) if config.use_depth else []
    link = _Link(
        [node.create_publisher(Image, t, SENSOR_QOS) for t in camera_topics],
        node.create_publisher(PoseStamped, params.get("ee_pose_topic", "/ee_pose"), STATE_QOS),
        node.create_publisher(JointState, params.get("joint_states_topic", "/joint_states"), STATE_QOS),
        node.create_publisher(String, params.get("instruction_topic", "/instruction"), LATCHED_QOS),
        lock,
        received,
        params.get("base_frame", "fr3_link0"),
        log,
        [node.create_publisher(Image, t, SENSOR_QOS) for t in depth_topics],
    )
    spin = BackgroundSpin(node)
    policy = NodeProcess("policy_node", ["policy.yaml"], overrides, out / "policy_node.log")
    runs = []
    recorded_s = 0.0
    try:
        log("starting policy_node ...")
        end = time.monotonic() + 300.0
        while status.get("state") not in ("WAITING", "RUNNING", "ERROR"):
            if not policy.alive or time.monotonic() > end:
                raise RuntimeError(f"policy_node did not come up:\n{policy.log_tail()}")
            spin.raise_if_failed("policy_node to come up")
            time.sleep(0.1)
        if status.get("state") == "ERROR":
            raise RuntimeError(f"policy_node: {status.get('reason')}")
        for info, text in zip(infos, instructions):
            with lock:
                received.clear()
            chunks, recording, seconds = _play(info, text, args.rate, config, link)
            spin.raise_if_failed(f"the chunks of {info.path.name}")  # no score from part of them
            runs.append((info.path.name, chunks, recording))
            recorded_s += seconds
        node_status = dict(status)
    finally:
        policy.stop()
        try:
            spin.stop()
        finally:
            rclpy.try_shutdown(context=context)
    header = {
        **header,
        "mode": "live",
        "ros_domain_id": int(os.environ["ROS_DOMAIN_ID"]),
        "bags": [str(b) for b in bags],
        "roles": {i.path.name: {"roles": i.roles, "notes": i.notes} for i in infos},
        "infer_mode": schedule.infer_mode,
        "recorded_s": round(recorded_s, 3),
        "rate": args.rate,
        "policy_node_status": node_status,
        "policy_node_log": str(out / "policy_node.log"),
    }
    return write_report(out, runs, limits, config.action_names, header)


@dataclass
class _Link:
    """The replay node's side of policy_node: what `_play` publishes on, and the chunks it hears (under `lock`)."""

    image_pubs: list  # one per camera of the checkpoint, in its order
    pose_pub: object
    joint_pub: object
    instruction_pub: object
    lock: threading.Lock
    received: list  # (wall time, JointTrajectory)
    base_frame: str
    log: Callable[[str], None]
    depth_pubs: list  # one per camera for a policy that takes depth, else empty


def _play(info, text, rate, config, link: _Link) -> tuple[list[PredictedChunk], Recording, float]:
    from sensor_msgs.msg import JointState
    from std_msgs.msg import String

    from mambavla.ros.convert import depth_to_image, pose_to_msg, rgb_to_image, seconds_to_stamp, trajectory_to_chunk

    cameras = list(config.cameras)
    depth_roles = [depth_role(c) for c in cameras] if link.depth_pubs else []
    roles = cameras + depth_roles + ["joint_states", "ee_pose", "actions"]
    messages = list(read_messages(info, roles))  # decoded up front: playback pace is not held up by decoding
    if not messages:
        raise ReplayError(f"{info.path}: no messages on the replayed topics")
    recording = Recording()
    # camera -> (stamp, rgb at the policy's size, wall time sent) of every frame played
    frames: dict[str, list[tuple[float, np.ndarray, float]]] = {c: [] for c in cameras}
    link.instruction_pub.publish(String(data=text))
    time.sleep(1.0)  # the node applies the instruction (and resets its history) before the first frame
    r0 = messages[0].receipt
    start = time.time() + 0.2
    offset = start - r0  # bag time -> node (system) clock
    link.log(f"playing {info.path.name} ({messages[-1].receipt - r0:.1f} s) into policy_node ...")
    for m in messages:
        delay = start + (m.receipt - r0) / rate - time.time()
        if delay > 0:
            time.sleep(delay)
        stamp = m.stamp + offset
        if m.role in cameras:
            i = cameras.index(m.role)
            link.image_pubs[i].publish(rgb_to_image(m.value, stamp, f"{m.role}_camera"))
            frames[m.role].append((m.stamp, resize_rgb(m.value, config.image_size), time.time()))
            continue
        if m.role in depth_roles:
            i = depth_roles.index(m.role)
            link.depth_pubs[i].publish(depth_to_image(m.value, stamp, f"{cameras[i]}_camera"))
            continue
        recording.add(m.role, m.stamp, m.value)
        if m.role == "ee_pose":
            link.pose_pub.publish(pose_to_msg(m.value[0], m.value[1], stamp, link.base_frame))
        elif m.role == "joint_states":
            msg = JointState(name=list(m.value["names"]), position=[float(v) for v in m.value["positions"]])
            msg.header.stamp = seconds_to_stamp(stamp)
            link.joint_pub.publish(msg)
    time.sleep(1.5)  # chunks of the last frames
    with link.lock:
        got = list(link.received)
    pose_t, pose_v, _ = recording.pose_series()
    fingers_t = np.asarray(recording.finger_t)
    chunks = []
    for wall, msg in got:
        try:
            chunk = trajectory_to_chunk(msg, link.base_frame)
        except ValueError as err:
            link.log(f"policy_node published a malformed chunk: {err}")
            continue
        bag_stamp = chunk.stamp - offset
        images, sent = {}, []
        for cam in cameras:
            k = int(np.argmin([abs(s - bag_stamp) for s, _, _ in frames[cam]])) if frames[cam] else None
            if k is not None:
                images[cam] = frames[cam][k][1]
                sent.append(frames[cam][k][2])
        pose = interpolate(pose_t, pose_v, np.array([bag_stamp]))[0]
        width = np.interp(bag_stamp, fingers_t, recording.finger_width) if len(fingers_t) else 0.0
        proprio = np.concatenate([pose, [width / 2, width / 2]])
        chunks.append(
            PredictedChunk(
                stamp=bag_stamp,
                published=wall - offset,
                receipt=(max(sent) if sent else wall) - offset,
                dt=chunk.dt,
                actions=chunk.actions,
                action_mode=chunk.action_mode,
                absolute=absolute_targets(chunk.actions, chunk.action_mode, proprio),
                inference_ms=float("nan"),
                images=images,
            )
        )
    chunks.sort(key=lambda c: c.stamp)
    return chunks, recording, messages[-1].receipt - r0
