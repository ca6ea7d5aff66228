"""Random observations shaped for a runtime's policy (cameras, image size, proprio), for runtime tests."""

import numpy as np


def random_observation(runtime, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    h, w = runtime.image_size
    return {"images": {c: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for c in runtime.camera_names},
            "proprio": rng.normal(size=runtime.proprio_dim).astype(np.float32), "stamp": float(seed)}


def instruction_change_chunks(runtime) -> list[np.ndarray]:
    """Chunks over a sequence that exercises a runtime's history: four steps, a reset, one step, a new
    instruction (whose state replaces the old), two steps. Runtimes that should agree give the same list."""
    runtime.set_instruction("lift the red cube")
    chunks = [runtime.step(random_observation(runtime, k)).actions for k in range(4)]
    runtime.reset()
    chunks.append(runtime.step(random_observation(runtime, 0)).actions)
    runtime.set_instruction("push the blue cube to the left")
    return chunks + [runtime.step(random_observation(runtime, k)).actions for k in range(2)]
