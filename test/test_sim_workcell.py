"""The workcell against real franky on loopback: pose agreement, rendering, seeded resets, success read
from MuJoCo state, and the recorded expert episode's outcome."""

import threading

import numpy as np
import pytest
from sim_fixtures import CAMERA_SIZE, EPISODE_SEED, recorded_episode, running_workcell

from mambavla.sim.workcell import wait_sim_time

pytestmark = [pytest.mark.sim, pytest.mark.slow]


@pytest.fixture(scope="module")
def workcell():
    with running_workcell() as handles:
        yield handles


def test_franky_sees_the_same_end_effector_pose_as_the_workcell(workcell):
    cell, robot, _ = workcell
    pose = robot.current_pose.end_effector_pose
    state = cell.robot_state()
    assert np.allclose(pose.translation, state.ee_position, atol=2e-3)
    assert abs(abs(float(np.dot(pose.quaternion, state.ee_quat))) - 1.0) < 1e-3
    assert np.allclose(robot.current_joint_state.position, state.joint_positions, atol=5e-3)
    assert state.proprio.shape == (8,) and state.proprio.dtype == np.float32


def test_render_gives_both_cameras_at_the_configured_size_from_another_thread(workcell):
    cell, _, _ = workcell
    out = {}
    thread = threading.Thread(target=lambda: out.update(cell.render()))
    thread.start()
    thread.join(60)
    assert set(out) == {"front", "wrist"}
    for img in out.values():
        assert img.shape == (*CAMERA_SIZE, 3) and img.dtype == np.uint8
        assert img.std() > 10  # a scene, not a blank buffer
    assert not np.array_equal(out["front"], out["wrist"])


def test_reset_is_seeded_and_success_is_read_from_mujoco_state(workcell):
    cell, _, _ = workcell
    spec = cell.reset(seed=11, task="place")
    first = cell.scene_state()
    cell.reset(seed=12, task="place")
    assert cell.reset(seed=11, task="place") == spec
    again = cell.scene_state()
    for colour in first.cube_pos:
        assert np.allclose(first.cube_pos[colour][:2], again.cube_pos[colour][:2], atol=1e-6)
    assert cell.instruction == spec.instruction and not cell.success()

    plate = again.plate_pos[spec.plate]
    cell.set_cube_pose(spec.cube, (plate[0] + 0.1, plate[1], cell.config.cube_half))  # beside the plate
    wait_sim_time(cell, 0.5)
    assert not cell.success()
    cell.set_cube_pose(spec.cube, (plate[0] + 0.01, plate[1], plate[2] + cell.config.cube_half + 0.001))
    wait_sim_time(cell, cell.config.place_hold + 0.2)
    assert cell.success()
    assert cell.task_state()["success"] is True


def test_reset_refuses_while_a_motion_is_running(workcell):
    import franky

    cell, robot, _ = workcell
    tracker = franky.CartesianImpedanceTracker(robot, translational_stiffness=800.0, period=0.01)
    try:
        wait_sim_time(cell, 0.2)  # the move command reaches the server asynchronously
        assert robot.is_in_control
        with pytest.raises(RuntimeError, match="motion is running"):
            cell.reset(seed=1)
    finally:
        tracker.stop()


def test_expert_lifts_the_cube_in_the_recorded_episode():
    path, summary = recorded_episode()
    assert summary["success"] is True
    assert summary["seed"] == EPISODE_SEED and summary["task"] == "lift"
    assert 60 <= summary["frames"] <= 400  # ~7 s at 20 Hz


def test_target_noise_is_smooth_seeded_and_fades_out_when_the_expert_stops_moving():
    from mambavla.sim.expert import TargetNoise

    def run(gains, seed=5):
        noise = TargetNoise(0.02, np.random.default_rng(seed))
        return np.array([noise.offset(0.01 * i, g) for i, g in enumerate(gains)])

    assert np.abs(run([0.0] * 100)).max() == 0.0  # no move, no offset
    moving = run([1.0] * 6000)  # 60 s of moving
    std = moving[100:].std(0)
    assert 0.012 < std[0] < 0.028 and 0.012 < std[1] < 0.028 and 0.006 < std[2] < 0.014  # z gets half
    assert np.abs(np.diff(moving, axis=0)).max() < 0.0015  # under 0.15 m/s between 10 ms ticks: the tracker can follow
    np.testing.assert_array_equal(run([1.0] * 50), run([1.0] * 50))
    assert not np.allclose(run([1.0] * 50)[10:], run([1.0] * 50, seed=6)[10:])
    stop = run([1.0] * 300 + [0.0] * 200)  # settle / grip after a move: gone within 2 s (fade 0.3 s)
    assert np.abs(stop[299]).max() > 0.002 and np.abs(stop[-1]).max() < 0.0005
    half = run([0.5] * 3000)
    assert 0.3 < half[100:].std(0)[0] / std[0] < 0.7


@pytest.mark.parametrize("noise", [-0.01, float("nan")])
def test_expert_refuses_a_noise_scale_that_is_not_a_distance(noise):
    from mambavla.sim.config import WorkcellConfig
    from mambavla.sim.expert import ScriptedExpert

    with pytest.raises(ValueError, match="DART noise"):
        ScriptedExpert(None, None, None, config=WorkcellConfig(), noise=noise)


def test_dart_episode_records_the_experts_targets_while_the_arm_is_pushed_off_them(tmp_path):
    from mambavla.data.bags import read_episode
    from mambavla.sim.collect import episode_name, record_episode

    clean_path, _ = recorded_episode()
    with running_workcell() as (cell, robot, gripper):
        summary = record_episode(
            cell, robot, gripper, tmp_path / episode_name(EPISODE_SEED), EPISODE_SEED, "lift", render=False, noise=0.02
        )
    assert summary["success"] is True
    clean, dart = read_episode(clean_path, cameras=[]), read_episode(tmp_path / episode_name(EPISODE_SEED), cameras=[])
    assert dart.meta["dart_noise"] == 0.02 and clean.meta["dart_noise"] == 0.0
    # the first two moves (home, above the cube, down to it: >= 1.6 s) are timed, not closed-loop: the same targets in
    # both episodes, up to where the two recordings' first frames fall (the noise, 2 cm std, would show far above 8 mm)
    n = 30
    assert np.abs(dart.actions[:n, :3] - clean.actions[:n, :3]).max() < 0.008
    # ... while the arm itself went elsewhere: the noise reached the tracker, not the labels
    off_dart = np.linalg.norm(dart.actions[:, :2] - dart.proprio[:, :2], axis=1)
    off_clean = np.linalg.norm(clean.actions[:, :2] - clean.proprio[:, :2], axis=1)
    assert off_dart.max() > 0.02 and np.median(off_dart) > 1.5 * np.median(off_clean)


def test_the_changed_cell_moves_and_turns_the_front_camera_and_recolours_the_table():
    from mambavla.sim import Workcell
    from mambavla.sim.config import CELLS, cell_config

    sim, changed = cell_config("sim"), cell_config("changed")
    before, after = sim.cameras[0], changed.cameras[0]
    assert after.name == "front" and changed.cameras[1] == sim.cameras[1]  # the wrist camera stays
    assert np.linalg.norm(np.subtract(after.pos, before.pos)) == pytest.approx(0.0656, abs=1e-3)
    x0, x1 = np.array(before.xyaxes[:3]), np.array(after.xyaxes[:3])
    assert np.degrees(np.arccos(np.dot(x0, x1))) == pytest.approx(5.0, abs=0.05)
    assert np.dot(x1, after.xyaxes[3:]) == pytest.approx(0.0, abs=1e-3)  # still a rotation
    moved = cell_config("moved").cameras[0]
    assert np.linalg.norm(np.subtract(moved.pos, before.pos)) == pytest.approx(0.1847, abs=1e-3)
    assert np.degrees(np.arccos(np.dot(x0, moved.xyaxes[:3]))) == pytest.approx(14.0, abs=0.05)
    with pytest.raises(ValueError, match="choose from sim, changed, moved"):
        cell_config("lab")
    fronts = {}
    for name in CELLS:
        with Workcell(task="lift", seed=EPISODE_SEED, camera_size=CAMERA_SIZE, config=cell_config(name)) as cell:
            fronts[name] = cell.render()["front"]
    # the table fills the lower half of the front image: wood (red over blue) in ours, grey-blue in the changed cell
    table = {name: np.median(img[CAMERA_SIZE[0] // 2 :].reshape(-1, 3), axis=0) for name, img in fronts.items()}
    assert table["sim"][0] > table["sim"][2] + 40
    assert table["changed"][2] > table["changed"][0] + 10


def test_collect_records_in_the_cell_asked_for_and_writes_its_summary(tmp_path, capsys):
    import json

    from mambavla.cli import main

    out = tmp_path / "demos"
    assert main(["collect", "--task", "lift", "--episodes", "1", "--cell", "changed", "--no-render", "--speed", "0",
                 "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["cell"] == "changed" and summary["episodes"] == 1
    assert json.loads((out / "summary.json").read_text())["cell"] == "changed"
    assert (out / "episode_0000000" / "metadata.yaml").is_file()
