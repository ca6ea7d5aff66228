"""Training data at the policy rate, the pack that carries it to a GPU machine, and run folders that
--resume continues."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from mambavla.data.packed import TrainingEpisodes, write_pack
from mambavla.model.language import InstructionEncoder
from mambavla.runtime import PolicyRuntime
from mambavla.train.trainer import Trainer, TrainSettings

SIZE = (32, 32)
STRIDE = 2
ROWS = (14, 9)  # recorded rows per episode -> 7 and 5 policy frames


def _episodes() -> TrainingEpisodes:
    """Two episodes with smooth images (JPEG keeps them close), distinct proprio and actions per row."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[: SIZE[0], : SIZE[1]]
    frames, proprio, actions = {"front": [], "wrist": []}, [], []
    for e, rows in enumerate(ROWS):
        for r in range(0, rows, STRIDE):
            for c, cam in enumerate(frames):
                frames[cam].append(
                    np.stack([(xx * 7 + r * 5) % 256, (yy * 6 + e * 40) % 256, np.full(SIZE, 60 * c + 20)], -1).astype(
                        np.uint8
                    )
                )
            proprio.append(np.r_[0.5, 0.01 * r, 0.2, 0.0, 0.0, 0.1 * e, 0.04, 0.04].astype(np.float32))
        actions.append(
            np.c_[0.5 + 0.01 * np.arange(rows), rng.normal(0, 0.05, (rows, 5)), np.arange(rows) > rows // 2].astype(
                np.float32
            )
        )
    counts = [len(range(0, r, STRIDE)) for r in ROWS]
    return TrainingEpisodes(
        cameras=("front", "wrist"),
        image_size=SIZE,
        dt=0.1,
        stride=STRIDE,
        frames={c: np.stack(v) for c, v in frames.items()},
        proprio=np.stack(proprio),
        actions=np.concatenate(actions),
        frame_start=np.r_[0, np.cumsum(counts)],
        action_start=np.r_[0, np.cumsum(ROWS)],
        instructions=["lift the red cube", "push the blue cube to the left side"],
        meta=[{"task": "lift", "seed": 11}, {"task": "push-left", "seed": 3}],
    )  # the seeds that give these instructions


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pack")
    summary = write_pack(_episodes(), folder, InstructionEncoder("minilm"), shards=2, quality=95)
    assert summary["episodes"] == 2 and set(summary["bytes"]) == {
        "pack.json",
        "instructions.npz",
        "part-000.npz",
        "part-001.npz",
    }
    return folder


def test_pack_round_trip_keeps_episodes_and_instruction_embeddings(pack):
    original, loaded = _episodes(), TrainingEpisodes.load(pack)
    assert loaded.instructions == original.instructions and loaded.policy_period == pytest.approx(0.2)
    np.testing.assert_array_equal(loaded.frame_start, original.frame_start)
    np.testing.assert_array_equal(loaded.actions, original.actions)
    np.testing.assert_array_equal(loaded.proprio, original.proprio)
    for cam in original.cameras:  # JPEG: close, not equal
        assert np.abs(loaded.frames[cam].astype(int) - original.frames[cam]).mean() < 4.0
    encoder = InstructionEncoder("minilm")
    for text in original.instructions:
        np.testing.assert_allclose(loaded.embeddings[text], encoder.encode_one(text).numpy(), atol=1e-6)


def test_pack_missing_shard_is_a_clear_error(pack, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(pack, broken)
    (broken / "part-001.npz").unlink()
    with pytest.raises(FileNotFoundError, match="part-001.npz is missing"):
        TrainingEpisodes.load(broken)


def test_segments_start_at_the_episode_start_and_pad_past_its_end():
    episodes = _episodes()
    batch = episodes.segments(np.random.default_rng(0), batch=8, frames=8, chunk=4)
    for b in range(8):
        e = episodes.instructions.index(batch["instruction"][b])
        n = episodes.frame_count(e)
        assert batch["frame_index"][b, 0] == episodes.frame_start[e]  # both episodes fit in 8 frames
        for t in range(8):
            row = min(t, n - 1) * STRIDE  # the frame's recorded row; chunk rows follow at the recorded rate
            rows = episodes.actions[episodes.action_start[e] : episodes.action_start[e + 1]]
            expected = rows[np.minimum(row + np.arange(4), len(rows) - 1)]
            np.testing.assert_array_equal(batch["actions"][b, t], expected)
            padded = (t >= n) | (row + np.arange(4) >= len(rows))
            np.testing.assert_array_equal(batch["action_pad"][b, t], padded)


def test_delta_chunks_are_relative_to_each_frames_own_pose():
    from mambavla.data.dataset import to_delta

    episodes = _episodes()
    absolute = episodes.segments(np.random.default_rng(1), batch=3, frames=5, chunk=4)
    delta = episodes.segments(np.random.default_rng(1), batch=3, frames=5, chunk=4, action_mode="delta")
    for b in range(3):
        for t in range(5):
            expected = to_delta(
                absolute["actions"][b, t].astype(np.float64), episodes.proprio[absolute["frame_index"][b, t]]
            )
            np.testing.assert_allclose(delta["actions"][b, t], expected, atol=1e-6)
    assert not np.allclose(delta["actions"][:, 0], delta["actions"][:, 1])  # a different pose per frame


def test_stream_training_writes_a_run_folder_that_resume_continues(pack, tmp_path):
    run = tmp_path / "run"
    settings = TrainSettings(
        steps=2, batch_size=2, segment_frames=4, warmup=1, val_fraction=0.5, val_every=1, save_every=1
    )
    summary = Trainer(run, [str(pack)], "tiny", settings, progress=False).fit()
    assert summary["steps"] == 2 and summary["validation_episodes"] == 1 and np.isfinite(summary["loss_last"])
    assert {p.name for p in run.iterdir()} >= {"run.json", "last", "best", "tb", "loss.png", "train_summary.json"}
    assert any((run / "tb").iterdir())
    info = json.loads((run / "run.json").read_text())
    assert info["data"] == [str(pack)] and info["settings"]["history"] == "stream"

    resumed = Trainer.resume(run, steps=4, progress=False)
    assert resumed.step == 2 and len(resumed.history["loss"]) == 2
    assert resumed.optimizer.state_dict()["state"], "optimiser moments were not restored"
    summary = resumed.fit()
    assert summary["steps"] == 4 and summary["steps_this_session"] == 2 and len(resumed.history["loss"]) == 4

    runtime = PolicyRuntime.from_checkpoint(run / "last")  # the live MiniLM reads the instruction, as on the robot
    assert (runtime.config.history_mode, runtime.policy_period, runtime.image_size) == (
        "stream",
        pytest.approx(0.2),
        SIZE,
    )
    runtime.set_instruction("lift the red cube")
    chunk = runtime.step(
        {
            "images": {c: np.zeros((*SIZE, 3), np.uint8) for c in runtime.camera_names},
            "proprio": np.r_[0.5, 0.0, 0.2, 0, 0, 0, 0.04, 0.04].astype(np.float32),
        }
    )
    assert chunk.actions.shape == (runtime.chunk_size, 7) and np.isfinite(chunk.actions).all()


@pytest.mark.slow
def test_torchrun_trains_one_model_on_two_processes_and_they_stop_together_at_the_time_box(pack, tmp_path):
    """DDP as on the GPU machine, with gloo on this CPU: two processes, one run folder. Rank 0 validates after
    every step while rank 1 waits in the next all-reduce, so their clocks read --max-seconds at different
    moments; both must stop at the same step (a rank stopping alone leaves the other waiting for good)."""
    run = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "mambavla.cli",
        "train",
        "--data",
        str(pack),
        "--out",
        str(run),
        "--preset",
        "tiny",
        "--device",
        "cpu",
        "--steps",
        "10000",
        "--batch-size",
        "2",
        "--segment-frames",
        "4",
        "--val-fraction",
        "0.5",
        "--val-every",
        "1",
        "--max-seconds",
        "6",
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=150, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["train_episodes"] == 1 and summary["validation_episodes"] == 1
    assert 1 <= summary["steps"] < 10000 and np.isfinite(summary["loss_last"])
    assert json.loads((run / "last" / "meta.json").read_text())["steps_done"] == summary["steps"]
    assert len(summary["val"]) == summary["steps"]  # rank 0 validated after every step it trained


_TIME_UP_RANK = """
import sys, time, types, torch
from mambavla.train.trainer import Trainer, TrainSettings
rank = int(sys.argv[1])
torch.distributed.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=rank, world_size=2)
trainer = types.SimpleNamespace(settings=TrainSettings(max_seconds=60), world=2, device=torch.device("cpu"))
started = time.time() - (100 if rank == 0 else 0)  # rank 0's clock is past the time box, rank 1's is not
print(Trainer._time_up(trainer, started))
torch.distributed.destroy_process_group()
"""


def test_time_box_is_decided_by_rank_0_for_every_rank(tmp_path):
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", _TIME_UP_RANK, str(rank), str(tmp_path / "rendezvous")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    answers = [rank.communicate(timeout=120) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], [err[-2000:] for _, err in answers]
    assert [out.strip() for out, _ in answers] == ["True", "True"]


def test_validation_scores_the_instruction_naming_another_cube_with_the_same_noise(pack, tmp_path):
    loaded = TrainingEpisodes.load(pack)
    assert {"lift the green cube", "lift the blue cube", "push the red cube to the left side"} <= set(loaded.embeddings)
    settings = TrainSettings(steps=3, batch_size=2, segment_frames=4, warmup=1, val_fraction=0.5, val_every=3)
    trainer = Trainer(tmp_path / "run", [str(pack)], "tiny", settings, progress=False)
    summary = trainer.fit()
    assert trainer.history["val_other_cube"][-1][0] == 3
    assert 0 < summary["val_grounding_error_first_frame_m_last"] < 1 and 0 < summary["val_grounding_error_m_last"] < 1
    assert summary["val_other_cube_gap_last"] != 0.0  # another cube named, another loss
    scores = trainer.validate()
    assert scores["other_cube"] - scores["loss"] == pytest.approx(summary["val_other_cube_gap_last"])
    trainer._other_cube = lambda text: text  # the same instruction, and the same noise: the same loss
    scores = trainer.validate()
    assert scores["other_cube"] == pytest.approx(scores["loss"], abs=1e-7)


def test_grounding_head_learns_where_the_named_cube_started(pack, tmp_path):
    from mambavla.sim.tasks import named_cube_starts, other_cube_instructions, other_cube_starts

    starts = named_cube_starts(_episodes().meta, _episodes().instructions)
    np.testing.assert_allclose(starts, [[0.4998, 0.0406], [0.4684, 0.0362]], atol=1e-3)  # the seeded layouts
    assert np.isnan(named_cube_starts([{"task": "lift", "seed": 12}], ["lift the red cube"])).all()  # another layout
    assert np.isnan(named_cube_starts([{"task": "open-drawer", "seed": 1}], ["open the drawer"])).all()
    settings = TrainSettings(
        steps=60, batch_size=2, segment_frames=4, warmup=5, lr=3e-3, val_fraction=0.0, augment=False
    )
    trainer = Trainer(tmp_path / "run", [str(pack)], "tiny", settings, progress=False)
    np.testing.assert_allclose(trainer.targets, starts)
    batch = trainer.batch(trainer.train_ids, np.random.default_rng(0), train=True)
    before = (trainer.model.predict_target(batch) - batch["target_xy"][:, None]).norm(dim=-1).mean().item()
    trainer.fit()
    after = (trainer.model.predict_target(batch) - batch["target_xy"][:, None]).norm(dim=-1).mean().item()
    assert after < 0.5 * before, (before, after)
    off = Trainer(tmp_path / "off", [str(pack)], "tiny", TrainSettings(steps=1, grounding_weight=0.0), progress=False)
    assert off.model.target_head is None and off.targets is None  # no parameter without a gradient (DDP)
    with pytest.raises(ValueError, match="grounding_weight must be >= 0"):
        TrainSettings(grounding_weight=-0.1)
    with torch.no_grad():  # the grounding loss is in the training objective, and weighted
        torch.manual_seed(0)
        weighted = trainer.model(batch, torch.Generator().manual_seed(0))
        torch.manual_seed(0)
        plain = trainer.model({**batch, "grounding_weight": 0.0}, torch.Generator().manual_seed(0))
    assert weighted > plain
    # the same frames, another cube of the layout named: the head must answer where that one started
    others = other_cube_starts(_episodes().meta, _episodes().instructions)
    for e, text in enumerate(_episodes().instructions):
        assert [t for t, _ in others[e]] == other_cube_instructions(text)
        assert all(np.linalg.norm(xy - starts[e]) > 0.03 for _, xy in others[e])  # other cubes, elsewhere
    assert "other_instruction" not in trainer.batch(trainer.train_ids, np.random.default_rng(0), train=False)
    assert all(o != t for o, t in zip(batch["other_instruction"], batch["instruction"]))

    def objective(b: dict) -> float:
        torch.manual_seed(0)
        return trainer.model(b, torch.Generator().manual_seed(0)).item()

    with torch.no_grad():
        without = objective({k: v for k, v in batch.items() if not k.startswith("other_")})
        told_same = objective({**batch, "other_instruction": batch["instruction"], "other_xy": batch["target_xy"]})
        told_other = objective(batch)
        other_words_same_target = objective({**batch, "other_xy": batch["target_xy"]})  # the head reads the words
    assert told_same == pytest.approx(without, rel=1e-6)
    assert abs(told_other - without) > 1e-6 and abs(other_words_same_target - without) > 1e-7


def test_window_mode_trains_on_the_last_k_policy_frames(pack, tmp_path):
    settings = TrainSettings(steps=1, batch_size=2, history="window", history_frames=3, warmup=1, val_fraction=0.0)
    trainer = Trainer(tmp_path / "run", [str(pack)], "tiny", settings, progress=False)
    batch = trainer.batch(trainer.train_ids, np.random.default_rng(0), train=False)
    assert batch["images"]["front"].shape == (2, 3, 3, *SIZE) and batch["actions"].shape == (
        2,
        trainer.config.chunk_size,
        7,
    )
    assert np.isfinite(trainer.fit()["loss_last"])
    runtime = PolicyRuntime.from_checkpoint(tmp_path / "run" / "last")
    assert (runtime.config.history_mode, runtime.config.history_frames) == ("window", 3)


def test_ema_weights_are_what_the_checkpoint_holds(pack, tmp_path):
    from safetensors.torch import load_file

    settings = TrainSettings(
        steps=3, batch_size=2, segment_frames=4, warmup=1, ema_decay=0.5, val_fraction=0.0, save_every=3
    )
    trainer = Trainer(tmp_path / "run", [str(pack)], "tiny", settings, progress=False)
    trainer.fit()
    saved = load_file(str(tmp_path / "run" / "last" / "model.safetensors"))
    name = "action_out.weight"
    torch.testing.assert_close(saved[name], trainer.ema.state_dict()[name].cpu())
    assert not torch.equal(saved[name], trainer.model.state_dict()[name].cpu())  # EMA lags the live weights


def test_init_fine_tunes_from_a_checkpoints_weights_and_statistics_and_refuses_another_architecture(pack, tmp_path):
    from safetensors.torch import load_file

    settings = TrainSettings(steps=2, batch_size=2, segment_frames=4, warmup=1, val_fraction=0.0, save_every=2)
    Trainer(tmp_path / "first", [str(pack)], "tiny", settings, progress=False).fit()
    source = tmp_path / "first" / "last"
    stats = json.loads((source / "stats.json").read_text())
    stats["actions"]["max"] = (np.asarray(stats["actions"]["max"]) + 0.25).tolist()  # statistics unlike the pack's own
    (source / "stats.json").write_text(json.dumps(stats))

    fine = Trainer(
        tmp_path / "fine",
        [str(pack)],
        "tiny",
        TrainSettings(**{**settings.__dict__, "seed": 7, "init": str(source)}),
        progress=False,
    )
    saved = load_file(str(source / "model.safetensors"))
    for name, value in fine.model.state_dict().items():
        if name in saved:
            torch.testing.assert_close(value, saved[name].float(), msg=name)
    torch.testing.assert_close(fine.ema.state_dict()["action_out.weight"], saved["action_out.weight"])
    np.testing.assert_allclose(fine.model.normalizer.stats["actions"]["max"], stats["actions"]["max"])
    assert fine.describe()["settings"]["init"] == str(source)  # what run.json records
    fine.fit()
    shutil.rmtree(source)  # resuming needs only the run folder
    resumed = Trainer.resume(tmp_path / "fine", steps=3, progress=False)  # the run's own weights and statistics
    np.testing.assert_allclose(resumed.model.normalizer.stats["actions"]["max"], stats["actions"]["max"])
    torch.testing.assert_close(
        resumed.model.state_dict()["action_out.weight"], fine.model.state_dict()["action_out.weight"]
    )

    with pytest.raises(ValueError, match="d_model"):
        Trainer(
            tmp_path / "other",
            [str(pack)],
            "tiny",
            TrainSettings(**{**settings.__dict__, "init": str(tmp_path / "fine" / "last")}),
            {"d_model": 96, "headdim": 32},
            progress=False,
        )


def test_shift_px_sets_how_far_training_images_move_and_zero_keeps_them_in_place(pack, tmp_path, monkeypatch):
    import mambavla.train.trainer as trainer_module
    from mambavla.train.augment import augment

    images = torch.rand(4, 2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 255
    assert torch.equal(augment(images, shift=0, jitter=0.0), images)
    moved = augment(images, torch.Generator().manual_seed(1), shift=2, jitter=0.0)
    assert not torch.equal(moved, images)
    for seg in range(4):  # each segment is the recording moved by whole pixels, at most 2, the same for all its frames
        inner = moved[seg, ..., 2:-2, 2:-2]
        assert any(
            torch.equal(inner, images[seg, ..., 2 + dy : 30 + dy, 2 + dx : 30 + dx])
            for dy in range(-2, 3)
            for dx in range(-2, 3)
        )
    reaches = []
    real = trainer_module.augment
    monkeypatch.setattr(trainer_module, "augment", lambda v, g, shift: reaches.append(shift) or real(v, g, shift=shift))
    settings = TrainSettings(steps=1, batch_size=2, segment_frames=4, val_fraction=0.0, shift_px=0)
    trainer = Trainer(tmp_path / "run", [str(pack)], "tiny", settings, progress=False)
    trainer.batch(trainer.train_ids, np.random.default_rng(1), train=True)
    assert reaches == [0, 0]  # both cameras
    trainer.fit()
    assert Trainer.resume(trainer.run, progress=False).settings.shift_px == 0  # the run folder keeps it
    assert TrainSettings().shift_px == 6
    with pytest.raises(ValueError, match="shift_px"):
        TrainSettings(shift_px=-1)


def test_balance_tasks_gives_each_task_the_same_share_of_a_batch(pack, tmp_path):
    episodes = _episodes()  # episode 0 is a lift, episode 1 a push-left
    np.testing.assert_allclose(episodes.task_balanced_weights(np.array([0, 0, 0, 1])), [1 / 6, 1 / 6, 1 / 6, 1 / 2])
    shares = {}
    for balance in (False, True):
        settings = TrainSettings(steps=1, batch_size=400, segment_frames=2, val_fraction=0.0, balance_tasks=balance)
        trainer = Trainer(tmp_path / f"run{balance}", [str(pack)], "tiny", settings, progress=False)
        trainer.train_ids = np.array([0, 0, 0, 1])  # three lifts to one push
        texts = trainer.batch(trainer.train_ids, np.random.default_rng(0), train=True)["instruction"]
        shares[balance] = float(np.mean([t == episodes.instructions[1] for t in texts]))
    assert shares[False] == pytest.approx(0.25, abs=0.06) and shares[True] == pytest.approx(0.5, abs=0.06), shares
    with pytest.raises(ValueError, match="balance_tasks"):
        TrainSettings(history="window", balance_tasks=True)
