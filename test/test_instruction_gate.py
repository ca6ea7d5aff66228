"""The shipped policy's instruction gate: the instructions it was trained on and rewordings of them pass, an
instruction outside its tasks or naming an unknown colour is refused before it changes anything."""

from __future__ import annotations

import pytest

from mambavla.model.checkpoint import shipped_checkpoint
from mambavla.runtime import PolicyRuntime
from mambavla.runtime.instruction_gate import InstructionGate
from mambavla.sim.config import CUBE_COLOURS, PLATE_COLOURS
from mambavla.sim.tasks import HELD_OUT_PARAPHRASES, trained_instructions

# instructions outside the shipped policy's four tasks (a known cube with an unknown verb, "throw the red cube",
# is not among them: the gate lets it through, docs/policy.md#instructions-it-cannot-follow)
OUTSIDE = ("open the drawer", "make coffee", "wave hello", "stack the cubes", "what time is it", "pick up the sponge",
           "fold the towel", "hand me the screwdriver", "clean the table", "put the cube in the box", "lift the table",
           "open the gripper")


@pytest.fixture(scope="module")
def runtime():
    return PolicyRuntime.from_checkpoint(shipped_checkpoint(), device="cpu")


def test_the_shipped_checkpoint_gates_on_the_instructions_it_was_trained_on(runtime):
    assert runtime.instruction_gate is not None
    assert sorted(runtime.instruction_gate.texts) == trained_instructions()


def test_trained_instructions_and_held_out_rewordings_pass(runtime):
    held_out = {t.format(cube=c, plate=p, side=s) for ts in HELD_OUT_PARAPHRASES.values() for t in ts
                for c in CUBE_COLOURS for p in PLATE_COLOURS for s in ("left", "right")}
    assert not held_out & set(trained_instructions())  # kept out of training
    for text in [*trained_instructions(), *sorted(held_out)]:
        runtime.set_instruction(text)
        assert runtime.instruction == text


@pytest.mark.parametrize("text", OUTSIDE)
def test_an_instruction_outside_the_tasks_is_refused_and_the_previous_one_stays(runtime, text):
    runtime.set_instruction("lift the red cube")
    with pytest.raises(ValueError, match=r"outside what the policy was trained for: similarity 0\.\d\d to the nearest"):
        runtime.set_instruction(text)
    assert runtime.instruction == "lift the red cube"


@pytest.mark.parametrize("text", ["lift the orange cube", "push the black block to the left"])
def test_an_unknown_colour_is_refused_naming_it(runtime, text):
    with pytest.raises(ValueError, match=r"it names (orange|black), a colour no training instruction names "
                                         r"\(they name blue, green, purple, red, yellow\)"):
        runtime.set_instruction(text)


def test_a_gate_file_with_a_threshold_outside_0_1_is_refused(tmp_path):
    (tmp_path / "instructions.json").write_text('{"min_similarity": 1.5, "texts": ["lift the red cube"]}')
    with pytest.raises(ValueError, match=r"min_similarity must be in \(0, 1\), got 1.5"):
        InstructionGate.load(tmp_path)


def test_a_checkpoint_trained_without_colours_refuses_any_colour():
    import torch

    gate = InstructionGate(("pick up the sponge",))
    reason = gate.refusal("pick up the red sponge", torch.tensor([1.0, 0.0]), torch.tensor([[1.0, 0.0]]))
    assert reason == "it names red, a colour no training instruction names (they name none)"
    assert gate.refusal("pick up the sponge", torch.tensor([1.0, 0.0]), torch.tensor([[1.0, 0.0]])) is None
