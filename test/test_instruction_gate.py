"""The shipped policy's instruction gate: the instructions it was trained on and rewordings of them pass, an
instruction outside its tasks or naming an unknown colour is refused before it changes anything."""

from __future__ import annotations

import pytest

from mambavla.model.checkpoint import shipped_checkpoint
from mambavla.runtime import PolicyRuntime
from mambavla.runtime.instruction_gate import InstructionGate
from mambavla.sim.tasks import OUTSIDE_INSTRUCTIONS, held_out_instructions, trained_instructions


@pytest.fixture(scope="module")
def runtime():
    return PolicyRuntime.from_checkpoint(shipped_checkpoint(), device="cpu")


def test_the_shipped_checkpoint_gates_on_the_instructions_it_was_trained_on(runtime):
    assert runtime.instruction_gate is not None
    assert sorted(runtime.instruction_gate.texts) == trained_instructions()


def test_trained_instructions_and_held_out_rewordings_pass(runtime):
    held_out = set(held_out_instructions())
    assert not {t.lower() for t in held_out} & set(trained_instructions())  # kept out (the encoder is uncased)
    for text in [*trained_instructions(), *sorted(held_out)]:
        runtime.set_instruction(text)
        assert runtime.instruction == text


@pytest.mark.parametrize("text", OUTSIDE_INSTRUCTIONS)
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


@pytest.mark.parametrize(("content", "message"), [
    ('{"min_similarity": 1.5, "texts": ["lift the red cube"]}', r"min_similarity must be in \(0, 1\), got 1.5"),
    ('{"texts": ["lift the red cube"]}', r"not an instruction gate \(KeyError: 'min_similarity'\)"),
    ('{"min_similarity": 0.7, "texts": "lift the red cube"}', "texts must be a list of non-empty instructions"),
    ('{"min_similarity": "high", "texts": ["lift"]}', "min_similarity must be a number, got 'high'"),
    ("{not json", "not an instruction gate"),
])
def test_a_malformed_gate_file_is_refused_naming_it(tmp_path, content, message):
    (tmp_path / "instructions.json").write_text(content)
    with pytest.raises(ValueError, match=message):
        InstructionGate.load(tmp_path)


def test_a_checkpoint_trained_without_colours_refuses_any_colour():
    import torch

    gate = InstructionGate(("pick up the sponge",))
    reason = gate.refusal("pick up the red sponge", torch.tensor([1.0, 0.0]), torch.tensor([[1.0, 0.0]]))
    assert reason == "it names red, a colour no training instruction names (they name none)"
    assert gate.refusal("pick up the sponge", torch.tensor([1.0, 0.0]), torch.tensor([[1.0, 0.0]])) is None


def test_a_stream_batch_gates_each_streams_instruction(runtime):
    batch = runtime.stream_batch(2)
    batch.set_instruction(0, "lift the red cube")
    with pytest.raises(ValueError, match="outside what the policy was trained for"):
        batch.set_instruction(1, "make coffee")
    assert batch.instructions == ["lift the red cube", None]


def test_benchmarks_time_the_step_with_an_instruction_the_checkpoint_takes(runtime, monkeypatch):
    from mambavla.commands.bench import INSTRUCTION, bench_instruction

    assert bench_instruction(runtime) == INSTRUCTION  # the shipped policy takes the benchmarks' own
    assert bench_instruction(runtime, "make coffee") == runtime.instruction_gate.texts[0]
    monkeypatch.setattr(runtime, "instruction_gate", None)
    assert bench_instruction(runtime, "make coffee") == "make coffee"  # ungated: anything


def test_the_score_is_the_similarity_to_the_nearest_training_instruction(runtime):
    score, nearest = runtime.instruction_score("lift  the red cube")
    assert score == pytest.approx(1.0, abs=1e-5) and nearest == "lift the red cube"
    score, _ = runtime.instruction_score("make coffee")
    assert score < runtime.instruction_gate.min_similarity


def _meaning(text: str) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """(task family, colours, sides) of a workcell instruction, from the templates that make them."""
    from mambavla.runtime.instruction_gate import arguments
    from mambavla.sim.tasks import _PARAPHRASES, HELD_OUT_PARAPHRASES

    colours, sides = arguments(text)
    for family, templates in [*_PARAPHRASES.items(), *HELD_OUT_PARAPHRASES.items()]:
        for template in templates:
            if template.format(cube=colours[0], plate=colours[-1], side=(sides or ("",))[0]) == text:
                return family, colours, sides
    raise AssertionError(f"no template gives {text!r}")


def test_every_held_out_wording_is_snapped_to_a_training_instruction_of_its_own_task_cube_and_side(runtime):
    for text in held_out_instructions():
        runtime.set_instruction(text)
        assert runtime.instruction == text
        assert runtime.conditioned_on in runtime.instruction_gate.texts
        assert _meaning(runtime.conditioned_on) == _meaning(text), text
    for text in trained_instructions():  # a training instruction is its own snap
        runtime.set_instruction(text)
        assert runtime.conditioned_on == text


def test_the_nearest_task_vector_alone_would_turn_a_push_around(runtime):
    score, nearest = runtime.instruction_score("move the red cube rightwards")
    assert nearest == "push the red cube left"  # why the snap asks for the same sides
    runtime.set_instruction("move the red cube rightwards")
    assert _meaning(runtime.conditioned_on) == ("push", ("red",), ("right",))


def test_snapping_can_be_turned_off_and_an_unknown_side_is_refused():
    import torch

    rt = PolicyRuntime.from_checkpoint(shipped_checkpoint(), snap_instructions=False)
    rt.set_instruction("move the red cube rightwards")
    assert rt.conditioned_on == "move the red cube rightwards"
    gate = InstructionGate(("push the red cube to the right side",))
    one = (torch.tensor([1.0, 0.0]), torch.tensor([[1.0, 0.0]]))
    assert gate.refusal("push the red cube leftwards", *one) == ("it names the side left, which no training "
                                                                 "instruction names (they name right)")
    assert gate.snap("push the red cube to the left", *one) is None  # nothing to snap to: the text as given


@pytest.mark.parametrize("text", ["pick up the red cube right away", "lift the red cube right now",
                                  "pick up the red cube on the left",
                                  "grab the blue cube with your left gripper finger and lift it"])
def test_a_side_word_that_is_not_the_tasks_argument_does_not_turn_a_lift_into_a_push(runtime, text):
    runtime.set_instruction(text)
    assert runtime.conditioned_on == text  # as typed: the only snap naming that side is a push, far from the text


def test_an_instruction_naming_no_colour_or_side_is_not_snapped_to_another_object():
    import torch

    gate = InstructionGate(("pick up the sponge", "pick up the towel"))
    trained = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # even were "grab the towel" nearest to the sponge, the object is a word the gate cannot check: as typed
    assert gate.snap("grab the towel", torch.tensor([0.9, 0.436]), trained) is None
    assert gate.snap("lift the red cube", torch.tensor([1.0, 0.0]), trained) is None  # names what none names
