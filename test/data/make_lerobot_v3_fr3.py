"""How test/data/lerobot_v3_fr3 was made: LeRobot's own writer (`lerobot-dataset` 0.4.4, import `ledataset`,
LeRobotDataset v3.0) recording three CRISP-style FR3 episodes at 20 fps; the tests read it, they do not run this.

    python test/data/make_lerobot_v3_fr3.py test/data/lerobot_v3_fr3 test/data/lerobot_v3_fr3_truth.json

Needs `lerobot-dataset` with its dependencies (datasets, pandas, torch); it is not a dependency of mambavla.
`ledataset` imports torchvision at module level, and PyPI's torchvision does not load against this project's CPU
torch, so empty modules stand in for it: writing a video dataset uses PIL and PyAV only. Features: two cameras,
`observation.state.cartesian` (x, y, z, roll, pitch, yaw: extrinsic xyz Euler), `observation.state.joint`,
`observation.state` (cartesian, gripper with 1 = closed as CRISP's state stores it, joints), `action` (the next
absolute pose, gripper 1 = open as CRISP's actions). The truth file keeps each episode's target positions,
quaternions (x, y, z, w) and open/closed flags.
"""

import importlib.machinery
import json
import sys
import types

import numpy as np
from scipy.spatial.transform import Rotation

H, W, FPS = 64, 80, 20
NAMES = ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]
JOINTS = [f"joint_{i}" for i in range(7)]


def scene(t: int) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    return np.stack([(xx * 3 + 5 * t) % 256, yy * 3, np.full_like(xx, 100)], -1).astype(np.uint8)


def main(root: str, truth_path: str) -> None:
    torchvision = types.ModuleType("torchvision")
    torchvision.transforms = types.ModuleType("torchvision.transforms")
    torchvision.transforms.v2 = types.ModuleType("torchvision.transforms.v2")
    for module in (torchvision, torchvision.transforms, torchvision.transforms.v2):
        module.__spec__ = importlib.machinery.ModuleSpec(module.__name__, None)
        sys.modules[module.__name__] = module
    from ledataset.datasets.lerobot_dataset import LeRobotDataset

    video = {"dtype": "video", "shape": (H, W, 3), "names": ["height", "width", "channels"]}
    features = {
        "observation.images.primary": video,
        "observation.images.wrist": dict(video),
        "observation.state.cartesian": {"dtype": "float32", "shape": (6,), "names": NAMES[:6]},
        "observation.state.joint": {"dtype": "float32", "shape": (7,), "names": JOINTS},
        "observation.state": {"dtype": "float32", "shape": (14,), "names": NAMES + JOINTS},
        "action": {"dtype": "float32", "shape": (7,), "names": NAMES},
    }
    ds = LeRobotDataset.create("local/crisp_like", fps=FPS, root=root, features=features, robot_type="fr3",
                               use_videos=True)
    rng = np.random.default_rng(0)
    truth = []
    for e in range(3):
        n = 12 + e
        xyz = np.array([0.4, 0.1 * e, 0.3]) + np.cumsum(rng.normal(0, 0.004, (n + 1, 3)), 0)
        rot = Rotation.from_euler("xyz", [np.pi, 0.1, 0.2]) * Rotation.from_rotvec(
            np.cumsum(rng.normal(0, 0.01, (n + 1, 3)), 0))
        euler = rot.as_euler("xyz")
        opened = (np.arange(n) < n // 2).astype(np.float32)
        joints = rng.normal(0, 0.3, (n, 7)).astype(np.float32)
        for t in range(n):
            img = scene(t)
            cartesian = np.concatenate([xyz[t], euler[t]]).astype(np.float32)
            gripper = np.array([1.0 - opened[t]], np.float32)
            ds.add_frame({"observation.images.primary": img, "observation.images.wrist": img[::-1].copy(),
                          "observation.state.cartesian": cartesian, "observation.state.joint": joints[t],
                          "observation.state": np.concatenate([cartesian, gripper, joints[t]]),
                          "action": np.concatenate([xyz[t + 1], euler[t + 1], [opened[t]]]).astype(np.float32),
                          "task": "pick up the cube"})
        ds.save_episode()
        truth.append({"xyz": xyz[1:].tolist(), "quat": rot[1:].as_quat().tolist(), "opened": opened.tolist()})
    if hasattr(ds, "finalize"):
        ds.finalize()
    with open(truth_path, "w") as f:
        json.dump(truth, f)
    print("written", ds.num_episodes, "episodes,", ds.num_frames, "frames")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
