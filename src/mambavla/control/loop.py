"""The control loop: a Franka arm (franky) driven by a `ControllerCore`, one tick at a time, free of ROS.

Per tick: franky's Cartesian impedance tracker ticks (None: franky no longer controls the arm, a fault), the
measured pose goes into the core, the core computes the next target, the target is streamed to the tracker and
the gripper command goes to the `GripperWorker`. When the core asks to stop (watchdog) or stops tracking, the loop
brings the arm to rest (the controlled stop). Enabling, stopping, faults and recovery live here too.

The clock is passed in: `clock()` returns `(now, mono)`, the time chunk stamps and the pose history use and a
monotonic time for the watchdog and tick periods. controller_node runs the loop on its control thread with the ROS
clock and `time.monotonic`; eval-sim runs it in simulated time (both the same clock), one tick per physics hold.
`before_blocking` runs before calls that wait for the robot to move (a controlled stop, a gripper command): the
lockstep simulator lets physics run for them.

Thread model: one thread calls the loop's methods; `snapshot`, `last_command`, `rate_stats` and `busy` are read by
others (each is replaced whole).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from mambavla.control.config import TrackingParams
from mambavla.control.core import RUNNING, ControllerCore, ControllerState, ControlTarget
from mambavla.control.gripper import GripperWorker

Clock = Callable[[], tuple[float, float]]  # -> (now, mono), seconds


class RobotSnapshot(NamedTuple):
    """The robot state the loop read last."""

    stamp: float  # controller time (`now`) of the read
    q: np.ndarray  # (7,) joint positions, rad
    dq: np.ndarray  # (7,) joint velocities, rad/s
    tau: np.ndarray  # (7,) measured joint torques, Nm
    position: np.ndarray  # (3,) end effector, base frame, m
    quat: np.ndarray  # (4,) x, y, z, w
    mono: float  # monotonic time of the read


class ControlLoop:
    def __init__(self, core: ControllerCore, tracking: TrackingParams, clock: Clock, logger=None,
                 auto_recover: bool = False, before_blocking: Callable[[], None] | None = None):
        self.core, self.tracking, self.clock = core, tracking, clock
        self.logger = logger or logging.getLogger("mambavla.control.loop")
        self.auto_recover = auto_recover
        self._before_blocking = before_blocking
        self.robot = None  # franky.Robot
        self.gripper: GripperWorker | None = None
        self.tracker = None  # franky.CartesianImpedanceTracker while tracking
        self.franky_error = ""
        self.snapshot: RobotSnapshot | None = None
        self._robot_time = float("nan")  # the robot's own clock in the last state read (libfranka RobotState.time)
        self.last_command: tuple[float, ControlTarget] | None = None  # (now, target) last streamed
        self.tick_state: ControllerState | None = None  # the core's state after the last tick's update
        self.busy = ""  # the robot call the loop is in, for a watchdog of the calling thread
        self._last_tick: float | None = None  # mono of the last tick
        self._tick_periods: list[float] = []
        self.rate_stats = (float("nan"), float("nan"), float("nan"))  # mean Hz, jitter std ms, max period ms

    # ---- connection ----

    def attach(self, robot, gripper: GripperWorker | None = None) -> None:
        """Drive `robot` (a connected franky.Robot) and its hand; reads its state once."""
        self.robot, self.gripper = robot, gripper
        self.read_state()

    def detach(self, message: str) -> None:
        """The connection is gone: forget the robot, report ERROR with `message`."""
        self.tracker = None
        self.robot = None
        if self.gripper is not None:
            self.gripper.close()
            self.gripper = None
        self.franky_error = message
        self.core.deactivate(message, error=True)
        self.logger.error(message)

    def read_state(self) -> None:
        """Read the robot state and record the measured pose in the core. A state the robot has not renewed
        (franky holds the last one it got) keeps its age: it is not recorded again under a new stamp."""
        self.busy = "reading the robot state"
        state = self.robot.state
        robot_time = state.time.to_sec()
        if self.snapshot is not None and robot_time == self._robot_time:
            return
        self._robot_time = robot_time
        pose = state.O_T_EE
        position, quat = np.asarray(pose.translation), np.asarray(pose.quaternion)
        now, mono = self.clock()
        self.core.record_pose(now, position, quat)
        self.snapshot = RobotSnapshot(now, np.asarray(state.q), np.asarray(state.dq), np.asarray(state.tau_J),
                                      position, quat, mono)

    # ---- enable, stop, faults ----

    def enable(self) -> tuple[bool, str]:
        """Start tracking and hold the current pose: `start_tracking` then `activate`."""
        if self.robot is None:
            return False, f"not connected: {self.franky_error}"
        if self.core.state == ControllerState.ERROR:
            return False, f"in ERROR ({self.core.reason}): call ~/recover first"
        if self.core.state in RUNNING:
            return True, f"already enabled ({self.core.state.value})"
        if self.robot.has_errors:
            return False, "robot reports errors: call ~/recover first"
        ok, message = self.start_tracking()
        if not ok:
            return ok, message
        self.activate()
        return True, "tracking: holding the current pose until chunks arrive"

    def start_tracking(self) -> tuple[bool, str]:
        """Start franky's impedance tracker (unpaced: the caller keeps time)."""
        import franky

        self.busy = "starting the tracker"
        try:
            self.tracker = franky.CartesianImpedanceTracker(self.robot, **self.tracking.tracker_kwargs())
        except Exception as err:
            self.tracker = None
            self.franky_error = f"could not start tracking: {err}"
            self.core.deactivate(self.franky_error, error=True)
            return False, self.franky_error
        return True, "tracker started"

    def activate(self) -> None:
        """The tracker runs: the core holds the measured pose until commands arrive."""
        self.read_state()
        now, _ = self.clock()
        self.core.activate(now, gripper=1.0 if self.gripper is not None and self.gripper.closed else 0.0)
        self._tick_periods.clear()
        self._last_tick = None

    def stop(self, reason: str) -> tuple[bool, str]:
        """The controlled stop: franky ramps the torque into damping and waits for the arm to rest. The core
        leaves tracking first, so nothing is streamed after it; a stop that fails is a fault."""
        tracker, self.tracker = self.tracker, None
        self.core.deactivate(reason, error=self.core.state == ControllerState.ERROR)  # an ERROR still needs recovery
        if tracker is None:
            return True, f"already stopped ({reason})"
        if self._before_blocking is not None:
            self._before_blocking()
        self.busy = "tracker.stop()"
        try:
            tracker.stop()
        except Exception as err:
            self.fault(f"stop: {err}")
            return False, self.franky_error
        return True, reason

    def fault(self, message: str) -> None:
        """franky reported an error: stop any motion still running, report ERROR (until `recover`)."""
        tracker, self.tracker = self.tracker, None
        if tracker is not None and self.robot is not None and self.robot.is_in_control:
            if self._before_blocking is not None:
                self._before_blocking()
            try:  # never leave an impedance motion running unattended after an error
                tracker.stop()
            except Exception as err:
                message = f"{message}; stopping the motion also failed: {err}"
        self.franky_error = message
        self.core.deactivate(f"franky: {message}", error=True)
        self.logger.error(f"franky fault: {message}")
        if self.auto_recover:
            ok, text = self.recover()
            self.logger.warning(f"auto_recover: {text}")

    def recover(self) -> tuple[bool, str]:
        if self.robot is None:
            return False, f"not connected: {self.franky_error}"
        if self.core.state in RUNNING:
            return True, "nothing to recover: tracking"
        self.busy = "recover_from_errors()"
        try:
            ok = bool(self.robot.recover_from_errors())
        except Exception as err:
            return False, f"recovery failed: {err}"
        if not ok:
            return False, "franky error recovery reported failure"
        self.franky_error = ""
        self.core.deactivate("recovered: call ~/enable")
        return True, "recovered: call ~/enable"

    # ---- ticks ----

    def tick(self) -> ControlTarget | None:
        """One control tick while tracking. Returns the streamed target, or None when the arm was stopped this
        tick: by the watchdog or the core (`core.reason`), or on a fault (`franky_error`, core in ERROR)."""
        import franky

        self.busy = "tracker.tick()"
        if self.tracker.tick() is None:  # unpaced: reports whether franky still has control
            self.tick_state = None
            self._control_lost()
            return None
        _, mono = self.clock()
        dt = 1.0 / self.tracking.rate_hz if self._last_tick is None else mono - self._last_tick
        if self._last_tick is not None:
            self._tick_stats(dt)
        self._last_tick = mono
        self.read_state()
        self.busy = "streaming the target"
        now, mono = self.clock()
        target = self.core.update(now, dt, mono=mono)
        self.tick_state = self.core.state
        if target is None or target.stop:
            self.stop(self.core.reason)
            if target is not None:
                self.logger.warning(self.core.reason)
            return None
        self.tracker.set_target(franky.Affine(target.position, target.quat))
        self.last_command = (now, target)
        if self.gripper is not None:
            self.busy = "commanding the gripper"
            self.gripper.command(target.gripper, now)
        return target

    def idle(self) -> None:
        """A pass while not tracking: the hand of an arm guided by hand follows the teleoperation gripper
        command, and the robot state stays fresh."""
        if self.gripper is not None and self.core.source == "teleop":
            self.gripper.command(self.core.gripper_command, self.clock()[0])
        self.read_state()

    def _control_lost(self) -> None:
        message = "robot left control"
        self.busy = "handling lost control"
        try:
            self.robot.join_motion(timeout=0.5)  # re-raises the stored control exception, if any
        except Exception as err:
            message = str(err) or type(err).__name__
        self.fault(message)

    def _tick_stats(self, dt: float) -> None:
        periods = self._tick_periods
        periods.append(dt)
        if len(periods) >= int(self.tracking.rate_hz):  # one second of ticks
            arr = np.array(periods)
            self.rate_stats = (1.0 / arr.mean(), arr.std() * 1e3, arr.max() * 1e3)
            periods.clear()


class Pacer:
    """Wall-clock pacing of the ticks. Missed boundaries are skipped, not made up: a loop that fell behind (a
    loaded CPU) must not spin flat out to catch up."""

    def __init__(self, rate_hz: float):
        self.period = 1.0 / rate_hz
        self._next: float | None = None

    def reset(self) -> None:
        self._next = None

    def wait(self) -> None:
        """Sleep to the next tick boundary."""
        now = time.perf_counter()
        if self._next is None or now - self._next > self.period:
            self._next = now + self.period
            return
        if self._next > now:
            time.sleep(self._next - now)
        self._next += self.period
