"""The recorded episode read back from its MCAP bag, and the errors for unusable bags."""

import json
import shutil

import numpy as np
import pytest
from sim_fixtures import CAMERA_SIZE, recorded_episode

from mambavla import spaces
from mambavla.data import DatasetError, EpisodeDataset, EpisodeError, EpisodeWriter, read_episode

EXPECTED_TYPES = {
    "/cameras/front/image_raw": "sensor_msgs/msg/Image",
    "/cameras/wrist/image_raw": "sensor_msgs/msg/Image",
    "/joint_states": "sensor_msgs/msg/JointState",
    "/ee_pose": "geometry_msgs/msg/PoseStamped",
    "/instruction": "std_msgs/msg/String",
    "/action": "trajectory_msgs/msg/JointTrajectory",
}


@pytest.mark.sim
@pytest.mark.slow
def test_recorded_bag_has_the_topics_types_and_counts():
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore

    path, summary = recorded_episode()
    meta = json.loads((path / "episode.json").read_text())
    assert meta["success"] is True and meta["seed"] == summary["seed"] and meta["dt"] == 0.05
    assert meta["image_size"] == list(CAMERA_SIZE) and meta["frames"] == summary["frames"]
    assert list(path.glob("*.mcap"))
    ts = get_typestore(Stores.ROS2_KILTED)
    with Reader(path) as reader:
        assert {c.topic: c.msgtype for c in reader.connections} == EXPECTED_TYPES
        instruction = next(c for c in reader.connections if c.topic == "/instruction")
        assert instruction.ext.offered_qos_profiles[0].durability.name == "TRANSIENT_LOCAL"  # latched on replay
        counts = {t: info.msgcount for t, info in reader.topics.items()}
        assert counts["/instruction"] == 1
        assert all(counts[t] == meta["frames"] for t in EXPECTED_TYPES if t != "/instruction")
        for conn, _, raw in reader.messages():
            msg = ts.deserialize_cdr(raw, conn.msgtype)
            if conn.msgtype == "sensor_msgs/msg/Image":
                assert (msg.height, msg.width, msg.encoding) == (*CAMERA_SIZE, "rgb8")
                assert np.asarray(msg.data).reshape(msg.height, msg.width, 3).std() > 5
            elif conn.topic == "/action":
                assert list(msg.joint_names) == list(spaces.ACTION_NAMES) and len(msg.points[0].positions) == 7
            elif conn.topic == "/instruction":
                assert msg.data == summary["instruction"]


@pytest.mark.sim
@pytest.mark.slow
def test_read_episode_gives_aligned_arrays_of_a_lift():
    path, summary = recorded_episode()
    ep = read_episode(path)
    n = summary["frames"]
    assert len(ep) == n and ep.instruction == summary["instruction"]
    assert ep.images["front"].shape == (n, *CAMERA_SIZE, 3) and ep.images["wrist"].shape == (n, *CAMERA_SIZE, 3)
    assert ep.proprio.shape == (n, 8) and ep.actions.shape == (n, 7)
    assert np.allclose(np.diff(ep.times), 0.05, atol=1e-6)
    assert ep.proprio[0, 6:].sum() == pytest.approx(0.08, abs=2e-3)  # fingers open at the start
    assert ep.actions[0, 6] == 0.0 and ep.actions[-1, 6] == 1.0  # open, then grasped
    assert ep.proprio[-1, 2] > ep.proprio[:, 2].min() + 0.08  # the hand came back up with the cube
    # The commanded target leads the measured pose, but tracks it closely.
    assert np.abs(ep.actions[:, :3] - ep.proprio[:, :3]).max() < 0.05


@pytest.mark.sim
@pytest.mark.slow
def test_derived_actions_match_the_commanded_ones_of_a_simulated_lift_best_at_the_default_lead():
    """The labels a bag without commands gets (the pose ACTION_LEAD s ahead, the gripper from the finger width) against
    what the expert commanded through franky-sim's impedance tracker and gripper."""
    from mambavla.data.bags import ACTION_LEAD, derived_actions
    from mambavla.data.roles import inspect, read_messages

    path, _ = recorded_episode()
    ep = read_episode(path)  # its actions: the recorded commands
    streams = {"joint_states": [], "ee_pose": []}
    for m in read_messages(inspect(path, []), list(streams)):
        streams[m.role].append((m.stamp, m.value))
    stamps = {r: np.array([round(s * 1e9) for s, _ in v], dtype=np.int64) for r, v in streams.items()}
    grid = np.round((ep.times + ep.meta["start_stamp"]) * 1e9).astype(np.int64)

    def error_mm(lead):
        derived = derived_actions(stamps, streams, grid, lead)
        return np.linalg.norm(derived[:, :3] - ep.actions[:, :3], axis=1).mean() * 1e3, derived[:, 6]

    at_lead, gripper = error_mm(ACTION_LEAD)
    assert at_lead < 5.0 and at_lead < error_mm(0.5 * ACTION_LEAD)[0] and at_lead < error_mm(1.5 * ACTION_LEAD)[0]
    assert np.mean(gripper == ep.actions[:, 6]) >= 0.98  # GRIPPER_CLOSED_BELOW: the command within a row or two


def _tiny_episode(path, size=(8, 10), frames=5, cameras=("front", "wrist")):
    with EpisodeWriter(path, cameras, size, 0.05, {"task": "lift", "seed": 0, "success": True}) as w:
        w.write_instruction(0.0, "lift the red cube")
        for t in range(frames):
            img = np.full((*size, 3), 10 * t, np.uint8)
            pose = spaces.vector_to_pose(np.array([0.5, 0.0, 0.3 + 0.01 * t, 0, 0, 0]))
            w.write_frame(
                0.05 * t,
                {c: img for c in cameras},
                np.zeros(7),
                np.full(2, 0.04),
                pose[0],
                pose[1],
                np.array([0.5, 0.0, 0.3 + 0.01 * (t + 1), 0, 0, 0, 0.0]),
            )
    return path


def test_empty_directory_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="no episodes"):
        EpisodeDataset(tmp_path)
    with pytest.raises(FileNotFoundError):
        EpisodeDataset(tmp_path / "missing")


def test_truncated_and_corrupt_bags_are_reported_and_skipped(tmp_path, capsys):
    good = _tiny_episode(tmp_path / "a_good")
    truncated = shutil.copytree(good, tmp_path / "b_truncated")
    mcap = next(truncated.glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 2])
    unclosed = shutil.copytree(good, tmp_path / "c_unclosed")
    (unclosed / "metadata.yaml").unlink()
    garbage = shutil.copytree(good, tmp_path / "d_garbage")
    next(garbage.glob("*.mcap")).write_bytes(b"not an mcap file at all" * 10)

    with pytest.raises(EpisodeError, match="corrupt or truncated"):
        read_episode(truncated)
    with pytest.raises(EpisodeError, match="not closed"):
        read_episode(unclosed)
    ds = EpisodeDataset(tmp_path, chunk=4)
    assert [p.name for p in (e.path for e in ds.episodes)] == ["a_good"]
    assert sorted(p.split("/")[-1] for p, _ in ds.skipped) == ["b_truncated", "c_unclosed", "d_garbage"]
    assert "skipping episode" in capsys.readouterr().err
    assert len(ds) == 5


def test_missing_topics_and_mismatched_camera_sizes_are_rejected(tmp_path):
    _tiny_episode(tmp_path / "a", size=(8, 10))
    _tiny_episode(tmp_path / "b", size=(12, 10))
    _tiny_episode(tmp_path / "c", cameras=("front",))
    ds = EpisodeDataset(tmp_path, chunk=2, verbose=False)
    reasons = dict((p.split("/")[-1], r) for p, r in ds.skipped)
    assert set(reasons) == {"b", "c"}
    assert "mismatched camera size" in reasons["b"]
    assert "cameras" in reasons["c"]
    with pytest.raises(EpisodeError, match="no topic for camera\\(s\\) wrist"):
        read_episode(tmp_path / "c", cameras=("front", "wrist"))
    with pytest.raises(DatasetError, match="no usable episodes"):
        EpisodeDataset(tmp_path / "b" / "..", cameras=("left",), verbose=False)


def _scene(t: int, size=(48, 64)) -> np.ndarray:
    y, x = np.mgrid[0 : size[0], 0 : size[1]].astype(np.float32)
    rgb = np.stack(
        [128 + 100 * np.sin((x + 3 * t) / 9.0), 128 + 100 * np.cos(y / 7.0), np.full_like(x, 20 * t)], axis=2
    )
    return rgb.astype(np.uint8)


def _recompress(src, dst, ext: str, keep_raw: bool = False):
    """A copy of an episode bag whose cameras were recorded as image_transport's CompressedImage twins."""
    import cv2
    from rosbags.rosbag2 import Reader, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_KILTED)
    CompressedImage = ts.types["sensor_msgs/msg/CompressedImage"]
    with Reader(src) as reader, Writer(dst, version=9) as writer:
        out = {}
        for conn in reader.connections:
            if conn.msgtype == "sensor_msgs/msg/Image":
                out[conn.topic + "/compressed"] = writer.add_connection(
                    conn.topic + "/compressed", CompressedImage.__msgtype__, typestore=ts
                )
            if conn.msgtype != "sensor_msgs/msg/Image" or keep_raw:
                out[conn.topic] = writer.add_connection(conn.topic, conn.msgtype, typestore=ts)
        for conn, stamp, raw in reader.messages():
            if conn.topic in out:
                writer.write(out[conn.topic], stamp, raw)
            if conn.msgtype == "sensor_msgs/msg/Image":
                msg = ts.deserialize_cdr(raw, conn.msgtype)
                bgr = np.asarray(msg.data, np.uint8).reshape(msg.height, msg.width, 3)[..., ::-1]
                jpeg = CompressedImage(
                    header=msg.header,
                    format=f"rgb8; {ext[1:]} compressed bgr8",
                    data=cv2.imencode(ext, np.ascontiguousarray(bgr))[1].reshape(-1),
                )
                writer.write(
                    out[conn.topic + "/compressed"], stamp, ts.serialize_cdr(jpeg, CompressedImage.__msgtype__)
                )
    shutil.copy(src / "episode.json", dst / "episode.json")
    return dst


def _scene_episode(path, frames=6, cameras=("front", "wrist"), image_format="raw"):
    with EpisodeWriter(
        path, cameras, (48, 64), 0.05, {"task": "lift", "seed": 0, "success": True}, image_format=image_format
    ) as w:
        w.write_instruction(0.0, "lift the red cube")
        for t in range(frames):
            pose = spaces.vector_to_pose(np.array([0.5, 0.0, 0.3 + 0.01 * t, 0, 0, 0]))
            w.write_frame(
                0.05 * t,
                {c: _scene(t + i) for i, c in enumerate(cameras)},
                np.zeros(7),
                np.full(2, 0.04),
                pose[0],
                pose[1],
                np.array([0.5, 0.0, 0.3 + 0.01 * (t + 1), 0, 0, 0, 0.0]),
            )
    return path


def test_a_bag_with_compressed_image_cameras_reads_back_within_jpeg_tolerance(tmp_path):
    raw = read_episode(_scene_episode(tmp_path / "raw"))
    for ext in (".jpg", ".png"):
        bag = _recompress(tmp_path / "raw", tmp_path / ext[1:], ext)
        ep = read_episode(bag)
        assert ep.counts["/cameras/front/image_raw/compressed"] == 6 and "/cameras/front/image_raw" not in ep.counts
        assert len(ep) == len(raw) and ep.instruction == raw.instruction
        np.testing.assert_array_equal(ep.actions, raw.actions)
        for cam in ("front", "wrist"):
            assert ep.images[cam].shape == raw.images[cam].shape
            diff = np.abs(ep.images[cam].astype(int) - raw.images[cam])
            if ext == ".png":
                assert diff.max() == 0
            else:
                assert 0 < diff.mean() < 3 and diff.max() < 48, (cam, diff.mean(), diff.max())
    both = read_episode(_recompress(tmp_path / "raw", tmp_path / "both", ".jpg", keep_raw=True))  # raw preferred
    np.testing.assert_array_equal(both.images["wrist"], raw.images["wrist"])


def test_episodes_recorded_with_jpeg_cameras_are_image_transport_bags_that_read_back(tmp_path):
    """`collect --image-format jpeg`: CompressedImage on <camera topic>/compressed, smaller, and read back
    by the same reader within JPEG tolerance."""
    from rosbags.rosbag2 import Reader

    raw = read_episode(_scene_episode(tmp_path / "raw"))
    bag = _scene_episode(tmp_path / "jpeg", image_format="jpeg")
    with Reader(bag) as reader:
        types = {c.topic: c.msgtype for c in reader.connections}
    assert types["/cameras/front/image_raw/compressed"] == "sensor_msgs/msg/CompressedImage"
    assert "/cameras/front/image_raw" not in types
    ep = read_episode(bag)
    assert ep.meta["image_format"] == "jpeg" and len(ep) == len(raw)
    for cam in ("front", "wrist"):
        diff = np.abs(ep.images[cam].astype(int) - raw.images[cam])
        assert 0 < diff.mean() < 3 and diff.max() < 48, (cam, diff.mean(), diff.max())


def test_a_bag_without_its_sidecar_reads_the_same_episode_from_its_custom_data(tmp_path, capsys):
    """`ros2 bag` copies keep metadata.yaml but not episode.json: the bag's own custom_data stands in for it."""
    with_sidecar = read_episode(_scene_episode(tmp_path / "with"))
    bare = shutil.copytree(tmp_path / "with", tmp_path / "bare" / "episode")
    (bare / "episode.json").unlink()
    ep = read_episode(bare)
    assert (ep.instruction, ep.task, ep.meta["seed"], ep.meta["dt"]) == ("lift the red cube", "lift", 0, 0.05)
    assert list(ep.images) == ["front", "wrist"] and len(ep) == len(with_sidecar)
    np.testing.assert_array_equal(ep.actions, with_sidecar.actions)
    np.testing.assert_array_equal(ep.images["wrist"], with_sidecar.images["wrist"])
    ds = EpisodeDataset(tmp_path / "bare", chunk=2)
    assert len(ds.episodes) == 1 and not ds.skipped and "skipping" not in capsys.readouterr().err


@pytest.mark.parametrize("hz", [7, 15, 30, 60])
def test_every_recorded_frame_is_read_at_rates_whose_interval_is_not_a_whole_nanosecond(tmp_path, hz):
    dt = 1.0 / hz
    with EpisodeWriter(tmp_path / "ep", ("front",), (8, 10), dt, {"task": "lift"}) as w:
        w.write_instruction(100.0, "lift the red cube")
        for k in range(12):
            pose = spaces.vector_to_pose(np.array([0.5, 0.0, 0.3 + 0.01 * k, 0, 0, 0]))
            w.write_frame(
                100.0 + k * dt,
                {"front": np.full((8, 10, 3), 10 * k, np.uint8)},
                np.zeros(7),
                np.full(2, 0.04),
                pose[0],
                pose[1],
                np.array([0.5, 0.0, 0.3, 0, 0, 0, 0.0]),
            )
    episode = read_episode(tmp_path / "ep")
    assert len(episode) == 12
    assert episode.images["front"][-1, 0, 0, 0] == 110


def test_a_topic_whose_first_message_does_not_deserialise_is_noted_when_roles_are_found(tmp_path):
    from rosbags.rosbag2 import Reader, Writer
    from rosbags.typesys import Stores, get_typestore

    from mambavla.data.roles import inspect

    ts = get_typestore(Stores.ROS2_KILTED)
    src, dst = _scene_episode(tmp_path / "src"), tmp_path / "broken"
    with Reader(src) as reader, Writer(dst, version=9) as writer:
        out = {c.topic: writer.add_connection(c.topic, c.msgtype, typestore=ts) for c in reader.connections}
        broken = writer.add_connection("/gripper/joint_states", "sensor_msgs/msg/JointState", typestore=ts)
        writer.write(broken, 1, b"\x00\x01\x00\x00\xff\xff\xff\x7f")  # a string length far past the message's end
        for conn, stamp, raw in reader.messages():
            writer.write(out[conn.topic], stamp, raw)
    info = inspect(dst, ("front", "wrist"))
    assert info.roles["joint_states"] == "/joint_states"  # the readable one still fills the role
    assert any(n.startswith("/gripper/joint_states: unreadable (") for n in info.notes), info.notes


def test_finger_positions_that_are_not_positions_skip_the_episode_naming_the_topic(tmp_path):
    """A hand has answered -1.2e296 m for a few polls: finite, so only a bound tells it from a position. The
    same rule (`roles.finger_positions`) keeps such a message from policy_node's observations."""
    from mambavla.data.roles import finger_positions

    names = [f"fr3_joint{i}" for i in range(1, 8)] + ["fr3_finger_joint1", "fr3_finger_joint2"]
    assert finger_positions(names, [0.0] * 7 + [0.04, 0.039]).tolist() == [0.04, 0.039]
    for bad in (-1.2292388719607037e296, float("nan"), 1.5):
        assert finger_positions(names, [0.0] * 7 + [bad, 0.04]) is None
    with EpisodeWriter(tmp_path / "ep", ("front",), (48, 64), 0.05, {"task": "lift", "seed": 0}) as w:
        w.write_instruction(0.0, "lift the red cube")
        for t in range(6):
            pose = spaces.vector_to_pose(np.array([0.5, 0.0, 0.3, 0, 0, 0]))
            fingers = np.full(2, -1.2292388719607037e296 if t == 3 else 0.04)
            w.write_frame(0.05 * t, {"front": _scene(t)}, np.zeros(7), fingers, pose[0], pose[1],
                          np.array([0.5, 0.0, 0.3, 0, 0, 0, 0.0]))
    with pytest.raises(EpisodeError, match=r"/joint_states has finger positions that are not finite or lie past \+-1"):
        read_episode(tmp_path / "ep")


def test_the_writer_describes_the_bag_from_the_bag_whatever_the_callers_metadata_says(tmp_path):
    """WRITER_FIELDS is the list of fields EpisodeWriter.close sets itself; a caller's value for one of them never
    reaches episode.json, not even a depth_cameras on a bag that has no depth."""
    from mambavla.data.bags import FORMAT, SIDECAR, WRITER_FIELDS

    caller = {"task": "lift", "seed": 0, "format": "other/9", "dt": 1.0, "depth_cameras": ["front"], "frames": 99}
    with EpisodeWriter(tmp_path / "ep", ("front",), (48, 64), 0.05, caller) as w:
        w.write_instruction(0.0, "lift the red cube")
        pose = spaces.vector_to_pose(np.array([0.5, 0.0, 0.3, 0, 0, 0]))
        for t in range(3):
            w.write_frame(0.05 * t, {"front": _scene(t)}, np.zeros(7), np.full(2, 0.04), pose[0], pose[1],
                          np.array([0.5, 0.0, 0.3, 0, 0, 0, 0.0]))
    meta = json.loads((tmp_path / "ep" / SIDECAR).read_text())
    assert set(meta) - {"task", "seed"} == WRITER_FIELDS - {"depth_cameras"}  # every field the writer owns, set
    assert (meta["format"], meta["dt"], meta["frames"]) == (FORMAT, 0.05, 3)
    assert (meta["task"], meta["seed"]) == ("lift", 0)
