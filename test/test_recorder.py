"""EpisodeRecorder without ROS: serialised messages in (as a raw rclpy subscription hands them over), episode
bags out that `read_episode` reads; start / save / discard / mark success, refusals, and the dropped count."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from mambavla.data.bags import read_episode, read_meta
from mambavla.data.recorder import READY, RECORDING, RESETTING, EpisodeRecorder
from mambavla.spaces import ACTION_NAMES

CAMERAS = ("front", "wrist")
SIZE = (24, 32)


@pytest.fixture
def typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)


def header(ts, ns: int):
    T = ts.types
    return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9),
                                    frame_id="fr3_link0")


def feed(recorder: EpisodeRecorder, ts, t0: float, steps: int, dt: float = 1 / 30, size=SIZE) -> None:
    """`steps` frames per camera, each with a joint state, a pose and an action at the same stamp."""
    T = ts.types
    for k in range(steps):
        ns = int(round(t0 * 1e9)) + k * int(round(dt * 1e9))
        for c, name in enumerate(CAMERAS):
            rgb = np.full((*size, 3), (k * 5 + 40 * c) % 255, np.uint8)
            img = T["sensor_msgs/msg/Image"](header=header(ts, ns), height=size[0], width=size[1], encoding="rgb8",
                                            is_bigendian=0, step=size[1] * 3, data=rgb.reshape(-1))
            recorder.on_camera(name, ns, bytes(ts.serialize_cdr(img, img.__msgtype__)), compressed=False)
        names = [f"fr3_joint{i}" for i in range(1, 8)] + ["fr3_finger_joint1", "fr3_finger_joint2"]
        joints = T["sensor_msgs/msg/JointState"](header=header(ts, ns), name=names, position=np.full(9, 0.01 * k),
                                                 velocity=np.zeros(0), effort=np.zeros(0))
        P = T["geometry_msgs/msg/Pose"]
        pose = T["geometry_msgs/msg/PoseStamped"](header=header(ts, ns), pose=P(
            position=T["geometry_msgs/msg/Point"](x=0.5 + 0.001 * k, y=0.0, z=0.4),
            orientation=T["geometry_msgs/msg/Quaternion"](x=1.0, y=0.0, z=0.0, w=0.0)))
        point = T["trajectory_msgs/msg/JointTrajectoryPoint"](
            positions=np.array([0.5 + 0.001 * (k + 1), 0.0, 0.4, 0.0, 0.0, 0.0, 1.0]), velocities=np.zeros(0),
            accelerations=np.zeros(0), effort=np.zeros(0),
            time_from_start=T["builtin_interfaces/msg/Duration"](sec=0, nanosec=0))
        action = T["trajectory_msgs/msg/JointTrajectory"](header=header(ts, ns), joint_names=list(ACTION_NAMES),
                                                           points=[point])
        for topic, msg in (("/joint_states", joints), ("/ee_pose", pose), ("/action", action)):
            recorder.on_state(topic, ns, bytes(ts.serialize_cdr(msg, msg.__msgtype__)))


def test_an_episode_is_saved_with_its_frames_actions_dt_and_success(tmp_path, typestore):
    recorder = EpisodeRecorder(tmp_path, CAMERAS, reset_time=0.2)
    feed(recorder, typestore, 100.0, 1)  # the inputs are live
    ok, text = recorder.start("lift the red cube")
    assert ok and recorder.state == RECORDING, text
    feed(recorder, typestore, 101.0, 45)
    assert recorder.mark_success()[0]
    ok, text = recorder.save()
    assert ok and "45 frames at 30.0 Hz" in text, text
    assert recorder.state == RESETTING
    episode = read_episode(tmp_path / "episode_000000")
    assert len(episode) == 45 and episode.instruction == "lift the red cube" and episode.success is True
    assert episode.meta["dt"] == pytest.approx(1 / 30, rel=1e-6) and episode.meta["dropped"] == 0
    assert episode.images["front"].shape == (45, *SIZE, 3)
    assert episode.images["wrist"][10].mean() == pytest.approx((10 * 5 + 40) % 255, abs=2)  # JPEG, near the value
    assert episode.actions[:, 0] == pytest.approx(0.5 + 0.001 * np.arange(1, 46), abs=1e-6)
    recorder.close()


def test_a_discarded_episode_leaves_nothing_and_the_next_takes_the_next_name(tmp_path, typestore):
    recorder = EpisodeRecorder(tmp_path, CAMERAS, reset_time=0.0)
    feed(recorder, typestore, 100.0, 1)
    assert recorder.start("push the cube")[0]
    feed(recorder, typestore, 101.0, 10)
    ok, text = recorder.discard()
    assert ok and text == "discarded episode_000000" and not any(tmp_path.iterdir())
    recorder.status()
    assert recorder.state == READY
    assert recorder.start("push the cube")[0]
    assert recorder.episode.path.name == "episode_000000"
    recorder.close()


def test_start_is_refused_without_an_instruction_or_live_inputs_and_save_without_frames(tmp_path, typestore):
    recorder = EpisodeRecorder(tmp_path, CAMERAS)
    ok, text = recorder.start("lift")
    assert not ok and "front, wrist, /joint_states, /ee_pose, /action" in text and "controller_node" in text
    feed(recorder, typestore, 100.0, 1)
    assert "no instruction" in recorder.start("  ")[1]
    assert recorder.start("lift")[0]
    ok, text = recorder.save()  # nothing arrived while recording
    assert not ok and "not saved" in text and "training could not read it" in text
    assert not any(tmp_path.iterdir())
    recorder.close()


def test_cameras_of_different_sizes_are_reported_not_written_as_one_episode(tmp_path, typestore):
    recorder = EpisodeRecorder(tmp_path, CAMERAS)
    feed(recorder, typestore, 100.0, 1)
    assert recorder.start("lift")[0]
    feed(recorder, typestore, 101.0, 3)
    feed(recorder, typestore, 102.0, 3, size=(30, 40))
    end = time.monotonic() + 10
    while recorder.status()["queued"] and time.monotonic() < end:
        time.sleep(0.01)
    assert "every camera needs one size" in recorder.status()["error"]
    assert recorder.status()["dropped"] == 6  # the 3 frames of each camera not written are counted
    ok, text = recorder.save()
    assert ok and "warning: 6 messages dropped" in text, text
    recorder.close()


def test_compressed_cameras_of_different_sizes_are_reported_from_each_frames_header(tmp_path, typestore):
    from mambavla.data.images import encode_jpeg

    recorder = EpisodeRecorder(tmp_path, CAMERAS)
    feed(recorder, typestore, 100.0, 1)
    assert recorder.start("lift")[0]
    T = typestore.types
    for k in range(3):
        ns = int(101e9) + k * int(1e9 / 30)
        for name, size in zip(CAMERAS, (SIZE, (30, 40))):  # the wrist camera sends another size
            jpeg = np.frombuffer(encode_jpeg(np.full((*size, 3), 90, np.uint8), 90), np.uint8)
            msg = T["sensor_msgs/msg/CompressedImage"](header=header(typestore, ns), format="jpeg", data=jpeg)
            recorder.on_camera(name, ns, bytes(typestore.serialize_cdr(msg, msg.__msgtype__)), compressed=True)
    end = time.monotonic() + 10
    while recorder.status()["queued"] and time.monotonic() < end:
        time.sleep(0.01)
    assert "camera 'wrist' sent 40x30" in recorder.status()["error"]
    recorder.close()


def test_a_full_queue_drops_and_counts_instead_of_blocking_the_callback(tmp_path, typestore):
    recorder = EpisodeRecorder(tmp_path, CAMERAS, queue_mb=0.02)  # a few frames of 24x32
    feed(recorder, typestore, 100.0, 1)
    assert recorder.start("lift")[0]
    feed(recorder, typestore, 101.0, 200)  # 1,000 messages offered at once: returns, having dropped some
    assert recorder.dropped > 0 and recorder.status()["dropped"] == recorder.dropped
    ok, text = recorder.save()  # the operator hears of it while the scene is still set up, the sidecar keeps it
    assert ok and f"warning: {recorder.dropped} messages dropped" in text, text
    assert read_meta(tmp_path / "episode_000000")["dropped"] == recorder.dropped
    recorder.close()


def test_a_kinesthetic_episode_without_commanded_actions_reads_back_with_derived_actions(tmp_path, typestore):
    recorder = EpisodeRecorder(tmp_path, CAMERAS, record_action=False)

    class NoAction:  # the guided arm: no controller publishes an action
        def __init__(self, inner):
            self.inner = inner

        def on_camera(self, *a, **k):
            self.inner.on_camera(*a, **k)

        def on_state(self, topic, *a):
            if topic != "/action":
                self.inner.on_state(topic, *a)

    feed(NoAction(recorder), typestore, 100.0, 1)
    ok, text = recorder.start("lift the cube")
    assert ok, text
    feed(NoAction(recorder), typestore, 101.0, 30)
    ok, text = recorder.save()
    assert ok, text
    episode = read_episode(tmp_path / "episode_000000")
    assert "derived" in episode.meta["actions"] and len(episode) == 30
    # the measured pose moves 1 mm per frame: a derived target leads it
    assert np.all(episode.actions[:-5, 0] > episode.proprio[:-5, 0])
    recorder.close()


def test_saving_an_episode_whose_camera_rate_changed_warns_while_the_scene_is_still_set_up(tmp_path, typestore):
    recorder = EpisodeRecorder(tmp_path, CAMERAS)
    feed(recorder, typestore, 100.0, 1)
    assert recorder.start("lift")[0]
    feed(recorder, typestore, 101.0, 20, dt=1 / 30)
    feed(recorder, typestore, 102.0, 20, dt=1 / 10)  # the camera fell to 10 Hz
    ok, text = recorder.save()
    assert ok and "warning: 20 of 39 frame intervals" in text and "'front' did not keep its rate" in text, text
    recorder.close()


def test_an_episode_started_while_the_last_one_is_still_being_written_keeps_its_frames(tmp_path, typestore):
    recorder = EpisodeRecorder(tmp_path, CAMERAS, reset_time=0.0)  # as auto_start with no reset time runs
    feed(recorder, typestore, 100.0, 1)
    assert recorder.start("lift")[0]
    feed(recorder, typestore, 101.0, 10)
    closing, close = threading.Event(), recorder._close

    def slow_close(episode, save):  # the writer thread still closing the first bag
        closing.wait(10.0)
        return close(episode, save)

    recorder._close = slow_close
    first: list = []
    saver = threading.Thread(target=lambda: first.append(recorder.save()))
    saver.start()
    end = time.monotonic() + 10
    while recorder.state == RECORDING and time.monotonic() < end:
        time.sleep(0.001)
    ok, text = recorder.start("lift")  # the next episode, while the first is being closed
    assert ok, text
    closing.set()
    saver.join()
    assert first[0] == (True, "saved episode_000000: 10 frames at 30.0 Hz, success False")
    assert len(read_episode(tmp_path / "episode_000000")) == 10
    feed(recorder, typestore, 102.0, 12)
    ok, text = recorder.save()
    assert ok and "12 frames" in text, text
    assert len(read_episode(tmp_path / "episode_000001")) == 12 and recorder.status()["error"] == ""
    recorder.close()


def test_an_episode_cut_off_mid_recording_is_not_among_the_episodes_training_reads(tmp_path, typestore):
    from mambavla.data.dataset import find_episodes

    killed = EpisodeRecorder(tmp_path, CAMERAS)  # never saved nor closed: the process was killed
    feed(killed, typestore, 100.0, 1)
    assert killed.start("lift")[0]
    feed(killed, typestore, 101.0, 10)
    assert find_episodes(tmp_path) == []  # while recording, no bag sits among the episodes
    recorder = EpisodeRecorder(tmp_path, CAMERAS)  # the next run
    feed(recorder, typestore, 200.0, 1)
    assert recorder.start("lift")[0]
    feed(recorder, typestore, 201.0, 10)
    ok, text = recorder.save()
    assert ok and text.startswith("saved episode_000001"), text  # numbered after the one cut off
    assert find_episodes(tmp_path) == [tmp_path / "episode_000001"]
    assert len(read_episode(tmp_path / "episode_000001")) == 10
    assert (tmp_path / ".partial" / "episode_000000").is_dir()  # left where it was, for whoever wants to look
    recorder.close()
