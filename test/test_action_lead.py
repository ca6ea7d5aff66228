"""`mambavla dataset action-lead`: the lead that labels kinesthetic demonstrations, measured on episodes that
recorded the commanded target. A trajectory that trails its command by a known lag must give that lag back."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mambavla.data.action_lead import best, compare, derived_labels

DT = 0.01


def trailing_episode(lag: float, seconds: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
    """(proprio, actions): a commanded target sweeping 20 cm and turning, the gripper closing at 3 s; the
    measured arm and fingers are the command `lag` s late."""
    t = np.arange(0.0, seconds, DT)
    commanded = np.zeros((len(t), 7))
    commanded[:, 0] = 0.4 + 0.1 * np.sin(t)  # x, m
    commanded[:, 1] = 0.05 * t  # y, m
    commanded[:, 2] = 0.3
    commanded[:, 3] = np.pi  # pointing down
    commanded[:, 5] = 0.2 * np.sin(0.5 * t)  # a little yaw
    commanded[:, 6] = (t >= 3.0).astype(float)
    late = np.clip(np.arange(len(t)) - int(round(lag / DT)), 0, None)
    proprio = np.zeros((len(t), 8))
    proprio[:, :6] = commanded[late, :6]
    proprio[:, 6:8] = np.where(commanded[late, 6:7] > 0.5, 0.01, 0.04)  # each finger, m
    return proprio, commanded


def test_the_lag_of_the_arm_behind_its_command_is_found():
    episodes = [trailing_episode(0.12), trailing_episode(0.12, seconds=4.0)]
    results = compare(episodes, DT, [0.0, 0.05, 0.1, 0.12, 0.15, 0.3])
    fit = best(results)
    assert fit.lead == pytest.approx(0.12)
    assert fit.position_mm["p95"] < 0.5 and fit.rotation_deg["p95"] < 0.05  # only the episode's end is off
    assert fit.gripper_agreement > 0.99
    errors = [r.position_mm["median"] for r in results]
    assert errors[0] > errors[2] > errors[3] < errors[4] < errors[5]  # nearer the lag, nearer the command


def test_derived_labels_hold_the_last_pose_past_the_end_and_close_the_gripper_on_the_fingers():
    proprio, _ = trailing_episode(0.0, seconds=1.0)
    proprio[50:, 6:8] = 0.01
    labels = derived_labels(proprio, 10)
    np.testing.assert_array_equal(labels[-1, :6], proprio[-1, :6])
    np.testing.assert_array_equal(labels[:10, :6], proprio[10:20, :6])
    assert labels[39, 6] == 0.0 and labels[40, 6] == 1.0  # closed 10 rows ahead


def test_a_folder_without_commanded_actions_is_refused_with_the_reason(tmp_path, capsys):
    from cell_bags import write_cell_bag

    from mambavla.cli import main

    write_cell_bag(tmp_path / "demo", instruction="lift the red cube")  # poses and joints, no commanded action
    assert main(["dataset", "action-lead", str(tmp_path)]) != 0
    assert "no episode with a recorded action" in capsys.readouterr().err


def test_teleoperated_episodes_give_the_lead_as_json_and_a_picture(tmp_path, capsys):
    """Through the command, on a cell's bag whose commanded pose is a PoseStamped topic named with --map."""
    from cell_bags import write_cell_bag

    from mambavla.cli import main

    write_cell_bag(tmp_path / "bags" / "demo", goal_pose=True, instruction="lift the red cube")
    assert main(["dataset", "action-lead", str(tmp_path / "bags"), "--map", "target_pose=/goal_pose",
                 "--out", str(tmp_path / "out"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["episodes"] == 1 and summary == json.loads((tmp_path / "out" / "action_lead.json").read_text())
    assert (tmp_path / "out" / "action_lead.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [r["lead_s"] for r in summary["leads"]] == [0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4]
    assert summary["best_lead_s"] in [r["lead_s"] for r in summary["leads"]]
