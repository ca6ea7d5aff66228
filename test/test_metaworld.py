"""Meta-World MT50 through the commands a user runs: expert demonstrations into a pack, a few training steps of
`tiny`, one evaluation episode. Meta-World needs its own environment (mujoco 3.3.0): the module makes
.venv-metaworld with scripts/metaworld_venv.sh (seconds once its wheels are cached) and runs the commands with
that interpreter; the suite's bookkeeping (groups, means) is checked here directly."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mambavla.sim.metaworld import suite
from mambavla.sim.metaworld.evaluate import MetaWorldEpisode, summarize

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv-metaworld"
TASKS = ("button-press-v3", "reach-v3")  # in suite order, as collect writes them
SIZE = (32, 32)


def test_suite_has_lerobots_fifty_tasks_in_four_groups():
    assert len(suite.TASKS) == 50
    assert {g: len(t) for g, t in suite.GROUPS.items()} == {"easy": 28, "medium": 11, "hard": 6, "very_hard": 5}
    assert sorted(t for g in suite.GROUPS.values() for t in g) == sorted(suite.TASKS)
    assert suite.instruction("assembly-v3") == "Pick up a nut and place it onto a peg"
    assert suite.instruction("push-v3") == suite.instruction("push-back-v3")
    assert suite.resolve(["hard", "reach-v3"]) == ["reach-v3", *suite.GROUPS["hard"]]  # suite order, once each
    with pytest.raises(ValueError, match="unknown Meta-World task 'reach'"):
        suite.resolve(["reach"])


def test_summary_means_groups_over_tasks_and_the_four_groups_unweighted():
    def episodes(task, wins, n=10):
        return [MetaWorldEpisode(task, s, success=s < wins, steps=50 if s < wins else 500) for s in range(n)]

    # easy: 100% and 50% -> 75%; hard: 20%; the mean of groups is (75 + 20) / 2, the mean of tasks (100+50+20)/3
    summary = summarize({"reach-v3": episodes("reach-v3", 10), "button-press-v3": episodes("button-press-v3", 5),
                         "assembly-v3": episodes("assembly-v3", 2)})
    assert summary["groups"]["easy"] == {"tasks": 2, "of": 28, "success_rate": 0.75}
    assert summary["groups"]["hard"]["success_rate"] == 0.2
    assert summary["mean_of_groups"] == pytest.approx(0.475)
    assert summary["mean_success_rate"] == pytest.approx(1.7 / 3, abs=1e-4)
    assert summary["tasks"]["button-press-v3"]["failed_seeds"] == [5, 6, 7, 8, 9]
    assert summary["tasks"]["assembly-v3"]["mean_steps_success"] == 50
    assert not summary["complete_mt50"]


@pytest.fixture(scope="module")
def mw_venv() -> Path:
    made = subprocess.run(["bash", str(ROOT / "scripts" / "metaworld_venv.sh")], cwd=ROOT, capture_output=True,
                          text=True)
    assert made.returncode == 0, f"scripts/metaworld_venv.sh failed:\n{made.stdout}\n{made.stderr}"
    return VENV / "bin" / "python"


def mambavla(python: Path, *args: str) -> str:
    env = {**os.environ, "MUJOCO_GL": "osmesa", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([str(python), "-m", "mambavla.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"mambavla {' '.join(args)} failed:\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def pack(mw_venv, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("mw") / "pack"
    summary = json.loads(mambavla(mw_venv, "collect", "--suite", "metaworld", "--tasks", *TASKS, "--episodes", "1",
                                  "--camera-size", *map(str, SIZE), "--workers", "2", "--out", str(out), "--json"))
    return out, summary


def test_collect_writes_successful_expert_demonstrations_at_the_policy_rate(pack):
    from mambavla.data.packed import TrainingEpisodes

    out, summary = pack
    assert summary["episodes"] == 2 and summary["tasks_short_of_episodes"] == []
    episodes = TrainingEpisodes.load(out)
    assert [m["task"] for m in episodes.meta] == list(TASKS)
    assert episodes.cameras == (suite.CAMERA,) and episodes.image_size == SIZE
    assert episodes.dt == suite.DT and episodes.stride == suite.DEFAULT_STRIDE
    assert episodes.frames[suite.CAMERA].shape[1:] == (*SIZE, 3)
    assert episodes.proprio.shape[1] == 4 and episodes.actions.shape[1] == 4
    assert np.abs(episodes.actions).max() <= 1.0
    for e, task in enumerate(TASKS):
        steps = summary["by_task"][task]["mean_steps_kept"]
        assert summary["by_task"][task]["expert_success_rate"] == 1.0
        assert np.diff(episodes.action_start)[e] == steps  # every step's action, up to the success
        assert episodes.frame_count(e) == math.ceil(steps / suite.DEFAULT_STRIDE)  # the observation before each 4th
    assert episodes.instructions == [suite.instruction(t) for t in TASKS]
    assert set(episodes.embeddings) >= set(episodes.instructions)


def test_demonstrations_repeat_from_their_seed_and_frames_are_flipped_corner2(pack, mw_venv):
    from mambavla.data.packed import TrainingEpisodes

    probe = """
import json, sys, numpy as np
from mambavla.sim.metaworld.demos import expert_episode
from mambavla.sim.metaworld.env import MetaWorldTask
task = MetaWorldTask("reach-v3", image_size=None)
task.reset(0)
raw, frame = task.env.render(), task.frame()
a, b = expert_episode(task, 0, 4, render=False), expert_episode(task, 0, 4, render=False)
print(json.dumps({"flipped": bool((frame == raw[::-1, ::-1]).all()), "unflipped": bool((frame == raw).all()),
                  "shape": list(frame.shape), "repeat": bool(np.array_equal(a["actions"], b["actions"])),
                  "actions": a["actions"].tolist()}))
"""
    env = {**os.environ, "MUJOCO_GL": "osmesa", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([str(mw_venv), "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["shape"] == [suite.RENDER_SIZE, suite.RENDER_SIZE, 3]
    assert seen["flipped"] and not seen["unflipped"]
    assert seen["repeat"]
    episodes = TrainingEpisodes.load(pack[0])  # the pack's reach-v3 episode is seed 0, made in another process
    assert episodes.meta[1] == {**episodes.meta[1], "task": "reach-v3", "seed": 0}
    reach = episodes.actions[episodes.action_start[1]: episodes.action_start[2]]
    np.testing.assert_array_equal(reach, np.asarray(seen["actions"], np.float32))


def test_tiny_policy_trains_on_the_pack_and_evaluates_through_eval_sim(pack, mw_venv, tmp_path):
    run, out = tmp_path / "run", tmp_path / "eval"
    train = json.loads(mambavla(mw_venv, "train", "--suite", "metaworld", "--data", str(pack[0]), "--out", str(run),
                                "--preset", "tiny", "--steps", "3", "--batch-size", "2", "--segment-frames", "8",
                                "--val-fraction", "0", "--json"))
    assert train["steps"] == 3 and math.isfinite(train["loss_last"])
    config = json.loads((run / "last" / "config.json").read_text())
    assert tuple(config["action_names"]) == suite.ACTION_NAMES and tuple(config["proprio_names"]) == suite.PROPRIO_NAMES
    assert config["cameras"] == [suite.CAMERA] and config["policy_period"] == pytest.approx(4 * suite.DT)

    summary = json.loads(mambavla(mw_venv, "eval-sim", "--suite", "metaworld", "--checkpoint", str(run / "last"),
                                  "--metaworld-tasks", "reach-v3", "--episodes", "1", "--max-steps", "24",
                                  "--workers", "1", "--out", str(out), "--json"))
    task = summary["tasks"]["reach-v3"]
    assert task["episodes"] == 1 and task["group"] == "easy"
    assert summary["groups"] == {"easy": {"tasks": 1, "of": 28, "success_rate": task["success_rate"]}}
    assert summary["first_seed"] == suite.EVAL_SEED_BASE and summary["stride"] == 4
    (episode,) = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert episode["seed"] == suite.EVAL_SEED_BASE and 1 <= episode["steps"] <= 24
    assert json.loads((out / "eval.json").read_text())["tasks"]["reach-v3"] == task
    assert (out / "success.png").stat().st_size > 0 and (out / "gifs" / "reach-v3.gif").stat().st_size > 0


def test_a_workcell_policy_is_refused_with_the_fix(mw_venv, tmp_path):
    env = {**os.environ, "MUJOCO_GL": "osmesa", "PYTHONWARNINGS": "ignore"}
    shipped = ROOT / "src" / "mambavla" / "policies" / "base_sim"  # the workcell's 7-D policy
    done = subprocess.run([str(mw_venv), "-m", "mambavla.cli", "eval-sim", "--suite", "metaworld", "--checkpoint",
                           str(shipped), "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "is not a Meta-World policy" in done.stderr and "train --suite metaworld" in done.stderr


def test_without_metaworld_collect_stops_with_the_fix(tmp_path):
    if subprocess.run([sys.executable, "-c", "import metaworld"], capture_output=True).returncode == 0:
        pytest.skip("metaworld is importable in this interpreter")
    pack = tmp_path / "pack"
    command = ["collect", "--suite", "metaworld", "--tasks", "reach-v3", "--episodes", "1", "--out", str(pack)]
    done = subprocess.run([sys.executable, "-m", "mambavla.cli", *command], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "make metaworld" in done.stderr and "Traceback" not in done.stderr
    assert not pack.exists()


def test_a_missing_instruction_table_names_the_script_that_writes_one(tmp_path):
    from mambavla.sim.metaworld.demos import read_instruction_table

    with pytest.raises(FileNotFoundError, match="scripts/metaworld_instructions.py") as err:
        read_instruction_table(tmp_path / "missing.npz")
    script = str(err.value).split("`python ")[1].split()[0]
    assert (ROOT / script).is_file()


@pytest.mark.parametrize(("flag", "value", "message"), [("--stride", "0", "--stride must be >= 1"),
                                                         ("--max-tries", "0", "--max-tries must be at least")])
def test_collect_refuses_a_zero_stride_or_tries_instead_of_taking_the_default(tmp_path, capsys, flag, value, message):
    from mambavla.cli import main

    command = ["collect", "--suite", "metaworld", "--tasks", "reach-v3", "--episodes", "1", "--out", str(tmp_path)]
    assert main([*command, flag, value]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("command", "flag"), [("collect", ["--cell", "moved"]),
                                               ("eval-sim", ["--wordings", "held-out"]),
                                               ("eval-sim", ["--cell", "changed"])])
def test_the_workcells_cell_and_wordings_are_refused_for_metaworld(tmp_path, capsys, command, flag):
    from mambavla.cli import main

    source = ["--episodes", "1"] if command == "collect" else ["--preset", "tiny", "--episodes", "1"]
    assert main([command, "--suite", "metaworld", *source, "--out", str(tmp_path), *flag]) == 2
    assert f"{flag[0]} is the workcell's; it does not apply to --suite metaworld" in capsys.readouterr().err
