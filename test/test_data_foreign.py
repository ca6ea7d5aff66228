"""Training data from another cell's recordings: a franka_ros2 + realsense-ros bag read through the role finder
replay uses, dt from the stamps, frames resized as they are read, actions derived from the measured poses, and
a clear message naming the topic for each kind of bad bag."""

import json

import numpy as np
import pytest
from cell_bags import (
    CAMERA_HZ,
    FRONT,
    GRASP_AT,
    JOINTS,
    POSE,
    SIZE,
    START,
    WRIST,
    finger_at,
    pose_at,
    scene,
    write_cell_bag,
)

from mambavla import spaces
from mambavla.cli import main
from mambavla.data import EpisodeDataset, EpisodeError, read_episode
from mambavla.data.bags import ACTION_LEAD, ReadOptions, read_episodes

POLICY_SIZE = (32, 32)
OPTIONS = ReadOptions.make(instruction="lift the red cube", image_size=POLICY_SIZE)


@pytest.fixture(scope="module")
def cell(tmp_path_factory):
    root = tmp_path_factory.mktemp("cell")
    write_cell_bag(root / "demo_0")
    write_cell_bag(root / "demo_1", seconds=1.6)
    return root


def test_a_foreign_cell_bag_reads_with_roles_found_by_name_and_rows_at_the_camera_rate(cell):
    ep = read_episode(cell / "demo_0", cameras=("front", "wrist"), options=OPTIONS)
    assert ep.meta["roles"] == {"front": FRONT, "wrist": WRIST, "joint_states": JOINTS, "ee_pose": POSE}
    assert ep.meta["dt"] == pytest.approx(1 / CAMERA_HZ, rel=0.01) and ep.instruction == "lift the red cube"
    np.testing.assert_allclose(np.diff(ep.times), ep.meta["dt"], atol=1e-6)  # evenly spaced rows
    assert ep.meta["recorded_image_size"] == {"front": list(SIZE), "wrist": list(SIZE)}
    assert len(ep) == pytest.approx(2.0 * CAMERA_HZ, abs=2)
    for cam in ("front", "wrist"):  # resized as read; bgr8 and JPEG both come out RGB (red field)
        assert ep.images[cam].shape == (len(ep), *POLICY_SIZE, 3)
        red, green, blue = ep.images[cam][..., :3].reshape(-1, 3).mean(0)
        assert red > 150 and blue < 20
    # the front frame of each row is the recording's frame nearest in time, not one from the depth stream
    from mambavla.data.images import resize_rgb

    row = 10
    expected = scene(int(round((ep.times[row] + ep.meta["start_stamp"] - START) * CAMERA_HZ)))
    assert np.abs(ep.images["front"][row].astype(int) - resize_rgb(expected, POLICY_SIZE)).mean() < 2
    # proprio: the measured pose and the fingers at each row; actions: the pose ACTION_LEAD s ahead
    at = ep.times + (ep.meta["start_stamp"] - START)  # rows start where every stream has begun
    assert 0.0 < at[0] < 0.01
    position, quat = pose_at(at)
    np.testing.assert_allclose(ep.proprio[:, :6], spaces.pose_to_vector(position, quat), atol=1.5e-3)
    np.testing.assert_allclose(ep.proprio[:, 6:], np.stack([finger_at(at)] * 2, axis=1), atol=5e-4)  # nearest of 100 Hz
    ahead, ahead_quat = pose_at(at + ACTION_LEAD)
    np.testing.assert_allclose(ep.actions[:, :6], spaces.pose_to_vector(ahead, ahead_quat), atol=1.5e-3)
    closed = ep.actions[:, 6] > 0.5
    assert not closed[0] and closed[-1] and closed.sum() > 10
    assert GRASP_AT - ACTION_LEAD < at[np.argmax(closed)] < GRASP_AT  # the command comes before the fingers move


def test_dataset_stats_reports_what_it_found_per_role(cell, capsys):
    assert (
        main(["dataset", "stats", str(cell), "--instruction", "lift the red cube", "--preset", "tiny", "--json"]) == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["episodes"] == 2 and summary["image_size"] == list(POLICY_SIZE)
    assert summary["dt"] == pytest.approx(1 / CAMERA_HZ, rel=0.01)
    assert summary["roles"]["front"] == {"topics": {FRONT: 2}, "recorded_sizes": [list(SIZE)]}
    assert summary["roles"]["joint_states"]["topics"] == {JOINTS: 2}
    assert summary["recorded_rate_hz"] and abs(summary["recorded_rate_hz"][0] - CAMERA_HZ) < 0.5
    ((how, count),) = summary["actions_from"].items()
    assert count == 2 and how.startswith("derived") and POSE in how
    assert main(["dataset", "stats", str(cell), "--instruction", "lift the red cube", "--preset", "tiny"]) == 0
    text = capsys.readouterr().out
    assert FRONT in text and WRIST in text and "derived" in text


def test_mapped_topics_and_a_resample_interval_are_honoured(cell):
    options = ReadOptions.make(
        {"front": FRONT + "/compressed", "joint_states": "/fr3_gripper/joint_states"},
        "lift the red cube",
        POLICY_SIZE,
        dt=0.05,
    )
    ep = read_episode(cell / "demo_0", cameras=("front", "wrist"), options=options)
    assert ep.meta["roles"]["front"] == FRONT + "/compressed"
    assert ep.meta["roles"]["joint_states"] == "/fr3_gripper/joint_states"
    assert ep.meta["dt"] == 0.05 and np.allclose(np.diff(ep.times), 0.05)
    assert np.isnan(ep.joint_positions[:, :7]).all() and (ep.joint_positions[:, 7:] > 0).all()  # no arm on that topic


def test_instruction_comes_from_a_recorded_topic_before_the_command_line(tmp_path):
    bag = write_cell_bag(tmp_path / "told", seconds=0.5, instruction="put the cube in the bowl")
    ep = read_episode(bag, cameras=("front", "wrist"), options=OPTIONS)
    assert ep.instruction == "put the cube in the bowl" and ep.meta["roles"]["instruction"] == "/task_instruction"
    with pytest.raises(EpisodeError, match="no instruction .*--instruction TEXT"):
        read_episode(write_cell_bag(tmp_path / "untold", seconds=0.5), cameras=("front", "wrist"))


def test_a_missing_role_names_the_fix(tmp_path):
    bag = write_cell_bag(tmp_path / "no_pose", seconds=0.5, pose=False)
    with pytest.raises(EpisodeError, match=r"no end-effector pose .*--map ee_pose=TOPIC") as err:
        read_episode(bag, cameras=("front", "wrist"), options=OPTIONS)
    assert JOINTS in str(err.value)  # with the bag's topic table
    with pytest.raises(EpisodeError, match=r"no topic for camera\(s\) left"):
        read_episode(write_cell_bag(tmp_path / "cams", seconds=0.5), cameras=("left",), options=OPTIONS)


def test_two_candidates_for_a_role_are_refused_naming_both(tmp_path):
    bag = write_cell_bag(tmp_path / "two_poses", seconds=0.5, goal_pose=True)
    with pytest.raises(EpisodeError, match=rf"ee_pose matches several topics \(.*{POSE}.*--map ee_pose=TOPIC"):
        read_episode(bag, cameras=("front", "wrist"), options=OPTIONS)
    ep = read_episode(bag, cameras=("front", "wrist"), options=ReadOptions.make({"ee_pose": POSE}, "lift", POLICY_SIZE))
    assert ep.meta["roles"]["ee_pose"] == POSE


def test_an_unreadable_frame_names_its_topic_and_the_dataset_skips_the_episode(tmp_path, capsys):
    write_cell_bag(tmp_path / "a_good", seconds=0.5)
    bad = write_cell_bag(tmp_path / "b_bad_frame", seconds=0.5, corrupt_wrist_frame=5)
    with pytest.raises(EpisodeError, match=rf"camera 'wrist': a frame on {WRIST} at .* cannot be decoded"):
        read_episode(bad, cameras=("front", "wrist"), options=OPTIONS)
    ds = EpisodeDataset(tmp_path, chunk=4, cameras=("front", "wrist"), options=OPTIONS)
    assert [e.path.name for e in ds.episodes] == ["a_good"]
    assert WRIST in ds.skipped[0][1] and "skipping episode" in capsys.readouterr().err


def test_a_rate_change_is_refused_naming_the_topic(tmp_path):
    bag = write_cell_bag(tmp_path / "slower", seconds=2.0, rate_change_at=1.0)
    with pytest.raises(EpisodeError, match=rf"the rate on {FRONT} changes during the recording \(30 Hz, then 15 Hz\)"):
        read_episode(bag, cameras=("front", "wrist"), options=OPTIONS)


def test_a_pause_in_the_robot_state_within_the_rows_is_refused_naming_the_topic(tmp_path):
    bag = write_cell_bag(tmp_path / "stalled", seconds=2.0, pose_pause=(0.8, 1.3))
    with pytest.raises(EpisodeError, match=rf"{POSE} pauses 1 time\(s\) within the rows, first for 0.5\d s"):
        read_episode(bag, cameras=("front", "wrist"), options=OPTIONS)
    read_episode(write_cell_bag(tmp_path / "late", seconds=2.0, pose_pause=(0.0, 0.5)), ("front", "wrist"), OPTIONS)


def test_a_rate_that_wobbles_is_read_with_a_warning_naming_the_topic(tmp_path, capsys):
    bag = write_cell_bag(
        tmp_path / "wobbly" / "demo", seconds=2.0, rate_change_at=0.8, rate_factor=1.5, rate_change_until=1.4
    )
    ep = read_episode(bag, cameras=("front", "wrist"), options=OPTIONS)
    assert ep.meta["dt"] == pytest.approx(1 / CAMERA_HZ, rel=0.02)
    assert any(
        w.startswith(f"the rate on {FRONT} wobbles (30 Hz, then 20 Hz, then 30 Hz)") for w in ep.meta["warnings"]
    )
    ds = EpisodeDataset(tmp_path / "wobbly", chunk=4, cameras=("front", "wrist"), options=OPTIONS)
    assert len(ds.episodes) == 1 and f"{FRONT} wobbles" in capsys.readouterr().err
    assert any(FRONT in w["warning"] for w in ds.summary()["warnings"])


def test_episodes_at_another_rate_are_skipped_unless_resampled(tmp_path):
    write_cell_bag(tmp_path / "a_30hz", seconds=0.6)
    write_cell_bag(tmp_path / "b_15hz", seconds=0.6, camera_hz=15.0)
    ds = EpisodeDataset(tmp_path, chunk=4, cameras=("front", "wrist"), options=OPTIONS, verbose=False)
    assert [e.path.name for e in ds.episodes] == ["a_30hz"] and "--dt SECONDS" in ds.skipped[0][1]
    both = EpisodeDataset(
        tmp_path,
        chunk=4,
        cameras=("front", "wrist"),
        verbose=False,
        options=ReadOptions.make(instruction="lift", image_size=POLICY_SIZE, dt=0.1),
    )
    assert len(both.episodes) == 2 and both.dt == 0.1


def test_a_bag_of_several_demonstrations_splits_at_the_recorders_pauses(tmp_path, capsys):
    instructions = ["lift the red cube", "lift the blue cube", "lift the green cube"]
    bag = write_cell_bag(
        tmp_path / "session" / "morning", seconds=1.0, demonstrations=3, pause=2.0, instruction=instructions
    )
    with pytest.raises(EpisodeError, match=rf"{FRONT} pauses 2 time\(s\), first for 2.\d+ s .*--split-gap SECONDS"):
        read_episode(bag, cameras=("front", "wrist"), options=OPTIONS)
    split = ReadOptions.make(instruction="lift", image_size=POLICY_SIZE, split_gap=1.0)
    episodes = read_episodes(bag, cameras=("front", "wrist"), options=split)
    assert [ep.instruction for ep in episodes] == instructions  # each the one given before it
    assert [ep.meta["demonstration"] for ep in episodes] == [0, 1, 2]
    for ep in episodes:  # each one second of 30 Hz rows, none reaching into the next demonstration
        assert len(ep) == pytest.approx(CAMERA_HZ, abs=2) and ep.times[-1] < 1.05
        np.testing.assert_allclose(ep.proprio[0, 0], 0.45, atol=1e-3)  # every demonstration starts at x = 0.45
    ds = EpisodeDataset(tmp_path / "session", chunk=4, cameras=("front", "wrist"), options=split, verbose=False)
    assert len(ds.episodes) == 3 and not ds.skipped and ds.decoded == 1
    again = EpisodeDataset(tmp_path / "session", chunk=4, cameras=("front", "wrist"), options=split, verbose=False)
    assert again.decoded == 0 and [e.instruction for e in again.episodes] == instructions  # from the cache
    assert (
        main(["dataset", "stats", str(tmp_path / "session"), "--split-gap", "1.0", "--preset", "tiny", "--json"]) == 0
    )
    assert json.loads(capsys.readouterr().out)["episodes"] == 3


def test_mapping_one_camera_keeps_the_policys_other_cameras_found_by_name(cell, capsys):
    assert (
        main(
            [
                "dataset",
                "stats",
                str(cell),
                "--instruction",
                "lift",
                "--preset",
                "tiny",
                "--json",
                "--map",
                f"front={FRONT}/compressed",
            ]
        )
        == 0
    )
    roles = json.loads(capsys.readouterr().out)["roles"]
    assert roles["front"]["topics"] == {f"{FRONT}/compressed": 2} and roles["wrist"]["topics"] == {WRIST: 2}
    assert (
        main(
            ["dataset", "stats", str(cell), "--instruction", "lift", "--preset", "tiny", "--json", "--cameras", "front"]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["cameras"] == ["front"] and "wrist" not in summary["roles"]


def test_a_mapped_target_pose_topic_gives_the_actions_in_force_at_each_row(tmp_path):
    bag = write_cell_bag(tmp_path / "commanded", seconds=2.0, goal_pose=True)  # /goal_pose every 0.5 s
    options = ReadOptions.make({"ee_pose": POSE, "target_pose": "/goal_pose"}, "lift", POLICY_SIZE)
    ep = read_episode(bag, cameras=("front", "wrist"), options=options)
    assert ep.meta["actions_from"].startswith("recorded target poses on /goal_pose")
    at = ep.times + (ep.meta["start_stamp"] - START)
    held = np.floor(at / 0.5 + 1e-9) * 0.5  # the last target published at or before each row
    position, quat = pose_at(held)
    np.testing.assert_allclose(ep.actions[:, :6], spaces.pose_to_vector(position, quat), atol=1e-6)
    assert len(ep) == pytest.approx(2.0 * CAMERA_HZ, abs=2)  # the sparse command stream does not end the rows
    assert ep.actions[0, 6] == 0 and ep.actions[-1, 6] == 1  # the gripper from the fingers, as derived
