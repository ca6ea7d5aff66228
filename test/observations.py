"""Random observations shaped for a runtime's policy (cameras, image size, proprio), for runtime tests."""

import numpy as np


def random_observation(runtime, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    h, w = runtime.image_size
    return {"images": {c: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for c in runtime.camera_names},
            "proprio": rng.normal(size=runtime.proprio_dim).astype(np.float32), "stamp": float(seed)}
