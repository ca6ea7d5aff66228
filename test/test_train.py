"""`mambavla train` on a real recorded episode: checkpoint folder, config adapted to the data, runnable."""

import json
import shutil

import numpy as np
import pytest
from sim_fixtures import CAMERA_SIZE, recorded_episode

from mambavla.cli import main
from mambavla.data import EpisodeDataset
from mambavla.data.packed import TrainingEpisodes
from mambavla.runtime import PolicyRuntime


@pytest.mark.sim
def test_train_command_writes_a_checkpoint_the_runtime_can_run(tmp_path, capsys):
    bag, _ = recorded_episode()
    data = tmp_path / "episodes"
    shutil.copytree(bag, data / bag.name)
    out = tmp_path / "ckpt"
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--out",
                str(out),
                "--preset",
                "tiny",
                "--steps",
                "4",
                "--batch-size",
                "4",
                "--action-mode",
                "delta",
                "--history",
                "window",
                "--history-frames",
                "2",
                "--val-fraction",
                "0",
                "--image-size",
                *map(str, CAMERA_SIZE),
                "--json",
            ]
        )
        == 0
    )  # the recorded size (default: the preset's)
    summary = json.loads(capsys.readouterr().out)
    assert summary["episodes"] == 1 and summary["steps"] == 4 and np.isfinite(summary["loss_last"])
    assert {p.name for p in out.iterdir()} >= {"run.json", "last", "best", "train_summary.json", "loss.png"}
    assert {p.name for p in (out / "last").iterdir()} >= {"model.safetensors", "config.json", "stats.json", "meta.json"}
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    runtime = PolicyRuntime.from_checkpoint(out / "last")
    assert runtime.image_size == CAMERA_SIZE
    assert runtime.action_mode == "delta"
    assert (runtime.config.history_mode, runtime.config.history_frames) == ("window", 2)
    episodes = TrainingEpisodes.from_dataset(
        EpisodeDataset([data], chunk=1, verbose=False), stride=round(runtime.policy_period / runtime.dt)
    )
    stats = episodes.norm_stats(runtime.chunk_size, "delta")
    assert json.loads((out / "last" / "stats.json").read_text()) == json.loads(json.dumps(stats))
    runtime.set_instruction(episodes.instructions[0])  # the checkpoint's gate takes what it was trained on
    h, w = CAMERA_SIZE
    chunk = runtime.step(
        {
            "images": {c: np.zeros((h, w, 3), np.uint8) for c in runtime.camera_names},
            "proprio": np.asarray(stats["proprio"]["mean"], np.float32),
        }
    )
    assert chunk.action_mode == "delta" and np.isfinite(chunk.actions).all()


def test_train_rejects_an_empty_data_directory(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["train", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "ckpt"), "--preset", "tiny"]) == 2
    assert "no episodes" in capsys.readouterr().err


def test_episodes_per_task_keeps_the_first_n_training_episodes_of_each_task_and_the_same_validation():
    tasks = "lift place lift push_left lift place lift place lift push_left lift place".split()
    n = len(tasks)
    episodes = TrainingEpisodes(
        cameras=("front",),
        image_size=(4, 4),
        dt=0.05,
        stride=4,
        frames={"front": np.zeros((n, 4, 4, 3), np.uint8)},
        proprio=np.zeros((n, 3), np.float32),
        actions=np.zeros((n, 7), np.float32),
        frame_start=np.arange(n + 1),
        action_start=np.arange(n + 1),
        instructions=["x"] * n,
        meta=[{"task": t, "seed": i} for i, t in enumerate(tasks)],
    )
    train, val = episodes.split(0.25)  # every 4th of each task held out: lift 0, 8; place 1; push_left 3
    assert val.tolist() == [0, 1, 3, 8]
    assert episodes.first_per_task(train, 0).tolist() == train.tolist()
    assert episodes.first_per_task(train, 2).tolist() == [2, 4, 5, 7, 9]  # lift 2, 4; place 5, 7; push_left 9
    assert episodes.first_per_task(train, 1).tolist() == [2, 5, 9]
    one_each = TrainingEpisodes(**{**episodes.__dict__, "meta": [{"task": f"t{i}"} for i in range(n)]})
    assert one_each.split(0.25)[1].tolist() == [0, 4, 8]  # no task has two episodes: every 4th overall
    with pytest.raises(ValueError, match="episodes per task"):
        episodes.first_per_task(train, -1)
