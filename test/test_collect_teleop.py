"""`mambavla collect --teleop`: demonstrations recorded through the teleoperation path in simulation (sim_node,
controller_node driven by the scripted operator's twists, recorder_node), read back as training reads them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mambavla.cli import main


def test_options_of_the_experts_own_bag_are_refused_with_teleop(tmp_path, capsys):
    command = ["collect", "--teleop", "--task", "lift", "--episodes", "1", "--out", str(tmp_path)]
    for extra in (["--speed", "0"], ["--image-format", "jpeg"], ["--dart-noise", "0.01"], ["--no-render"]):
        assert main([*command, *extra]) != 0
        assert f"{extra[0]} shape(s) the expert's own bag" in capsys.readouterr().err
    assert main([*command, "--time-limit", "0"]) != 0
    assert "--time-limit must be > 0" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing started, nothing written


def test_held_out_seeds_and_existing_episodes_are_refused_before_any_node_starts(tmp_path):
    from mambavla.ros.teleop_collect import collect_teleop

    with pytest.raises(ValueError, match="held-out evaluation range"):
        collect_teleop("lift", 2, tmp_path, seed=999_999)
    (tmp_path / "episode_0000003").mkdir()
    with pytest.raises(FileExistsError, match=r"episode_0000003 exists already"):
        collect_teleop("lift", 2, tmp_path, seed=2)


def test_episode_meta_must_be_a_json_object(tmp_path):
    from mambavla.ros.recorder_node import parse_episode_meta

    assert parse_episode_meta("") == {} and parse_episode_meta('{"operator": "ana"}') == {"operator": "ana"}
    with pytest.raises(ValueError, match="not JSON"):
        parse_episode_meta("{operator: ana}")
    with pytest.raises(ValueError, match="must be a JSON object"):
        parse_episode_meta('["ana"]')
    with pytest.raises(ValueError, match=r"sets \['dt', 'format'\], which the recorder writes itself"):
        parse_episode_meta('{"format": "x", "dt": 0.1, "operator": "ana"}')
    from mambavla.data.recorder import EpisodeRecorder

    with pytest.raises(ValueError, match=r"sets \['success'\], which the recorder writes itself"):
        EpisodeRecorder(tmp_path, ["front"], meta={"success": True})  # every caller, not only the node


@pytest.mark.ros
@pytest.mark.sim
@pytest.mark.slow
def test_a_teleoperated_lift_is_recorded_in_the_moved_cell_with_depth(tmp_path):
    from mambavla.data.bags import ReadOptions, read_episode

    out = tmp_path / "teleop"
    env = {**os.environ, "ROS_DOMAIN_ID": str(200 + os.getpid() % 30), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
           "MUJOCO_GL": os.environ.get("MUJOCO_GL", "osmesa")}
    done = subprocess.run([sys.executable, "-m", "mambavla.cli", "collect", "--teleop", "--task", "lift", "--cell",
                           "moved", "--depth", "--episodes", "1", "--seed", "4", "--out", str(out), "--json"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["episodes"] == 1 and summary["cell"] == "moved" and summary["depth"] is True
    assert summary["failed_seeds"] == [] and summary["success_by_task"] == {"lift": {"success_rate": 1.0,
                                                                                       "episodes": 1}}
    detail = json.loads((out / "summary.json").read_text())["episodes_detail"][0]
    assert detail["operator_finished"] and detail["success"], detail  # the scripted operator lifts the cube
    bag = out / "episode_0000004"
    sidecar = json.loads((bag / "episode.json").read_text())
    assert {k: sidecar[k] for k in ("task", "seed", "cell", "success")} == {"task": "lift", "seed": 4,
                                                                            "cell": "moved", "success": True}
    assert sidecar["dropped"] == 0 and sidecar["depth_cameras"] == ["front", "wrist"]
    assert detail["frames"] == sidecar["frames"] >= 50  # ~10 Hz over a lift of 10 s and more
    assert not list(out.glob(".*")), "the staging folder is removed"

    episode = read_episode(bag, options=ReadOptions.make(depth=True))
    assert episode.instruction == detail["instruction"]
    assert set(episode.depth) == {"front", "wrist"} and episode.depth["front"].dtype == np.uint16
    # the action is the controller's streamed target: it ends where the arm ended, with the cube held up
    assert np.linalg.norm(episode.actions[-1, :3] - episode.proprio[-1, :3]) < 0.02
    assert episode.actions[-1, 6] > 0.5  # the hand closed on the cube and stayed closed
    lowest = int(np.argmin(episode.actions[:, 2]))  # down to the cube (its centre ~2 cm up), then up again
    assert episode.actions[lowest, 2] < 0.05 and episode.actions[-1, 2] - episode.actions[lowest, 2] > 0.08


@pytest.mark.ros
@pytest.mark.sim
def test_a_seed_whose_nodes_fail_is_retried_then_listed_and_nothing_is_left_of_it(tmp_path):
    """sim_node refuses an unknown cell and exits: each attempt ends with the node's reason, and the run lists
    the seed as failed instead of writing an episode or leaving a half-recorded one."""
    out = tmp_path / "teleop"
    env = {**os.environ, "ROS_DOMAIN_ID": str(200 + os.getpid() % 30), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    code = ("import json, sys; from mambavla.ros.teleop_collect import collect_teleop; "
            f"s = collect_teleop('lift', 1, {str(out)!r}, seed=5, cell='nowhere', progress=False); "
            "print(json.dumps(s))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["episodes_detail"] == [] and [f["seed"] for f in summary["failed_seeds"]] == [5]
    assert "sim_node exited while waiting for sim_node's /sim/task" in summary["failed_seeds"][0]["error"]
    assert done.stderr.count("warning: seed 5, attempt") == 2
    assert sorted(p.name for p in out.iterdir()) == ["logs", "summary.json"]
