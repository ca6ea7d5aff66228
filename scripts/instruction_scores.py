"""How a checkpoint's instruction gate scores three sets of instructions: its training instructions, the
held-out rewordings of the workcell's tasks (sim/tasks.py HELD_OUT_PARAPHRASES) and instructions outside those
tasks (OUTSIDE_INSTRUCTIONS): per set the lowest and highest similarity to the nearest training instruction, and
every instruction's score. The calibration behind a threshold (docs/policy.md#instructions-it-cannot-follow).

    python scripts/instruction_scores.py [CHECKPOINT] > scores.json   (default: the shipped policy)
"""

from __future__ import annotations

import json
import sys

from mambavla.model.checkpoint import shipped_checkpoint
from mambavla.runtime import PolicyRuntime
from mambavla.sim.tasks import OUTSIDE_INSTRUCTIONS, held_out_instructions


def main() -> None:
    checkpoint = sys.argv[1] if len(sys.argv) > 1 else str(shipped_checkpoint())
    runtime = PolicyRuntime.from_checkpoint(checkpoint)
    gate = runtime.instruction_gate
    sets = {"training": list(gate.texts), "held_out": held_out_instructions(), "outside": list(OUTSIDE_INSTRUCTIONS)}
    out = {"checkpoint": checkpoint, "min_similarity": gate.min_similarity}
    for name, texts in sets.items():
        scores = {t: runtime.instruction_score(t) for t in texts}
        low, high = min(scores, key=lambda t: scores[t][0]), max(scores, key=lambda t: scores[t][0])
        out[name] = {"instructions": len(texts), "lowest": [round(scores[low][0], 3), low],
                     "highest": [round(scores[high][0], 3), high],
                     "scores": {t: [round(s, 3), nearest] for t, (s, nearest) in scores.items()}}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
