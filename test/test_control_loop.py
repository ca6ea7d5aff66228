"""ControlLoop against real franky and franky-sim, on a clock the test advances: streaming chunk targets, the
gripper worker, and the watchdog's controlled stop."""

from __future__ import annotations

import time

import numpy as np
import pytest
from sim_fixtures import running_workcell

from mambavla.control import ControllerState
from mambavla.control.config import SIM_PARAM_FILES, TrackingParams, controller_core, load_params
from mambavla.control.gripper import GripperWorker
from mambavla.control.loop import ControlLoop, SteppedClock
from mambavla.runtime.chunk import ActionChunk
from mambavla.sim.workcell import OPEN_WIDTH
from mambavla.spaces import pose_to_vector

pytest.importorskip("franky_sim")
pytestmark = [pytest.mark.sim, pytest.mark.slow]

TICK = 0.01  # s of controller time per tick (rate_hz 100 in controller_sim.yaml)


@pytest.fixture(scope="module")
def workcell():
    with running_workcell() as handles:
        yield handles


def make_loop(robot, gripper=None, **overrides) -> tuple[ControlLoop, SteppedClock]:
    params = {**load_params(SIM_PARAM_FILES), **overrides}
    tracking = TrackingParams.from_params(params)
    assert tracking.rate_hz == pytest.approx(1.0 / TICK)
    clock = SteppedClock(100.0)
    loop = ControlLoop(controller_core(params), tracking, clock)
    loop.attach(robot, gripper)
    return loop, clock


def line_chunk(stamp: float, start: np.ndarray, quat: np.ndarray, velocity: np.ndarray, rows: int, gripper: float,
               dt: float = 0.05) -> ActionChunk:
    positions = start + np.arange(rows)[:, None] * dt * velocity
    actions = np.concatenate([pose_to_vector(positions, np.broadcast_to(quat, (rows, 4))),
                              np.full((rows, 1), gripper)], axis=1)
    return ActionChunk(actions=actions, dt=dt, stamp=stamp)


def test_the_loop_streams_a_chunk_to_the_arm_and_its_gripper_column_to_the_hand(workcell):
    cell, robot, hand = workcell
    gripper = GripperWorker(hand, 0.1, 20.0, OPEN_WIDTH, threaded=False)
    loop, clock = make_loop(robot, gripper, hold_after=3.0, stop_after=5.0)
    try:
        assert loop.enable() == (True, "tracking: holding the current pose until chunks arrive")
        start, quat = loop.snapshot.position.copy(), loop.snapshot.quat.copy()
        goal = start + np.array([0.04, 0.0, 0.0])
        chunk = line_chunk(clock.t, start, quat, np.array([0.08, 0.0, 0.0]), rows=11, gripper=1.0)
        assert loop.core.submit(chunk, clock.t, mono=clock.t) is None
        streamed = []
        for _ in range(150):  # 1.5 s of controller time, about as long on the wall so the simulated arm follows
            clock.t += TICK
            streamed.append(loop.tick())
            time.sleep(TICK)
        assert all(target is not None for target in streamed)
        assert loop.core.state == ControllerState.ACTIVE
        xs = np.array([target.position[0] for target in streamed])
        assert np.all(np.diff(xs) >= -1e-9) and xs[-1] == pytest.approx(goal[0], abs=1e-6)
        assert loop.last_command[0] == pytest.approx(clock.t) and loop.last_command[1] is streamed[-1]
        assert np.linalg.norm(loop.snapshot.position - goal) < 0.005  # the arm got there
        assert loop.snapshot.stamp == pytest.approx(clock.t)
        gripper.finish()
        assert gripper.closed and gripper.commands_sent == 1
        assert hand.width < 0.01  # nothing between the fingers: they closed
        ok, message = loop.stop("test over")
        assert ok and message == "test over" and loop.tracker is None
        assert loop.core.state == ControllerState.STOPPED
    finally:
        loop.stop("test over")
        gripper.reset(closed=True)
        gripper.command(0.0, clock.t)  # open the hand again for the next test
        gripper.finish()


def test_the_watchdog_on_the_passed_clock_stops_the_arm_and_leaves_it_at_rest(workcell):
    cell, robot, _ = workcell
    loop, clock = make_loop(robot, hold_after=1.0, stop_after=2.0)
    assert loop.enable()[0]
    here, quat = loop.snapshot.position.copy(), loop.snapshot.quat.copy()
    assert loop.core.submit(line_chunk(clock.t, here, quat, np.zeros(3), rows=1, gripper=0.0), clock.t) is None
    clock.t += TICK
    assert loop.tick() is not None and loop.core.state == ControllerState.ACTIVE
    clock.t += 1.5  # no command for longer than hold_after: hold the measured pose
    assert loop.tick() is not None and loop.core.state == ControllerState.HOLDING
    assert robot.is_in_control
    clock.t += 1.0  # longer than stop_after: the controlled stop
    assert loop.tick() is None
    assert loop.tick_state == ControllerState.HOLDING
    assert loop.core.state == ControllerState.STOPPED and "stop_after" in loop.core.reason
    assert loop.tracker is None and not robot.is_in_control  # the stop ran to its end: the arm is at rest
    assert np.linalg.norm(np.asarray(robot.state.O_T_EE.translation) - here) < 0.005


def test_a_request_that_raises_is_answered_at_once_with_the_error_and_the_thread_goes_on():
    import logging
    from types import SimpleNamespace

    from mambavla.control.loop import ControlThread

    def enable():
        raise RuntimeError("robot state unreadable")

    passes = []
    loop = SimpleNamespace(logger=logging.getLogger("test"), tracking=SimpleNamespace(rate_hz=100.0), busy="",
                           robot=object(), tracker=None, enable=enable, idle=lambda: passes.append(1))
    control = ControlThread(loop, "127.0.0.1")
    control.start()
    try:
        t0 = time.monotonic()
        assert control.request("enable", timeout=3.0) == (False, "enable failed: RuntimeError: robot state unreadable")
        assert time.monotonic() - t0 < 1.0  # not left to time out
        n = len(passes)
        time.sleep(0.2)
        assert len(passes) > n and not control.stuck()  # idle passes go on
    finally:
        control.join(timeout=2.0)


def test_a_fault_whose_robot_calls_raise_still_reports_error_instead_of_raising():
    from types import SimpleNamespace

    params = load_params(SIM_PARAM_FILES)
    loop = ControlLoop(controller_core(params), TrackingParams.from_params(params), SteppedClock())

    class Unreachable:
        @property
        def is_in_control(self):
            raise RuntimeError("network: connection reset")

    loop.robot, loop.tracker = Unreachable(), SimpleNamespace(stop=lambda: None)
    loop.fault("reflex")  # called from the control thread's handler: an exception here would end that thread
    assert loop.tracker is None and loop.core.state == ControllerState.ERROR
    assert loop.franky_error == "reflex; stopping the motion also failed: network: connection reset"
