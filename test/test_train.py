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
    assert main(["train", "--data", str(data), "--out", str(out), "--preset", "tiny", "--steps", "4", "--batch-size", "4",
                 "--action-mode", "delta", "--history", "window", "--history-frames", "2", "--val-fraction", "0", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["episodes"] == 1 and summary["steps"] == 4 and np.isfinite(summary["loss_last"])
    assert {p.name for p in out.iterdir()} >= {"run.json", "last", "best", "train_summary.json", "loss.png"}
    assert {p.name for p in (out / "last").iterdir()} >= {"model.safetensors", "config.json", "stats.json", "meta.json"}
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    runtime = PolicyRuntime.from_checkpoint(out / "last")
    assert runtime.image_size == CAMERA_SIZE
    assert runtime.action_mode == "delta"
    assert (runtime.config.history_mode, runtime.config.history_frames) == ("window", 2)
    episodes = TrainingEpisodes.from_dataset(EpisodeDataset([data], chunk=1, verbose=False), stride=round(runtime.policy_period / runtime.dt))
    stats = episodes.norm_stats(runtime.chunk_size, "delta")
    assert json.loads((out / "last" / "stats.json").read_text()) == json.loads(json.dumps(stats))
    runtime.set_instruction("lift the red cube")
    h, w = CAMERA_SIZE
    chunk = runtime.step({"images": {c: np.zeros((h, w, 3), np.uint8) for c in runtime.camera_names},
                          "proprio": np.asarray(stats["proprio"]["mean"], np.float32)})
    assert chunk.action_mode == "delta" and np.isfinite(chunk.actions).all()


def test_train_rejects_an_empty_data_directory(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["train", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "ckpt"), "--preset", "tiny"]) == 2
    assert "no episodes" in capsys.readouterr().err
