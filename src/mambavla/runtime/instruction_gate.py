"""Whether an instruction is one the policy was trained to follow, judged before it drives anything.

A policy conditions on the task vector of its instruction (`MambaVLA.task_vector`: the mean of the projected
instruction tokens). An instruction whose task vector is far from every instruction of the training data
("open the drawer", "make coffee") would still produce actions: a guess. The gate refuses it instead, and it
refuses an instruction that names a colour no training instruction names ("the orange cube"), which the
vector alone does not separate from a rewording (the colour is one word of several).

The checkpoint carries what the gate needs in `instructions.json`: the training instructions and the lowest
cosine similarity of a task vector to the nearest of theirs that is accepted. `mambavla train` writes it; a
checkpoint without it is not gated. docs/policy.md#instructions-it-cannot-follow has the calibration.

An accepted instruction can be snapped (`snap`) to the training instruction nearest to it that names the same
colours, in the same order, and the same sides: the policy is then conditioned on a wording it was trained on,
whatever the operator typed. Nearest by task vector alone is not enough: "move the red cube rightwards" is
nearest to "push the red cube left" (one word of several differs), so the words that carry the task's
arguments must agree. Words alone are not enough either: "pick up the red cube right away" names a side, and
the only training instructions naming red and right are pushes; so the snap must also score within
SNAP_MARGIN of the nearest training instruction overall, else the text is used as typed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from mambavla.model.checkpoint import INSTRUCTIONS as GATE_FILE

# Between what rewordings of the training instructions score and what instructions outside the tasks score with
# the shipped policy (the calibration: docs/policy.md#instructions-it-cannot-follow).
DEFAULT_MIN_SIMILARITY = 0.70
# Colour words an operator may use; one that no training instruction names makes the instruction unknown.
COLOUR_WORDS = frozenset({
    "red", "green", "blue", "yellow", "purple", "orange", "black", "white", "grey", "gray", "pink", "brown",
    "cyan", "magenta", "violet", "turquoise", "gold", "silver", "beige", "maroon", "navy", "teal", "lime",
})
# Side words an operator may use, to the side they name; one that no training instruction names makes the
# instruction unknown, as a colour does.
SIDE_WORDS = {"left": "left", "leftward": "left", "leftwards": "left", "right": "right", "rightward": "right",
              "rightwards": "right"}
# The snap's candidate may score at most this much below the nearest training instruction overall. Rewordings of
# one task are within 0.015 of it; a side or colour word that is not the task's argument ("right away", "on the
# left") puts the candidate 0.09-0.21 below (the shipped policy; docs/policy.md#instructions-in-other-words).
SNAP_MARGIN = 0.05
_WORD = re.compile(r"[a-z]+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class InstructionGate:
    texts: tuple[str, ...]  # the training instructions
    min_similarity: float = DEFAULT_MIN_SIMILARITY

    def __post_init__(self):
        if not self.texts:
            raise ValueError(f"{GATE_FILE}: no training instructions")
        if not 0.0 < self.min_similarity < 1.0:
            raise ValueError(f"{GATE_FILE}: min_similarity must be in (0, 1), got {self.min_similarity}")

    @classmethod
    def load(cls, folder: str | Path) -> InstructionGate | None:
        path = Path(folder) / GATE_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            texts, threshold = data["texts"], data["min_similarity"]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not an instruction gate ({type(err).__name__}: {err}); expected "
                             '{"min_similarity": 0.7, "texts": ["...", ...]}') from err
        if not isinstance(texts, list) or not all(isinstance(t, str) and t.strip() for t in texts):
            raise ValueError(f"{path}: texts must be a list of non-empty instructions")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise ValueError(f"{path}: min_similarity must be a number, got {threshold!r}")
        return cls(tuple(texts), float(threshold))

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / GATE_FILE
        path.write_text(json.dumps({"min_similarity": self.min_similarity, "texts": list(self.texts)}, indent=1) + "\n")
        return path

    def colours(self) -> frozenset[str]:
        return frozenset(w for t in self.texts for w in words(t) if w in COLOUR_WORDS)

    def sides(self) -> frozenset[str]:
        return frozenset(side for t in self.texts for side in arguments(t)[1])

    def refusal(self, text: str, task: torch.Tensor, trained: torch.Tensor) -> str | None:
        """Why the policy cannot follow `text`, or None. `task`: its task vector (d,); `trained`: the training
        instructions' task vectors (N, d), both unit length."""
        unknown = sorted({w for w in words(text) if w in COLOUR_WORDS} - self.colours())
        if unknown:
            known = ", ".join(sorted(self.colours())) or "none"
            return f"it names {', '.join(unknown)}, a colour no training instruction names (they name {known})"
        unknown = sorted(set(arguments(text)[1]) - self.sides())
        if unknown:
            known = ", ".join(sorted(self.sides())) or "none"
            return f"it names the side {', '.join(unknown)}, which no training instruction names (they name {known})"
        score, nearest = self.nearest(task, trained)
        if score < self.min_similarity:
            return (f"it is outside what the policy was trained for: similarity {score:.2f} to the nearest training "
                    f"instruction {nearest!r}, below the checkpoint's {self.min_similarity:.2f}")
        return None

    def snap(self, text: str, task: torch.Tensor, trained: torch.Tensor) -> tuple[float, str] | None:
        """(cosine similarity, text) of the training instruction nearest to `text` among those naming its colours in
        its order and its sides (else its colours in any order and its sides); None where no training instruction
        names them, or where the nearest that does scores more than SNAP_MARGIN below the nearest overall (the
        words name a side or colour that is not what the task acts on). An instruction naming no colour and no
        side is not snapped: what it acts on is then a word the gate cannot check ("the towel", "the sponge"),
        and the nearest training instruction may name another."""
        colours, sides = arguments(text)
        if not colours and not sides:
            return None
        by_words = [arguments(t) for t in self.texts]
        overall = float((trained @ task).max())
        for same in (lambda a: a == (colours, sides), lambda a: (sorted(a[0]), a[1]) == (sorted(colours), sides)):
            index = [i for i, a in enumerate(by_words) if same(a)]
            if index:
                similarity = trained[index] @ task
                best = int(similarity.argmax())
                score = float(similarity[best])
                return (score, self.texts[index[best]]) if score >= overall - SNAP_MARGIN else None
        return None

    def nearest(self, task: torch.Tensor, trained: torch.Tensor) -> tuple[float, str]:
        """(cosine similarity, text) of the training instruction nearest to the unit task vector `task`."""
        similarity = trained @ task
        best = int(similarity.argmax())
        return float(similarity[best]), self.texts[best]


def arguments(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The colours `text` names, in order, and the sides (sorted, each once)."""
    found = words(text)
    return (tuple(w for w in found if w in COLOUR_WORDS),
            tuple(sorted({SIDE_WORDS[w] for w in found if w in SIDE_WORDS})))


def unit(vectors: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(vectors.float(), dim=-1)
