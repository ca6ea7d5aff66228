"""`mambavla replay`: offline replay of recorded episodes and foreign bags, the errors, and --live."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from cell_bags import BagWriter

from mambavla import spaces
from mambavla.cli import main
from mambavla.data import EpisodeWriter

SIZE = (48, 64)  # (H, W) recorded; the tiny policy sees 32 x 32
DT = 0.05


def _trajectory(n: int):
    """A slow straight move with a grasp half way: positions, quats, finger positions, actions."""
    t = np.arange(n) * DT
    position = np.stack([0.45 + 0.02 * t, 0.05 * t, 0.3 - 0.03 * t], axis=1)
    quat = np.tile(spaces.EE_REFERENCE_QUAT, (n, 1))
    gripper = (t > t[-1] / 2).astype(float)
    fingers = np.where(gripper[:, None] > 0.5, 0.02, 0.04) * np.ones((n, 2))
    actions = np.concatenate([spaces.pose_to_vector(position, quat), gripper[:, None]], axis=1)
    return t, position, quat, fingers, actions


def _image(k: int, h: int, w: int) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = 200  # red: a swapped channel shows
    img[: h // 2, (k * 3) % w] = (0, 255, 0)
    return img


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import torch

    from mambavla.model.checkpoint import save_checkpoint
    from mambavla.model.config import preset
    from mambavla.model.modeling_mambavla import MambaVLA

    torch.manual_seed(0)
    return save_checkpoint(MambaVLA(preset("tiny")), tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def episode(tmp_path_factory):
    """Our own layout, written with EpisodeWriter as `mambavla collect` does: 3 s at 20 Hz."""
    path = tmp_path_factory.mktemp("bags") / "episode_0000001"
    t, position, quat, fingers, actions = _trajectory(60)
    with EpisodeWriter(path, ("front", "wrist"), SIZE, DT, meta={"instruction": "lift the red cube"}) as writer:
        writer.write_instruction(0.0, "lift the red cube")
        for k in range(len(t)):
            writer.write_frame(
                t[k],
                {"front": _image(k, *SIZE), "wrist": _image(k + 5, *SIZE)},
                np.zeros(7),
                fingers[k],
                position[k],
                quat[k],
                actions[k],
            )
    return path


def _foreign_bag(path, with_front: bool = True):
    """Another driver's layout: JPEG CompressedImage, bgr8 raw frames, JointState with extra joints in
    their own order, the pose on its own topic, no instruction, no actions."""
    t, position, quat, fingers, _ = _trajectory(50)
    t = t + 1700000000.0  # wall-clock stamps, as a real recording has
    joints = (
        ["panda_finger_joint2", "extra_rail_joint"] + [f"panda_joint{i}" for i in range(1, 8)] + ["panda_finger_joint1"]
    )
    bag = BagWriter(path)
    bag.add("/robot_description", bag.string("<robot/>"), t[0])
    for k, tk in enumerate(t):
        header = bag.header(tk, "cam")
        rgb = _image(k, *SIZE)
        if with_front:
            bag.add("/camera/color/image_raw/compressed", bag.jpeg(header, rgb, "rgb8; jpeg compressed bgr8"))
        bag.add("/wrist_cam/image_raw", bag.image(header, rgb, "bgr8"))
        values = {"panda_finger_joint1": fingers[k, 0], "panda_finger_joint2": fingers[k, 1], "extra_rail_joint": 0.7}
        bag.add("/franka/joint_states", bag.joint_state(header, joints, [values.get(n, 0.1) for n in joints]))
        bag.add("/franka/ee_pose", bag.pose(header, position[k], quat[k]))
    return bag.close()


def _replay(capsys, *argv) -> tuple[int, dict | None, str]:
    code = main(["replay", *map(str, argv), "--json", "--no-progress"])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else None), captured.err


@pytest.mark.slow
def test_offline_replay_of_an_episode_gives_finite_metrics_and_pictures(checkpoint, episode, tmp_path, capsys):
    code, summary, err = _replay(capsys, episode, "--checkpoint", checkpoint, "--out", tmp_path, "--zero-latency")
    assert code == 0, err
    m = summary["metrics"]
    # period mode: one step per policy_period (0.2 s) of frame time over 3 s of 20 Hz frames
    assert m["chunks"] == 15
    assert set(m["mae"]) == set(spaces.ACTION_NAMES) and all(np.isfinite(v) and v > 0 for v in m["mae"].values())
    assert len(m["by_horizon"]["position_mm"]) == 4 and all(np.isfinite(m["by_horizon"]["position_mm"]))
    assert 0.0 <= m["gripper_agreement"] <= 1.0 and m["seams"]["seams"] == 14
    assert m["safety"]["accepted"] + m["safety"]["rejected"] == 15
    assert sum(m["safety"]["rejected_by_kind"].values()) == m["safety"]["rejected"]
    assert m["inference_ms"]["n"] == 15 and m["inference_ms"]["p99"] >= m["inference_ms"]["p50"] > 0
    assert m["reference"] == ["ee_pose"] and m["gripper_reference"] == ["actions"]
    for name in ("trajectories_episode_0000001.png", "horizon_error.png", "worst_frames.png", "replay.json"):
        assert (tmp_path / name).stat().st_size > 1000
    written = json.loads((tmp_path / "replay.json").read_text())
    assert written["metrics"]["chunks"] == 15 and written["checkpoint"] == str(checkpoint) == summary["checkpoint"]


def test_scores_are_zero_for_the_recording_itself_and_exact_for_an_offset(episode):
    from mambavla.control.safety import SafetyLimits
    from mambavla.evaluation.bag import inspect, read_messages
    from mambavla.evaluation.metrics import score
    from mambavla.evaluation.recording import PredictedChunk, Recording

    info = inspect(episode, ("front", "wrist"))
    recording = Recording()
    for msg in read_messages(info, ["ee_pose", "actions", "joint_states"]):
        recording.add(msg.role, msg.stamp, msg.value)
    _, _, _, _, actions = _trajectory(60)

    def chunks(offset):
        out = []
        for k in range(0, 50, 4):
            rows = actions[k : k + 8] + offset
            out.append(PredictedChunk(k * DT, k * DT + 0.01, k * DT, DT, rows, "absolute", rows, 5.0, {}))
        return out

    exact, _ = score([(chunks(0.0), recording)], SafetyLimits())
    assert max(exact["mae"].values()) < 1e-6 and exact["gripper_agreement"] == 1.0
    assert exact["seams"]["position_jump_mm"]["max"] < 1e-6 and exact["safety"]["rejected"] == 0
    shifted, _ = score([(chunks(np.array([0.01, 0, 0, 0, 0, 0, 0])), recording)], SafetyLimits())
    assert shifted["mae"]["x"] == pytest.approx(10.0) and shifted["mae"]["y"] < 1e-6
    assert shifted["by_horizon"]["position_mm"] == pytest.approx([10.0] * 8)
    far, _ = score([(chunks(np.array([0.5, 0, 0, 0, 0, 0, 0])), recording)], SafetyLimits())
    assert far["safety"]["rejected"] == 13 and "outside workspace" in far["safety"]["rejected_by_kind"]
    late = chunks(0.0)[-1]
    late.published = late.stamp + 10.0  # long after the recording: no pose to check it against, counted, no crash
    after, _ = score([([late], recording)], SafetyLimits())
    assert after["safety"]["rejected_by_kind"] == {"no pose": 1}


@pytest.mark.slow
def test_foreign_bag_replays_with_map_and_instruction(checkpoint, tmp_path, capsys):
    bag = _foreign_bag(tmp_path / "foreign")
    args = (bag, "--checkpoint", checkpoint, "--map", "front=/camera/color/image_raw/compressed", "--out", tmp_path)
    code, _, err = _replay(capsys, *args)
    assert code == 2 and "--instruction" in err and "/robot_description" in err  # no instruction recorded: say so
    code, summary, err = _replay(capsys, *args, "--instruction", "lift the red cube", "--zero-latency")
    assert code == 0, err
    roles = summary["roles"]["foreign"]["roles"]
    assert roles == {
        "front": "/camera/color/image_raw/compressed",
        "wrist": "/wrist_cam/image_raw",
        "joint_states": "/franka/joint_states",
        "ee_pose": "/franka/ee_pose",
    }
    m = summary["metrics"]
    assert m["chunks"] >= 10 and all(np.isfinite(v) for v in m["mae"].values())
    assert m["gripper_reference"] == ["finger joints"]


def test_images_decode_jpeg_png_and_raw_encodings_to_rgb():
    from types import SimpleNamespace as Msg

    import cv2

    from mambavla.data.images import image_to_rgb

    rgb = _image(3, *SIZE)
    bgr = np.ascontiguousarray(rgb[..., ::-1])

    def raw(enc, arr, ch):
        return Msg(encoding=enc, height=SIZE[0], width=SIZE[1], step=SIZE[1] * ch, is_bigendian=0, data=arr.tobytes())

    assert np.array_equal(image_to_rgb(raw("rgb8", rgb, 3)), rgb)
    assert np.array_equal(image_to_rgb(raw("bgr8", bgr, 3)), rgb)
    rgba = np.concatenate([bgr, np.full((*SIZE, 1), 255, np.uint8)], axis=2)
    assert np.array_equal(image_to_rgb(raw("bgra8", rgba, 4)), rgb)
    png = Msg(format="png", data=cv2.imencode(".png", bgr)[1].tobytes())
    assert np.array_equal(image_to_rgb(png), rgb)
    jpeg = Msg(format="jpeg", data=cv2.imencode(".jpg", bgr)[1].tobytes())
    assert np.abs(image_to_rgb(jpeg).astype(int) - rgb).mean() < 8
    assert image_to_rgb(raw("bgr8", bgr, 3), (32, 32)).shape == (32, 32, 3)
    with pytest.raises(ValueError, match="encoding"):
        image_to_rgb(raw("32FC1", rgb, 3))
    with pytest.raises(ValueError, match="decode"):
        image_to_rgb(Msg(format="jpeg", data=b"not a jpeg"))


@pytest.mark.slow
def test_bag_without_a_camera_gets_an_error_with_the_topic_table(checkpoint, tmp_path, capsys):
    bag = _foreign_bag(tmp_path / "no_front", with_front=False)
    code, _, err = _replay(capsys, bag, "--checkpoint", checkpoint, "--instruction", "x", "--out", tmp_path / "out")
    assert code == 2 and "Traceback" not in err
    assert "no topic for camera(s) front" in err and "--map" in err
    assert "/wrist_cam/image_raw" in err and "sensor_msgs/msg/Image" in err and "/franka/ee_pose" in err
    code, _, err = _replay(
        capsys, bag, "--checkpoint", checkpoint, "--map", "front=/franka/ee_pose", "--out", tmp_path / "out"
    )
    assert code == 2 and "front" in err and "geometry_msgs/msg/PoseStamped" in err


def test_truncated_bag_is_reported_without_a_traceback(checkpoint, episode, tmp_path, capsys):
    bag = tmp_path / "truncated"
    shutil.copytree(episode, bag)
    mcap = next(bag.glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 3])
    code, _, err = _replay(capsys, bag, "--checkpoint", checkpoint, "--out", tmp_path / "out")
    assert code == 2 and "Traceback" not in err and "corrupt" in err and str(bag) in err


def test_live_replay_never_joins_an_exported_domain_unless_asked():
    from mambavla.evaluation.live import PRIVATE_DOMAINS, dds_environment

    for exported in ("0", "42", str(PRIVATE_DOMAINS[os.getpid() % len(PRIVATE_DOMAINS)])):
        env = dds_environment(None, {"ROS_DOMAIN_ID": exported, "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"})
        assert env["ROS_DOMAIN_ID"] != exported and int(env["ROS_DOMAIN_ID"]) in PRIVATE_DOMAINS
        assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST" and env["ROS_STATIC_PEERS"] == ""
    assert dds_environment(207, {"ROS_DOMAIN_ID": "0"}) == {"ROS_DOMAIN_ID": "207"}  # --ros-domain-id: as asked
    with pytest.raises(ValueError, match="0..232"):
        dds_environment(300, {})


@pytest.mark.slow
@pytest.mark.ros
def test_live_replay_scores_policy_node_in_a_private_domain(checkpoint, episode, tmp_path, capsys, monkeypatch):
    """A shell that exports the robot's domain (206 here): the replay's poses, instruction and chunks stay out of it."""
    import threading

    import rclpy
    from geometry_msgs.msg import PoseStamped
    from std_msgs.msg import String
    from trajectory_msgs.msg import JointTrajectory

    import mambavla.evaluation.live as live
    from mambavla.ros.qos import COMMAND_QOS, LATCHED_QOS, STATE_QOS
    from mambavla.ros.spin import BackgroundSpin

    robot_domain = 206
    monkeypatch.setattr(live, "PRIVATE_DOMAINS", range(205, 210))  # this test's share of the machine's domains
    monkeypatch.setenv("ROS_DOMAIN_ID", str(robot_domain))
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=robot_domain)
    robot = rclpy.create_node("robot_graph", context=context)
    heard, lock = [], threading.Lock()

    def listener(topic):
        def on_message(_msg):
            with lock:
                heard.append(topic)

        return on_message

    for kind, topic, qos in (
        (PoseStamped, "/ee_pose", STATE_QOS),
        (String, "/instruction", LATCHED_QOS),
        (JointTrajectory, "/action_chunk", COMMAND_QOS),
    ):
        robot.create_subscription(kind, topic, listener(topic), qos)
    spin = BackgroundSpin(robot)
    try:
        code, summary, err = _replay(capsys, episode, "--checkpoint", checkpoint, "--live", "--out", tmp_path)
    finally:
        spin.stop()
        context.try_shutdown()
    assert code == 0, err
    assert heard == []  # nothing reached the exported domain
    assert summary["ros_domain_id"] in range(205, 210) and summary["ros_domain_id"] != robot_domain
    m = summary["metrics"]
    # policy_node in period mode over 3 s of frames: about one chunk per 0.2 s (fewer when the CPU lags)
    assert 5 <= m["chunks"] <= 16, m["chunks"]
    assert all(np.isfinite(v) for v in m["mae"].values()) and m["observation_to_chunk_ms"]["n"] == m["chunks"]
    assert summary["mode"] == "live" and summary["policy_node_status"]["state"] == "RUNNING"
    assert m["safety"]["accepted"] + m["safety"]["rejected"] == m["chunks"]
    assert (tmp_path / "horizon_error.png").exists() and (tmp_path / "worst_frames.png").exists()


def test_an_instruction_the_checkpoint_refuses_stops_replay_naming_it_or_the_bag(checkpoint, episode, tmp_path,
                                                                                  capsys):
    import shutil

    from mambavla.runtime.instruction_gate import InstructionGate

    gated = shutil.copytree(checkpoint, tmp_path / "gated")
    InstructionGate(("push the blue cube to the left",)).save(gated)
    code, _, err = _replay(capsys, episode, "--checkpoint", gated, "--instruction", "lift the orange cube",
                           "--out", tmp_path / "a", "--zero-latency")
    assert code == 2 and "it names orange, a colour no training instruction names (they name blue)" in err
    assert not (tmp_path / "a" / "replay.json").exists()  # refused before any bag
    code, _, err = _replay(capsys, episode, "--checkpoint", gated, "--out", tmp_path / "b", "--zero-latency")
    assert code == 2 and f"{episode}: instruction 'lift the red cube': it names red" in err  # the recorded one


def test_a_live_replay_without_chunks_says_what_policy_node_refused():
    from mambavla.commands.replay import _print_summary

    lines = []
    rejection = "instruction rejected: instruction 'make coffee': it is outside what the policy was trained for"
    _print_summary({"metrics": {"chunks": 0}, "bags": ["b"], "mode": "live", "recorded_s": 3.0,
                    "policy_node_status": {"last_rejection": rejection}}, lines.append)
    assert lines[-1] == f"no chunk was produced (policy_node's last rejection: {rejection})"
    _print_summary({"metrics": {"chunks": 0}, "bags": ["b"], "mode": "offline"}, lines.append)
    assert lines[-1] == "no chunk was produced (see the roles and notes in replay.json)"


def test_a_depth_policy_replays_offline_and_live_with_each_frames_depth(tmp_path, capsys, monkeypatch):
    """The recorded depth reaches the policy in both modes: offline paired by stamp (runtime/depth_frames.py),
    live published on the depth topics policy_node subscribes to for a depth checkpoint."""
    import torch

    import mambavla.evaluation.live as live
    from mambavla.model.checkpoint import save_checkpoint
    from mambavla.model.config import preset
    from mambavla.model.modeling_mambavla import MambaVLA

    torch.manual_seed(0)
    checkpoint = save_checkpoint(MambaVLA(preset("tiny").replace(use_depth=True)), tmp_path / "rgbd")
    path = tmp_path / "bags" / "episode_0000001"
    t, position, quat, fingers, actions = _trajectory(60)
    with EpisodeWriter(path, ("front", "wrist"), SIZE, DT, meta={"instruction": "lift the red cube"},
                       depth_cameras=("front", "wrist")) as writer:
        writer.write_instruction(0.0, "lift the red cube")
        for k in range(len(t)):
            depth = np.full(SIZE, 700 + 5 * k, np.uint16)
            writer.write_frame(t[k], {"front": _image(k, *SIZE), "wrist": _image(k + 5, *SIZE)}, np.zeros(7),
                               fingers[k], position[k], quat[k], actions[k], depth={"front": depth, "wrist": depth})
    code, summary, err = _replay(capsys, path, "--checkpoint", checkpoint, "--out", tmp_path / "off", "--zero-latency")
    assert code == 0, err
    assert summary["metrics"]["chunks"] == 15  # every period's step had its depth
    monkeypatch.setattr(live, "PRIVATE_DOMAINS", range(212, 216))
    monkeypatch.delenv("ROS_DOMAIN_ID", raising=False)
    code, summary, err = _replay(capsys, path, "--checkpoint", checkpoint, "--live", "--out", tmp_path / "live")
    assert code == 0, err
    assert summary["metrics"]["chunks"] >= 5, summary["policy_node_status"]  # not held waiting for depth
    assert summary["policy_node_status"]["depth_topics"] == ("/cameras/front/aligned_depth_to_color/image_raw, "
                                                             "/cameras/wrist/aligned_depth_to_color/image_raw")
