"""Depth end to end over Fast DDS: sim_node publishes each camera's aligned depth (16UC1 mm, the colour frame's
stamp), recorder_node stores it in the episode bag as it came, and policy_node feeds a depth checkpoint the depth
stamped as its colour frames, holding (and saying which is missing) while there is none, and refusing depth that
is not aligned to its colour frames.

The sim and recorder stack runs on the session's test domain; the depth policy runs in this process on a domain
of its own (211), with the test playing the RGB-D cameras, the robot state and the operator; policy_node's and
sim_node's depth topics are checked on 218 and 219."""

from __future__ import annotations

import re
import threading
import time
from collections import deque

import numpy as np
import pytest
import ros_harness  # noqa: F401  (an isolated DDS domain, loopback discovery, before a context starts)

from mambavla.data.bags import camera_topic, depth_topic
from mambavla.runtime.policy_config import PolicyNodeConfig, depth_topic_of

CAMERAS = ("front", "wrist")
CAMERA_SIZE = [48, 64]
CAMERA_HZ = 5.0  # steady on a loaded 2-core machine with two renders per camera
POLICY_DOMAIN = 211
SUBSCRIPTIONS_DOMAIN = 218  # policy_node built, never spun: what it subscribes to at start
SIM_TOPICS_DOMAIN = 219  # sim_node built in this process: the topics it publishes depth on
REC = "mambavla/recorder_node"
OK, WARN = 0, 1  # diagnostic_msgs/DiagnosticStatus levels, as status_values reads them


def test_the_default_depth_topics_sit_beside_the_camera_topics_as_realsense_ros_lays_them_out():
    assert all(depth_topic_of(camera_topic(name)) == depth_topic(name) for name in CAMERAS)
    assert depth_topic_of("/camera/camera/color/image_raw") == "/camera/camera/aligned_depth_to_color/image_raw"
    # image_transport's compressed topic sits below the image topic: its depth is the image's
    assert depth_topic_of("/camera/camera/color/image_raw/compressed") == \
        "/camera/camera/aligned_depth_to_color/image_raw"
    config = PolicyNodeConfig(camera_topics=("/cam_a/color/image_raw", "/b/image_raw"))
    assert config.depth_topics_used == ("/cam_a/aligned_depth_to_color/image_raw",
                                        "/b/aligned_depth_to_color/image_raw")
    assert PolicyNodeConfig(depth_topics=("/d1", "/d2")).depth_topics_used == ("/d1", "/d2")
    with pytest.raises(ValueError, match="one topic per camera"):
        PolicyNodeConfig(depth_topics=("/d1",))


def test_a_colour_frame_pairs_with_its_own_depth_never_a_neighbouring_frames():
    """Aligned depth carries its colour frame's stamp: a lost depth frame holds the step rather than feeding the
    depth of the frame before or after (33 ms away at 30 Hz)."""
    from mambavla.runtime.depth_frames import MAX_OFFSET, DepthFrame, DepthFrames

    assert PolicyNodeConfig().max_depth_offset == MAX_OFFSET  # the node's default is replay's
    stamps = [100.0 + k / 30 for k in range(4)]
    frames = DepthFrames(["front"], ["/front/depth"], MAX_OFFSET)
    for k in (0, 1, 3):  # frame 2's depth was lost
        frames.add(0, DepthFrame(np.full((2, 2), 500 + k, np.uint16), stamps[k]))
    assert frames.pair((stamps[1] + 0.002,))[0][0, 0] == 501  # its own, give or take stamp rounding
    reason = frames.pair((stamps[2],))
    assert isinstance(reason, str) and re.search(r"front \(nearest [+-]0\.033 s from its colour", reason), reason


def test_sim_launch_publishes_depth_when_the_checkpoint_takes_it_or_when_asked(tmp_path):
    from test_launch_files import ROOT, _function_from

    publish_depth = _function_from(ROOT / "launch" / "sim.launch.py", "publish_depth")
    (tmp_path / "rgbd").mkdir()
    (tmp_path / "rgbd" / "config.json").write_text('{"use_depth": true}')
    (tmp_path / "rgb").mkdir()
    (tmp_path / "rgb" / "config.json").write_text('{"use_depth": false}')
    assert publish_depth("auto", str(tmp_path / "rgbd")) and not publish_depth("auto", str(tmp_path / "rgb"))
    assert not publish_depth("auto", "") and publish_depth("true", "") and not publish_depth("false", str(tmp_path))
    with pytest.raises(ValueError, match="auto, true or false"):
        publish_depth("maybe", "")


def test_the_recorder_needs_live_depth_and_stores_metres_and_compressed_depth_as_16uc1_mm(tmp_path):
    """EpisodeRecorder without ROS, with `depth`: messages in as a raw subscription hands them over."""
    import struct

    import cv2
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore
    from test_recorder import SIZE, feed, header

    from mambavla.data.bags import ReadOptions, read_episode
    from mambavla.data.recorder import EpisodeRecorder

    ts = get_typestore(Stores.ROS2_KILTED)
    T = ts.types

    def feed_depth(t0: float, steps: int, dt: float = 1 / 30) -> None:
        """Each frame's depth at its stamp: front in metres (32FC1), wrist as compressed_depth_image_transport
        sends millimetres (a config header, then a 16-bit PNG)."""
        for k in range(steps):
            ns = int(round(t0 * 1e9)) + k * int(round(dt * 1e9))
            metres = np.full(SIZE, 0.5 + 0.01 * k, np.float32)
            front = T["sensor_msgs/msg/Image"](header=header(ts, ns), height=SIZE[0], width=SIZE[1], encoding="32FC1",
                                               is_bigendian=0, step=SIZE[1] * 4, data=metres.reshape(-1).view(np.uint8))
            png = cv2.imencode(".png", np.full(SIZE, 300 + k, np.uint16))[1].tobytes()
            wrist = T["sensor_msgs/msg/CompressedImage"](header=header(ts, ns), format="16UC1; compressedDepth png",
                                                         data=np.frombuffer(struct.pack("<iff", 0, 0.0, 0.0) + png,
                                                                            np.uint8))
            for name, msg in (("front", front), ("wrist", wrist)):
                recorder.on_depth(name, ns, bytes(ts.serialize_cdr(msg, msg.__msgtype__)), msg is wrist)

    recorder = EpisodeRecorder(tmp_path, CAMERAS, reset_time=0.0, depth=True)
    try:
        feed(recorder, ts, 100.0, 1)
        assert recorder.missing_inputs() == ["front depth", "wrist depth"]
        ok, text = recorder.start("lift")
        assert not ok and "front depth, wrist depth" in text
        feed_depth(100.0, 1)
        assert recorder.start("lift")[0]
        feed(recorder, ts, 101.0, 6)
        feed_depth(101.0, 6)
        ok, text = recorder.save()
        assert ok and "dropped" not in text, text
    finally:
        recorder.close()
    path = tmp_path / "episode_000000"
    with Reader(path) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        stored = [ts.deserialize_cdr(data, c.msgtype) for c, _, data in reader.messages()
                  if c.topic in (depth_topic("front"), depth_topic("wrist"))]
    assert counts[depth_topic("front")] == counts[depth_topic("wrist")] == 6
    assert {(m.__msgtype__, m.encoding) for m in stored} == {("sensor_msgs/msg/Image", "16UC1")}
    episode = read_episode(path, options=ReadOptions(depth=True))
    assert episode.depth["front"][:, 0, 0].tolist() == [500 + 10 * k for k in range(6)]
    assert episode.depth["wrist"][:, 0, 0].tolist() == [300 + k for k in range(6)]


@pytest.mark.ros
@pytest.mark.sim
def test_sim_node_publishes_depth_beside_its_camera_topics_or_on_a_pattern_given():
    """Where policy_node and recorder_node take it by default, whatever the camera topics; a pattern without
    {camera} (every camera's depth on one topic) is refused."""
    import rclpy
    from rclpy.parameter import Parameter

    from mambavla.ros.sim_node import SimNode

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=SIM_TOPICS_DOMAIN)

    def sim_node(**params):
        params = {"depth": True, "camera_size": [24, 32], "camera_rate_hz": 1.0, **params}
        return SimNode(context=context, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])

    try:
        for params, expected in (({"camera_topic": "/rig/{camera}/color/image_raw"},
                                  "/rig/{camera}/aligned_depth_to_color/image_raw"),
                                 ({"depth_topic": "/rig/{camera}/depth"}, "/rig/{camera}/depth")):
            node = sim_node(**params)
            try:
                assert {c: p.topic_name for c, p in node.depth_pubs.items()} == \
                    {c: expected.format(camera=c) for c in CAMERAS}
            finally:
                node.shutdown()
                node.destroy_node()
        with pytest.raises(ValueError, match=r"'/depth' .* has no \{camera\}: set depth_topic"):
            sim_node(depth_topic="/depth")
    finally:
        context.try_shutdown()


@pytest.mark.ros
@pytest.mark.parametrize("transport", ["raw", "compressedDepth"])
def test_policy_node_subscribes_to_a_depth_checkpoints_depth_at_start_beside_the_remapped_camera_topics(tmp_path,
                                                                                                    transport):
    """use_depth is read from the checkpoint's config.json in the constructor, which subscribes on the executor's
    thread (never the worker's, once the policy has loaded: here it never does, there are no weights); the depth
    topics are derived from the camera topics as remapped."""
    import rclpy
    from rclpy.parameter import Parameter

    from mambavla.ros.policy_node import PolicyNode

    (tmp_path / "config.json").write_text('{"use_depth": true}')
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=SUBSCRIPTIONS_DOMAIN)
    remap = ["--ros-args", "-r", f"{camera_topic('front')}:=/rig/front/color/image_raw"]
    params = [Parameter("checkpoint", value=str(tmp_path)), Parameter("device", value="cpu"),
              Parameter("depth_transport", value=transport)]
    node = PolicyNode(context=context, cli_args=remap, parameter_overrides=params)
    try:
        subscribed = {s.topic_name: s.msg_type.__name__ for s in node.subscriptions}
        # compressed_depth_image_transport's topic: the suffix after the base topic is remapped
        suffix, msg_type = ("", "Image") if transport == "raw" else ("/compressedDepth", "CompressedImage")
        expected = [f"/rig/front/aligned_depth_to_color/image_raw{suffix}", depth_topic("wrist") + suffix]
        assert node.depth_topics == expected and {subscribed.get(t) for t in expected} == {msg_type}, subscribed
        assert {"/rig/front/color/image_raw", camera_topic("wrist")} <= set(subscribed)
        end = time.monotonic() + 120.0
        while node.state == "LOADING" and time.monotonic() < end:
            time.sleep(0.1)
        assert node.state == "ERROR", node.reason  # no weights: the worker ends before the node is taken down
    finally:
        node.shutdown()
        node.destroy_node()
        context.try_shutdown()


def test_two_cameras_on_one_derived_depth_topic_are_refused_at_start(tmp_path):
    import rclpy
    from rclpy.parameter import Parameter

    from mambavla.ros.policy_node import PolicyNode

    (tmp_path / "config.json").write_text('{"use_depth": true}')
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=SUBSCRIPTIONS_DOMAIN)
    params = [Parameter("checkpoint", value=str(tmp_path)), Parameter("device", value="cpu"),
              Parameter("camera_topics", value=["/camera/color/image_raw", "/camera/color/image_rect"])]
    try:  # both derive /camera/aligned_depth_to_color/image_raw
        with pytest.raises(ValueError, match=r"/camera/aligned_depth_to_color/image_raw'\] would serve more than "
                                             r"one of the cameras"):
            PolicyNode(context=context, parameter_overrides=params)
    finally:
        context.try_shutdown()


def publish_resting_robot(pose_pub, joint_pub, now: float) -> None:
    """The robot state a recorder or policy_node needs, of an arm at rest with the hand open, stamped `now`."""
    from sensor_msgs.msg import JointState

    from mambavla.ros.convert import pose_to_msg, seconds_to_stamp
    from mambavla.spaces import EE_REFERENCE_QUAT

    pose_pub.publish(pose_to_msg(np.array([0.55, 0.0, 0.4]), EE_REFERENCE_QUAT, now, "fr3_link0"))
    joints = JointState(name=[f"fr3_joint{i}" for i in range(1, 8)] + ["fr3_finger_joint1", "fr3_finger_joint2"],
                        position=[0.0] * 7 + [0.04, 0.04])
    joints.header.stamp = seconds_to_stamp(now)
    joint_pub.publish(joints)


# ---- sim_node and recorder_node ----


@pytest.fixture(scope="class")
def rgbd_cell(tmp_path_factory):
    """sim_node with depth on, recorder_node recording depth; the probe plays the robot state the recorder needs
    (kinesthetic: no commanded action) and keeps every front colour and depth frame it hears."""
    from ros_harness import NodeProcess, Probe
    from sensor_msgs.msg import Image

    from mambavla.ros.recorder_node import FRAME_QOS  # sensor data QoS with a few frames of history

    logs = tmp_path_factory.mktemp("rgbd")
    probe = Probe("rgbd_probe")
    heard = {"colour": deque(maxlen=200), "depth": deque(maxlen=200)}
    for kind, topic in (("colour", camera_topic("front")), ("depth", depth_topic("front"))):
        probe.node.create_subscription(Image, topic, lambda msg, kind=kind: heard[kind].append(msg), FRAME_QOS)
    running = threading.Event()
    running.set()

    def robot_state():

        while running.is_set():
            now = probe.now()
            publish_resting_robot(probe.pose_pub, probe.joint_pub, now)
            time.sleep(0.05)

    state_thread = threading.Thread(target=robot_state, daemon=True)
    state_thread.start()
    root = logs / "episodes"
    nodes = [NodeProcess("sim_node", ["sim_node.yaml"], {"depth": True, "camera_size": CAMERA_SIZE,
                                                         "camera_rate_hz": CAMERA_HZ, "task": "lift", "seed": 11},
                         logs / "sim.log"),
             NodeProcess("recorder_node", [], {"root": str(root), "cameras": list(CAMERAS), "depth": True,
                                               "action_topic": "", "instruction": "lift the red cube",
                                               "reset_time_s": 0.0, "diagnostics_rate_hz": 5.0},
                         logs / "recorder.log")]
    try:
        probe.wait_status(REC, lambda s: s["state"] == "READY" and not s["missing"], "recorder inputs live (depth too)")
        yield probe, heard, root
    finally:
        running.clear()
        state_thread.join()
        for node in reversed(nodes):
            node.stop()
        probe.close()


@pytest.mark.ros
@pytest.mark.sim
@pytest.mark.slow
class TestRGBDCell:
    def test_sim_node_publishes_aligned_depth_stamped_as_the_colour_frames(self, rgbd_cell):
        from mambavla.data.images import depth_to_mm
        from mambavla.ros.convert import stamp_to_seconds

        probe, heard, _ = rgbd_cell
        probe.wait_for(lambda: len(heard["depth"]) >= 5, "5 front depth frames")
        frames = list(heard["depth"])[-5:]
        for msg in frames:
            assert (msg.encoding, msg.height, msg.width, msg.step) == ("16UC1", *CAMERA_SIZE, CAMERA_SIZE[1] * 2)
            assert msg.header.frame_id == "front_camera"
        # depth frames have the stamp of the colour frame of their snapshot (best effort: a frame may be lost)
        depth_stamps = {stamp_to_seconds(m.header.stamp) for m in frames}
        probe.wait_for(lambda: len(depth_stamps & {stamp_to_seconds(m.header.stamp) for m in list(heard["colour"])})
                       >= 3, "3 colour frames stamped as depth frames")
        depth = depth_to_mm(frames[-1])
        valid = depth[depth > 0]
        print(f"\nfront depth: {valid.size / depth.size:.0%} valid, 5/50/95 % "
              f"{np.percentile(valid, [5, 50, 95]).round().tolist()} mm")
        assert valid.size > 0.9 * depth.size
        assert 500 < np.percentile(valid, 5) and 600 < np.median(valid) < 1500  # the table, 0.6-1.5 m in front

    def test_the_recorder_stores_the_depth_as_it_came_and_read_episode_reads_it(self, rgbd_cell):
        from rosbags.rosbag2 import Reader
        from std_srvs.srv import Trigger

        from mambavla.data.bags import ReadOptions, read_episode, read_meta
        from mambavla.data.roles import typestore
        from mambavla.ros.convert import stamp_to_seconds

        probe, heard, root = rgbd_cell

        def call(service: str):
            client = probe.node.create_client(Trigger, f"/recorder_node/{service}")
            assert client.wait_for_service(timeout_sec=60.0)
            future = client.call_async(Trigger.Request())
            probe.wait_for(future.done, f"{service} response")
            probe.node.destroy_client(client)
            return future.result()

        assert call("start").success
        time.sleep(2.5)
        response = call("save")
        assert response.success, response.message
        status = probe.wait_status(REC, lambda s: int(s["saved"]) == 1, "the save on /diagnostics")
        assert int(status["dropped"]) == 0 and not status["error"]

        path = root / "episode_000000"
        meta = read_meta(path)
        assert meta["depth_cameras"] == list(CAMERAS)
        heard_front = {stamp_to_seconds(m.header.stamp): bytes(m.data) for m in list(heard["depth"])}
        with Reader(path) as reader:
            counts = {c.topic: c.msgcount for c in reader.connections}
            types = {c.topic: c.msgtype for c in reader.connections}
            stored = [(c, data) for c, _, data in reader.messages() if c.topic == depth_topic("front")]
        for name in CAMERAS:
            assert types[depth_topic(name)] == "sensor_msgs/msg/Image"
            assert counts[depth_topic(name)] == meta["counts"][depth_topic(name)] >= 5
        same = 0
        for connection, data in stored:
            msg = typestore().deserialize_cdr(data, connection.msgtype)
            received = heard_front.get(stamp_to_seconds(msg.header.stamp))
            if received is not None:
                assert msg.encoding == "16UC1" and bytes(msg.data) == received  # as sim_node sent it
                same += 1
        assert same >= 3

        episode = read_episode(path, options=ReadOptions(depth=True))
        for name in CAMERAS:
            assert episode.depth[name].shape == (len(episode), *CAMERA_SIZE)
            assert episode.depth[name].dtype == np.uint16
        assert 600 < np.median(episode.depth["front"][episode.depth["front"] > 0]) < 1500


# ---- policy_node with a depth checkpoint ----


class RGBDCameras:
    """Plays two RGB-D cameras (10 Hz: colour and aligned depth with one stamp and one size, the depth value naming
    the frame), the robot state (50 Hz) and the operator, in `context`; hears /diagnostics."""

    def __init__(self, context):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseStamped
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import String

        from mambavla.ros.qos import DIAGNOSTICS_QOS, LATCHED_QOS, SENSOR_QOS, STATE_QOS

        self.node = n = rclpy.create_node("rgbd_camera_probe", context=context)
        self.lock = threading.Lock()
        self.status: dict = {}
        self.depth_value: dict[float, int] = {}  # stamp -> the depth (mm) every pixel of that frame has
        self.depth_cameras = set(CAMERAS)  # cameras whose depth is published
        self.bad_depth = None  # an Image sent instead of the front depth once
        self.blind: set[str] = set()  # cameras whose depth has no reading anywhere (0 mm)
        n.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, DIAGNOSTICS_QOS)
        self.colour_pubs = {c: n.create_publisher(Image, camera_topic(c), SENSOR_QOS) for c in CAMERAS}
        self.depth_pubs = {c: n.create_publisher(Image, depth_topic(c), SENSOR_QOS) for c in CAMERAS}
        self.instruction_pub = n.create_publisher(String, "/instruction", LATCHED_QOS)
        self.pose_pub = n.create_publisher(PoseStamped, "/ee_pose", STATE_QOS)
        self.joint_pub = n.create_publisher(JointState, "/joint_states", STATE_QOS)
        self._running = True
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def now(self) -> float:
        return self.node.get_clock().now().nanoseconds * 1e-9

    def _on_diag(self, msg) -> None:
        from mambavla.ros.diagnostics import status_values

        with self.lock:
            for status in msg.status:
                self.status[status.name] = status_values(msg, status.name)

    def _loop(self) -> None:

        from mambavla.ros.convert import depth_to_image, rgb_to_image, seconds_to_stamp, stamp_to_seconds

        rgb = np.random.default_rng(0).integers(0, 256, (*CAMERA_SIZE, 3), dtype=np.uint8)
        k = 0
        while self._running:
            now = self.now()
            if k % 5 == 0:
                value = 400 + (k // 5) % 1000
                with self.lock:
                    self.depth_value[stamp_to_seconds(seconds_to_stamp(now))] = value  # as the node reads it
                for cam in CAMERAS:
                    if cam == "front" and self.bad_depth is not None:
                        bad, self.bad_depth = self.bad_depth, None
                        bad.header.stamp = seconds_to_stamp(now)
                        self.depth_pubs[cam].publish(bad)
                    elif cam in self.depth_cameras:
                        mm = 0 if cam in self.blind else value
                        self.depth_pubs[cam].publish(depth_to_image(np.full(CAMERA_SIZE, mm, np.uint16), now, cam))
                    self.colour_pubs[cam].publish(rgb_to_image(rgb, now, cam))
            publish_resting_robot(self.pose_pub, self.joint_pub, now)
            k += 1
            time.sleep(0.02)

    def latest(self) -> dict:
        with self.lock:
            return dict(self.status.get("mambavla/policy_node") or {})

    def wait_status(self, predicate, what: str, timeout: float = 120.0) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            status = self.latest()
            if status and predicate(status):
                return status
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}; last status {self.latest()}")

    def close(self) -> None:
        self._running = False
        self._thread.join()


@pytest.fixture(scope="class")
def depth_policy(tmp_path_factory):
    """policy_node on an untrained tiny depth checkpoint (torch, CPU), in this process, its steps' observations
    kept as the runtime got them."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from std_msgs.msg import String

    from mambavla.model.checkpoint import save_checkpoint
    from mambavla.model.config import preset
    from mambavla.model.modeling_mambavla import MambaVLA
    from mambavla.ros.policy_node import PolicyNode

    config = preset("tiny").replace(use_depth=True, vision="resnet")
    checkpoint = save_checkpoint(MambaVLA(config), tmp_path_factory.mktemp("rgbd_ckpt") / "tiny_depth")
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=POLICY_DOMAIN)
    cameras = RGBDCameras(context)
    cameras.instruction_pub.publish(String(data="pick up the red cube"))
    overrides = {"checkpoint": str(checkpoint), "device": "cpu", "torch_threads": 1, "backend": "torch",
                 "max_observation_age": 1.0, "diagnostics_rate_hz": 5.0}
    node = PolicyNode(context=context, parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    executor.add_node(cameras.node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    steps: deque = deque(maxlen=100)  # (observation stamp, {camera: depth})
    try:
        cameras.wait_status(lambda s: s["state"] in ("WAITING", "RUNNING"), "the depth policy to load", 300.0)
        step = node.runtime.step

        def recorded_step(observation):
            steps.append((observation["stamp"], dict(observation.get("depth") or {})))
            return step(observation)

        node.runtime.step = recorded_step
        yield node, cameras, steps
    finally:
        node.shutdown()
        cameras.close()
        executor.shutdown()
        spin.join(timeout=5.0)
        node.destroy_node()
        cameras.node.destroy_node()
        context.try_shutdown()


@pytest.mark.ros
@pytest.mark.slow
class TestDepthPolicy:
    def test_a_depth_policy_steps_on_the_depth_stamped_as_its_colour_frames(self, depth_policy):
        node, cameras, steps = depth_policy
        status = cameras.wait_status(lambda s: int(s["chunks_published"]) >= 3, "chunks from a depth policy")
        assert int(status["inputs_rejected"]) == 0, status["last_rejection"]  # the runtime refuses a step without
        assert status["depth_topics"] == ", ".join(depth_topic(c) for c in CAMERAS)
        with cameras.lock:
            values = dict(cameras.depth_value)
        assert len(steps) >= 2
        for stamp, depth in list(steps):
            assert sorted(depth) == sorted(CAMERAS)
            for frame in depth.values():
                assert frame.dtype == np.uint16 and frame.shape == node.runtime.image_size  # decoded, resized
                assert (frame == values[stamp]).all()  # the depth of the colour frames' own stamp

    def test_without_depth_the_policy_holds_warns_and_says_which_camera_is_missing(self, depth_policy):
        node, cameras, steps = depth_policy
        status = cameras.wait_status(lambda s: int(s["chunks_published"]) >= 1, "chunks with depth")
        assert int(status["inputs_rejected"]) == 0 and status["level"] == OK, status  # every input good so far
        cameras.depth_cameras.discard("wrist")
        try:
            time.sleep(0.5)  # the wrist depth the camera thread may have been sending has come
            status = cameras.wait_status(lambda s: "waiting for depth" in s["reason"], "the hold on /diagnostics")
            assert "wrist" in status["reason"] and "front" not in status["reason"]
            assert status["state"] == "RUNNING" and status["level"] == WARN, status  # a task, and no chunks
            held = int(status["chunks_published"])
            time.sleep(1.0)
            assert int(cameras.latest()["chunks_published"]) == held
        finally:
            cameras.depth_cameras.add("wrist")
        cameras.wait_status(lambda s: int(s["chunks_published"]) > held and s["level"] == OK,
                            "chunks, and OK, once the depth is back")

    def test_a_camera_whose_depth_reads_nothing_is_reported_and_the_policy_goes_on(self, depth_policy):
        node, cameras, _ = depth_policy
        status = cameras.wait_status(lambda s: int(s["chunks_published"]) >= 1, "chunks")
        assert status["depth_blind"] == "" and "front 1.00" in status["depth_valid"] and status["level"] == OK, status
        cameras.blind.add("front")  # a projector off, a lens covered
        try:
            status = cameras.wait_status(lambda s: s["depth_blind"] == "front", "the blind camera on /diagnostics")
            assert status["level"] == WARN and "front 0.00" in status["depth_valid"], status
            chunks = int(status["chunks_published"])  # reported, not refused: a close wrist camera reads none too
            cameras.wait_status(lambda s: int(s["chunks_published"]) > chunks, "chunks while it is blind")
        finally:
            cameras.blind.discard("front")
        cameras.wait_status(lambda s: s["depth_blind"] == "" and s["level"] == OK, "OK once it reads again")

    @pytest.mark.parametrize("size, encoding, data, fragment", [
        ((48, 64), "rgb8", bytes(48 * 64 * 3), "unsupported depth encoding 'rgb8'"),
        ((48, 64), "16UC1", bytes(100), "truncated image data"),  # 100 bytes of a 48 x 128-byte frame
        # the depth stream as the sensor sees it, not aligned (another size, other pixels): never resized and fed
        ((96, 128), "16UC1", bytes(96 * 256),
         f"depth 128x96 is not aligned to the colour frames, 64x48 on {camera_topic('front')}: use realsense-ros "
         "align_depth.enable"),
    ])
    def test_a_bad_depth_frame_is_rejected_with_a_reason_and_the_policy_goes_on(self, depth_policy, size, encoding,
                                                                                 data, fragment):
        from sensor_msgs.msg import Image

        node, cameras, _ = depth_policy
        before = int(cameras.wait_status(lambda s: int(s["chunks_published"]) >= 1, "chunks")["inputs_rejected"])
        step = size[1] * (3 if encoding == "rgb8" else 2)
        cameras.bad_depth = Image(height=size[0], width=size[1], encoding=encoding, step=step, data=data)
        status = cameras.wait_status(lambda s: int(s["inputs_rejected"]) > before, "the bad depth frame rejected")
        assert status["last_rejection"].startswith(depth_topic("front")) and fragment in status["last_rejection"]
        chunks = int(status["chunks_published"])
        cameras.wait_status(lambda s: int(s["chunks_published"]) > chunks, "chunks after the bad frame")
