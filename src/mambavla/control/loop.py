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

Thread model: one thread calls the loop's methods (`ControlThread` is controller_node's); `snapshot`, `last_command`,
`rate_stats` and `busy` are read by others (each is replaced whole).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from mambavla.control.config import TrackingParams
from mambavla.control.core import RUNNING, ControllerCore, ControllerState, ControlTarget
from mambavla.control.gripper import GripperWorker

Clock = Callable[[], tuple[float, float]]  # -> (now, mono), seconds


class SteppedClock:
    """A clock its owner advances (lockstep simulation, tests): `t` is both the controller time and the monotonic
    time."""

    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> tuple[float, float]:
        return self.t, self.t


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
        if tracker is not None and self.robot is not None:
            try:  # never leave an impedance motion running unattended after an error
                if self.robot.is_in_control:
                    if self._before_blocking is not None:
                        self._before_blocking()
                    tracker.stop()
            except Exception as err:  # raised here, it would end the control thread with the arm still tracking
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


STUCK_AFTER = 3.0  # s without a pass: stuck in a robot call (a stop from 0.1 m/s takes 0.4-0.5 s in franky-sim)
RECONNECT_EVERY = 2.0  # s between connection attempts


class ControlThread:
    """The one thread that calls franky for the arm (controller_node's): it carries out requests (enable, stop,
    shutdown, recover) in arrival order, takes over the robot a connector opened, and runs the loop: ticks paced
    at `rate_hz` while tracking, idle passes otherwise.

    Connecting blocks in franky without a timeout, so it happens elsewhere: the connector waits for
    `want_connection` and puts `(robot, GripperWorker | None, gripper error)`, or `(None, None, why)`, into
    `connections`. A robot that comes back after it was lost stays in ERROR until `recover`."""

    def __init__(self, loop: ControlLoop, robot_ip: str, enable_on_start: bool = False):
        self.loop, self.robot_ip, self.enable_on_start = loop, robot_ip, enable_on_start
        self.logger = loop.logger
        self.requests: queue.Queue = queue.Queue()  # (name, done, result, cancelled)
        self.connections: queue.Queue = queue.Queue()
        self.want_connection = threading.Event()
        self.connected_before = False
        self.gripper_error = ""  # why the hand is not driven, when the connector found none
        self.beat = time.monotonic()  # last pass
        self._pacer = Pacer(loop.tracking.rate_hz)
        self._last_connect_error = ""
        self._running = True
        self._thread = threading.Thread(target=self._run, name="control", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        """End the thread (after the pass it is in)."""
        self._running = False
        self._thread.join(timeout=timeout)

    @property
    def running(self) -> bool:
        return self._running

    def stuck(self) -> str:
        """Why the thread cannot serve requests now ('' when it can)."""
        silent = time.monotonic() - self.beat
        if silent > STUCK_AFTER and self._thread.is_alive():
            return f"control thread blocked in {self.loop.busy or 'a robot call'} for {silent:.1f} s"
        return "" if self._thread.is_alive() else "control thread has ended"

    def request(self, name: str, timeout: float, cancel_late: bool = True) -> tuple[bool, str] | None:
        """Have the thread carry out `name` ("enable", "stop", "shutdown", "recover"); its (ok, message), or None
        when not done within `timeout` s. A late request is cancelled (`cancel_late`) so that it never takes
        effect after its caller was told it failed."""
        done, result, cancelled = threading.Event(), [], threading.Event()
        self.requests.put((name, done, result, cancelled))
        if done.wait(timeout=timeout):
            return result[0], result[1]
        if cancel_late:
            cancelled.set()
        return None

    def _enable(self) -> tuple[bool, str]:
        result = self.loop.enable()
        self._pacer.reset()
        return result

    def _serve_requests(self) -> None:
        while True:
            try:
                name, done, result, cancelled = self.requests.get_nowait()
            except queue.Empty:
                return
            if cancelled.is_set():
                continue
            try:
                if name == "enable":
                    result.extend(self._enable())
                elif name == "stop":
                    result.extend(self.loop.stop("stopped by ~/stop"))
                elif name == "shutdown":
                    result.extend(self.loop.stop("stopped: node shutting down"))
                else:
                    result.extend(self.loop.recover())
            except Exception as err:  # the caller hears why now; the run loop's handler deals with the fault
                result[:] = [False, f"{name} failed: {type(err).__name__}: {err}"]
                raise
            finally:
                done.set()

    def _adopt_connection(self) -> bool:
        """Take over a robot the connector opened (False while none is ready)."""
        try:
            robot, gripper, text = self.connections.get_nowait()
        except queue.Empty:
            return False
        loop = self.loop
        if robot is None:
            loop.franky_error = text
            loop.core.deactivate(text, error=True)
            if text != self._last_connect_error:  # retried every few seconds: say it once
                self.logger.error(text)
            self._last_connect_error = text
            return False
        self._last_connect_error = ""
        if text:
            self.gripper_error = text
            self.logger.error(text)
        loop.attach(robot, gripper)
        if self.connected_before:  # the robot was lost (a fault): whatever came back needs ~/recover
            loop.core.deactivate(f"reconnected to {self.robot_ip} after losing it ({loop.franky_error}): "
                                 "call ~/recover", error=True)
            self.logger.warning(f"reconnected to {self.robot_ip}: staying in ERROR until ~/recover")
            return True
        loop.franky_error = ""
        loop.core.deactivate("connected; call ~/enable")
        self.logger.info(f"connected to {self.robot_ip}")
        self.connected_before = True
        if self.enable_on_start:
            ok, message = self._enable()
            self.logger.info(f"enable_on_start: {message}")
        return True

    def _run(self) -> None:
        loop, next_connect = self.loop, 0.0
        while self._running:
            self.beat, loop.busy = time.monotonic(), ""
            try:
                loop.busy = "a service request"
                self._serve_requests()
                if loop.robot is None:
                    if not self._adopt_connection():
                        if time.monotonic() >= next_connect and self.connections.empty():
                            self.want_connection.set()
                            next_connect = time.monotonic() + RECONNECT_EVERY
                        time.sleep(0.05)
                    continue
                if loop.tracker is None:
                    try:
                        loop.idle()
                    except Exception as err:  # connection lost while not tracking: reconnect later
                        loop.detach(f"lost connection to {self.robot_ip}: {err}")
                        next_connect = time.monotonic() + RECONNECT_EVERY
                    time.sleep(0.02)
                    continue
                loop.busy = ""
                self._pacer.wait()
                self.beat = time.monotonic()
                loop.tick()
            except Exception as err:  # a franky call failed outside a motion: never leave tracking unattended
                self.logger.error(f"control loop: {err}")
                if loop.tracker is not None:
                    loop.fault(str(err))
                time.sleep(0.05)
