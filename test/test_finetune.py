"""`train --init` on another cell's data: the shipped policy fine-tuned a few CPU steps on two foreign-layout bags."""

import json

import numpy as np
import pytest
import torch
from cell_bags import SIZE, write_cell_bag
from safetensors.torch import load_file

from mambavla.cli import main
from mambavla.model.checkpoint import shipped_checkpoint
from mambavla.model.normalization import merge_stats
from mambavla.train.trainer import FINE_TUNE_LR, default_warmup

pytestmark = pytest.mark.slow  # the shipped policy and the language encoder load, two base-size steps on the CPU


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    for i in range(2):
        write_cell_bag(root / "bags" / f"demo_{i}", seconds=1.2)
    run = root / "run"
    code = main(
        [
            "train",
            "--data",
            str(root / "bags"),
            "--out",
            str(run),
            "--init",
            str(shipped_checkpoint()),
            "--instruction",
            "lift the red cube off the tray",
            "--steps",
            "2",
            "--batch-size",
            "1",
            "--segment-frames",
            "4",
            "--val-fraction",
            "0",
            "--json",
        ]
    )
    assert code == 0
    return run


def test_fine_tuning_keeps_the_checkpoints_size_and_rate_and_drops_the_grounding_head(fine_tuned):
    shipped = json.loads((shipped_checkpoint() / "config.json").read_text())
    config = json.loads((fine_tuned / "last" / "config.json").read_text())
    assert config["image_size"] == shipped["image_size"] == [128, 128] and list(SIZE) != [128, 128]  # resized as read
    assert config["dt"] == shipped["dt"] == 0.05  # the 30 Hz recording resampled to the checkpoint's rows
    assert config["cameras"] == ["front", "wrist"] and shipped["grounding_head"] and not config["grounding_head"]
    weights = load_file(str(fine_tuned / "last" / "model.safetensors"))
    assert not [k for k in weights if k.startswith("target_head.")]
    before = load_file(str(shipped_checkpoint() / "model.safetensors"))
    assert set(weights) == {k for k in before if not k.startswith("target_head.")}
    changed = [k for k in weights if weights[k].is_floating_point() and not torch.equal(weights[k], before[k].float())]
    assert changed and max(float((weights[k] - before[k].float()).abs().max()) for k in changed) < 0.05  # small steps


def test_the_fine_tuned_checkpoint_accepts_its_own_and_the_shipped_policys_instructions(fine_tuned):
    from mambavla.runtime.instruction_gate import InstructionGate

    shipped = InstructionGate.load(shipped_checkpoint())
    for folder in ("last", "best"):
        gate = InstructionGate.load(fine_tuned / folder)
        assert set(gate.texts) == set(shipped.texts) | {"lift the red cube off the tray"}
        assert gate.min_similarity == shipped.min_similarity


def test_fine_tuning_normalises_over_the_checkpoints_and_the_new_datas_ranges(fine_tuned):
    shipped = json.loads((shipped_checkpoint() / "stats.json").read_text())
    stats = json.loads((fine_tuned / "last" / "stats.json").read_text())
    rx = 3  # the cell's demonstrations tilt 0.15 rad about x, outside the simulator's +-0.06
    assert shipped["actions"]["max"][rx] < 0.07 and stats["actions"]["max"][rx] == pytest.approx(0.15, abs=1e-3)
    assert stats["actions"]["min"][rx] == pytest.approx(shipped["actions"]["min"][rx])  # the checkpoint's range kept
    assert stats["proprio"]["max"][rx] == pytest.approx(0.15, abs=1e-3)
    run = json.loads((fine_tuned / "run.json").read_text())
    assert run["settings"]["lr"] == FINE_TUNE_LR and run["settings"]["warmup"] == default_warmup(2, True)
    assert run["settings"]["init_stats"] == "merge"
    assert run["settings"]["instruction"] == "lift the red cube off the tray"


def test_merged_statistics_are_an_equal_mixture_with_the_union_of_ranges():
    keys = ("proprio", "actions")
    a = {k: {"mean": [0.0, 5.0], "std": [1.0, 1.0], "min": [-1.0, 5.0], "max": [1.0, 5.0]} for k in keys}
    b = {k: {"mean": [2.0, 5.0], "std": [1.0, 1.0], "min": [1.0, 5.0], "max": [3.0, 5.0]} for k in keys}
    merged = merge_stats(a, b)["actions"]
    assert merged["min"] == [-1.0, 5.0] and merged["max"] == [3.0, 5.0] and merged["mean"] == [1.0, 5.0]
    np.testing.assert_allclose(merged["std"], [np.sqrt(2.0), 0.05])  # constant: no spread, floored at 1% of its scale


def test_fine_tuning_keeps_the_init_checkpoints_threshold_and_an_ungated_one_stays_ungated(tmp_path, capsys):
    from mambavla.runtime.instruction_gate import InstructionGate
    from mambavla.train.trainer import instruction_gate

    InstructionGate(("lift the red cube",), 0.55).save(tmp_path)
    gate = instruction_gate(["wipe the table", "lift the red cube"], str(tmp_path))
    assert gate.texts == ("lift the red cube", "wipe the table") and gate.min_similarity == 0.55
    assert instruction_gate(["wipe the table"], None) == InstructionGate(("wipe the table",))
    ungated = tmp_path / "old_run"
    ungated.mkdir()
    assert instruction_gate(["wipe the table"], str(ungated)) is None
    assert "has no instructions.json: the fine-tuned checkpoint will not refuse any instruction" in (
        capsys.readouterr().err)
