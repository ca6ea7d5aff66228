"""One workcell and one short recorded expert episode per test session, shared by test_sim_* and
test_data_* (cached here rather than in a conftest so other suites are untouched)."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

CAMERA_SIZE = (64, 80)  # (height, width): not square, so a swapped axis shows
EPISODE_SEED = 3
EPISODE_TASK = "lift"


@functools.lru_cache(maxsize=None)
def shared_workcell():
    """(workcell, franky robot, franky gripper), started once; stopped at exit."""
    import franky

    from mambavla.sim import Workcell

    cell = Workcell(task=EPISODE_TASK, seed=EPISODE_SEED, camera_size=CAMERA_SIZE).start()
    atexit.register(cell.stop)
    robot = franky.Robot(cell.robot_ip, realtime_config=franky.RealtimeConfig.Ignore)
    gripper = franky.Gripper(cell.robot_ip)
    return cell, robot, gripper


@functools.lru_cache(maxsize=None)
def recorded_episode() -> tuple[Path, dict]:
    """A real lift episode: expert through franky against franky-sim, recorded to an MCAP bag."""
    from mambavla.sim.collect import episode_name, record_episode

    cell, robot, gripper = shared_workcell()
    root = Path(tempfile.mkdtemp(prefix="mambavla-episode-"))
    atexit.register(shutil.rmtree, root, True)
    summary = record_episode(cell, robot, gripper, root / episode_name(EPISODE_SEED), EPISODE_SEED, EPISODE_TASK)
    return root / episode_name(EPISODE_SEED), summary
