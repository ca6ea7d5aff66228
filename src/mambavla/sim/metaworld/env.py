"""One Meta-World task as the policy sees it (see `suite`): reset from a seed, a frame and the proprio per
observation, a 4-D action per step, success as the environment reports it.

    task = MetaWorldTask("assembly-v3", image_size=(128, 128))
    proprio = task.reset(seed=0)
    frame = task.frame()                       # uint8 (128, 128, 3): corner2, 480 x 480, flipped, resized
    proprio, success, done = task.step(task.expert_action())

`metaworld` lives in its own environment (`make metaworld`: it pins mujoco 3.3.0, the project's simulator
runs on 4.0.0); importing this module elsewhere raises an error that says so.
"""

from __future__ import annotations

import numpy as np

from mambavla.sim.metaworld import suite


def import_metaworld():
    try:
        import metaworld
        import metaworld.policies
    except ImportError as err:
        raise ImportError(
            f"Meta-World is not installed in this environment ({err}). It needs mujoco 3.3.0 while the project's "
            "simulator runs on 4.0.0: run `make metaworld` and use .venv-metaworld/bin/mambavla "
            "(docs/metaworld.md)"
        ) from err
    return metaworld


def require_metaworld() -> None:
    """ValueError (a command's error, with the fix) unless Meta-World imports here: checked before any worker starts."""
    try:
        import_metaworld()
    except ImportError as err:
        raise ValueError(str(err)) from None


class MetaWorldTask:
    def __init__(
        self,
        task: str,
        image_size: tuple[int, int] | None = (128, 128),
        render: bool = True,
        max_steps: int = suite.MAX_STEPS,
    ):
        """`image_size`: (h, w) of `frame()`; None keeps the 480 x 480 render. `render=False`: no camera
        (experts' success rates). `max_steps`: an episode's limit (the protocol's 500; fewer for smoke tests)."""
        metaworld = import_metaworld()
        self.task = suite.check_task(task)
        self.instruction = suite.instruction(task)
        self.image_size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
        benchmark = metaworld.MT1(task, seed=suite.BENCHMARK_SEED)
        options = (
            {
                "render_mode": "rgb_array",
                "camera_name": suite.CAMERA,
                "width": suite.RENDER_SIZE,
                "height": suite.RENDER_SIZE,
            }
            if render
            else {}
        )
        self.env = benchmark.train_classes[task](**options)
        self.env.set_task(benchmark.train_tasks[0])
        if render:
            self.env.model.cam_pos[self.env.model.camera(suite.CAMERA).id] = suite.CAMERA_POS
        self.env.reset()
        # MT1 freezes one layout; the seed given to reset() draws each episode's objects and goal instead
        self.env._freeze_rand_vec = False
        self.env.seeded_rand_vec = True
        if abs(self.env.dt - suite.DT) > 1e-9:
            raise RuntimeError(f"{task}: environment step is {self.env.dt} s, the suite assumes {suite.DT} s")
        if not 1 <= max_steps <= suite.MAX_STEPS:
            raise ValueError(f"max_steps must be 1 .. {suite.MAX_STEPS}, got {max_steps}")
        self.max_steps = max_steps
        self.expert = getattr(metaworld.policies, suite.TASKS[task][1])()
        self._obs: np.ndarray | None = None
        self.steps = 0

    def reset(self, seed: int) -> np.ndarray:
        # Meta-World's reset() ignores its seed argument: the layout is drawn from the RNG that seed() sets
        self.env.seed(int(seed))
        self._obs, _ = self.env.reset(seed=int(seed))
        self.steps = 0
        return self.proprio()

    def proprio(self) -> np.ndarray:
        return np.asarray(self._obs[:4], np.float32)

    def frame(self) -> np.ndarray:
        from mambavla.data.images import resize_rgb

        rgb = np.ascontiguousarray(np.flip(self.env.render(), (0, 1)))
        return rgb if self.image_size is None else resize_rgb(rgb, self.image_size)

    def expert_action(self) -> np.ndarray:
        return np.clip(self.expert.get_action(self._obs), -1.0, 1.0).astype(np.float32)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, bool, bool]:
        """-> (proprio, success, done): done at success or after `max_steps` steps."""
        action = np.asarray(action, np.float32)
        if action.shape != (4,) or not np.isfinite(action).all():
            raise ValueError(f"{self.task}: action must be 4 finite numbers (dx, dy, dz, grip), got {action!r}")
        self._obs, _, _, truncated, info = self.env.step(np.clip(action, -1.0, 1.0))
        self.steps += 1
        success = bool(info["success"])
        return self.proprio(), success, success or truncated or self.steps >= self.max_steps

    def close(self) -> None:
        self.env.close()
