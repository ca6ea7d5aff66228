"""Simulated FR3 workcell (franky-sim + MuJoCo), its tasks, and the scripted expert.

Offscreen rendering needs a GL backend chosen before MuJoCo is imported: `osmesa` (software) unless
`MUJOCO_GL` says otherwise (`egl` on a GPU).
"""

import os

os.environ.setdefault("MUJOCO_GL", "osmesa")

from mambavla.sim.config import EVAL_SEED_BASE, WorkcellConfig  # noqa: E402
from mambavla.sim.tasks import TASK_CHOICES, TASK_FAMILIES, SceneState, TaskMonitor, TaskSpec, eval_seeds  # noqa: E402

_WORKCELL_NAMES = ("RobotState", "Snapshot", "Workcell")


def __getattr__(name: str):
    # franky-sim and MuJoCo load only when the workcell is used: the CLI and a robot PC without
    # franky-sim can still read the task list
    if name in _WORKCELL_NAMES:
        from mambavla.sim import workcell

        return getattr(workcell, name)
    raise AttributeError(name)

__all__ = [
    "EVAL_SEED_BASE",
    "RobotState",
    "SceneState",
    "Snapshot",
    "TASK_CHOICES",
    "TASK_FAMILIES",
    "TaskMonitor",
    "TaskSpec",
    "Workcell",
    "WorkcellConfig",
    "eval_seeds",
]
