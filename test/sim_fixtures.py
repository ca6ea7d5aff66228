"""Helpers shared by test_sim_* and test_data_*: a workcell with franky attached, and one short recorded
expert episode per test session (cached here rather than in a conftest so other suites are untouched).
Nothing keeps a 1 kHz server thread running after the tests that need it."""

from __future__ import annotations

import atexit
import contextlib
import functools
import shutil
import tempfile
from pathlib import Path

CAMERA_SIZE = (64, 80)  # (height, width): not square, so a swapped axis shows
EPISODE_SEED = 3
EPISODE_TASK = "lift"


@contextlib.contextmanager
def running_workcell():
    """(workcell, franky robot, franky gripper); the server stops on exit."""
    import franky

    from mambavla.realtime import keep_thread_scheduling
    from mambavla.sim import Workcell

    with Workcell(task=EPISODE_TASK, seed=EPISODE_SEED, camera_size=CAMERA_SIZE) as cell:
        with keep_thread_scheduling():  # else the test runner and every node it starts run at SCHED_FIFO 99
            robot = franky.Robot(cell.robot_ip, realtime_config=franky.RealtimeConfig.Ignore)
            gripper = franky.Gripper(cell.robot_ip)
        try:
            yield cell, robot, gripper
        finally:
            del robot, gripper


@functools.lru_cache(maxsize=None)
def recorded_episode(depth: bool = False) -> tuple[Path, dict]:
    """A real lift episode: expert through franky against franky-sim, recorded to an MCAP bag (`depth`: with every
    camera's aligned depth)."""
    from mambavla.sim.collect import episode_name, record_episode

    root = Path(tempfile.mkdtemp(prefix="mambavla-episode-"))
    atexit.register(shutil.rmtree, root, True)
    with running_workcell() as (cell, robot, gripper):
        summary = record_episode(cell, robot, gripper, root / episode_name(EPISODE_SEED), EPISODE_SEED, EPISODE_TASK,
                                 depth=depth)
    return root / episode_name(EPISODE_SEED), summary
