"""The controller's state machine: chunk admission, blending, interpolation, rate limits and watchdog.

States: STOPPED (not tracking; the initial state until enabled), IDLE (tracking, holding the pose it
was enabled at), ACTIVE (executing commands), HOLDING (no fresh command for `hold_after` s: the streamed
target jumps onto the measured pose, so an arm lagging its targets stops where it is instead of
catching up), ERROR (franky reported a fault; needs recovery). After `stop_after` s without a command
`update` asks the caller to stop the arm, which then reports STOPPED.

Two command sources, one at a time (`set_source`): "policy" (action chunks, `submit`) and "teleop" (a twist
stream, `submit_twist`, and a gripper command, `submit_gripper`; `mambavla.control.teleop`). Commands of the
inactive source are rejected and counted. Both feed the same target stream: the workspace box, tilt limit,
speed limits, non-finite rejection and watchdog apply to each. A twist is integrated from the streamed
target each tick and counts as zero once older than `TeleopParams.command_timeout`.

Two clocks: `now` is the ROS clock that chunk stamps and the pose history use; `mono` (monotonic,
defaults to `now`) times the watchdog, so a clock step cannot silence it.

Thread model: `submit` runs on a ROS callback thread, `update` / `record_pose` on the control
thread; a lock makes each call atomic. A chunk is validated outside the lock (only a snapshot of the
state is taken under it), so a flood of chunks cannot hold the control tick up.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from enum import Enum

import numpy as np

from mambavla.control.safety import SafetyLimits, check_rows, rate_limit, tilt
from mambavla.control.teleop import SOURCES, TeleopParams, Twist, check_twist, integrate
from mambavla.control.trajectory import PoseTrajectory, blend, slerp
from mambavla.runtime.chunk import ActionChunk
from mambavla.spaces import ACTION_NAMES, delta_to_absolute, quat_angle_between, vector_to_pose

REJECTION_KINDS = ("internal error", "command source is", "publisher over", "malformed", "action names",
                   "non-finite", "dt", "stale", "future", "past", "no measured pose", "outside workspace", "tilts",
                   "jump", "starts", "controller is", "teleop_max", "frame")
KIND_NAMES = {"tilts": "tilt", "starts": "start offset", "controller is": "not tracking",
              "no measured pose": "no pose history", "past": "all rows past", "command source is": "inactive source",
              "publisher over": "rate limited", "teleop_max": "too fast"}


def rejection_kind(reason: str) -> str:
    """A short category of a rejection reason, for counting."""
    for kind in REJECTION_KINDS:
        if kind in reason:
            return KIND_NAMES.get(kind, kind)
    return "other"


class Rejections:
    """The rejected commands of one input (chunks, or teleoperation): how many, the last reason, a count per kind."""

    def __init__(self):
        self.count, self.last, self.by_kind = 0, "", {}

    def add(self, reason: str) -> str:
        self.count += 1
        self.last = reason
        kind = rejection_kind(reason)
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
        return reason


class ControllerState(str, Enum):
    IDLE = "IDLE"
    ACTIVE = "ACTIVE"
    HOLDING = "HOLDING"
    STOPPED = "STOPPED"
    ERROR = "ERROR"


RUNNING = (ControllerState.IDLE, ControllerState.ACTIVE, ControllerState.HOLDING)


@dataclass(frozen=True)
class ControlTarget:
    position: np.ndarray  # (3,) m
    quat: np.ndarray  # (4,) x, y, z, w
    gripper: float  # 0 open .. 1 closed
    stop: bool = False  # the watchdog asks the caller to stop the arm


class ControllerCore:
    def __init__(
        self,
        limits: SafetyLimits = SafetyLimits(),
        blend_window: float = 0.1,
        hold_after: float = 1.0,
        stop_after: float = 5.0,
        max_tick_dt: float = 0.02,
        action_names: tuple[str, ...] = ACTION_NAMES,
        pose_history: float = 3.0,
        teleop: TeleopParams = TeleopParams(),
        source: str = "policy",
    ):
        if source not in SOURCES:
            raise ValueError(f"command_source must be one of {SOURCES}, got {source!r}")
        if not 0 < hold_after < stop_after:
            raise ValueError(f"need 0 < hold_after < stop_after, got {hold_after}, {stop_after}")
        self.limits = limits
        self.blend_window = blend_window
        self.hold_after = hold_after
        self.stop_after = stop_after
        self.max_tick_dt = max_tick_dt
        self.action_names = tuple(action_names)
        self.pose_history = pose_history
        self._lock = threading.Lock()
        self._history: deque[tuple[float, np.ndarray, np.ndarray]] = deque()
        self.state = ControllerState.STOPPED
        self.reason = "not enabled"
        self.chunks_accepted = 0
        self.rows_clamped = 0  # chunk rows moved onto the workspace box (within workspace_clamp)
        self._chunk_rejections = Rejections()
        self.chunk_id = 0  # id of the chunk being executed (count of accepted chunks)
        self.speed_limited = False
        self._trajectory = None
        self._hold: tuple[np.ndarray, np.ndarray] | None = None
        self._target: tuple[np.ndarray, np.ndarray] | None = None
        self._gripper = 0.0
        self._last_chunk_time: float | None = None
        self._now = 0.0
        self._epoch = 0  # counts activations and deactivations: a chunk validated across one is refused
        self.teleop = teleop
        self.source = source
        self._twist: Twist | None = None
        self._twist_time: float | None = None  # monotonic receipt time of the latest twist
        self.teleop_accepted = 0
        self._teleop_rejections = Rejections()
        self.teleop_limited = ""  # which rule bent the twist at the last tick: "workspace", "tilt" or ""

    # ---- measured state ----

    def record_pose(self, t: float, position: np.ndarray, quat: np.ndarray) -> None:
        with self._lock:
            if self._history and t < self._history[-1][0]:
                self._history.clear()  # the ROS clock stepped back: older samples would unsort the history
            self._history.append((t, np.asarray(position, dtype=np.float64), np.asarray(quat, dtype=np.float64)))
            while self._history and self._history[0][0] < t - self.pose_history:
                self._history.popleft()

    def measured_pose(self) -> tuple[np.ndarray, np.ndarray] | None:
        return (self._history[-1][1], self._history[-1][2]) if self._history else None

    @staticmethod
    def _pose_at(samples: list, t: float) -> tuple[np.ndarray, np.ndarray] | None:
        """Measured pose at time t, interpolated in a copy of the history; None if t is not covered."""
        if not samples or t < samples[0][0] or t > samples[-1][0] + 0.1:
            return None
        k = int(np.searchsorted([s[0] for s in samples], t, side="right")) - 1
        if k + 1 >= len(samples):
            return samples[-1][1], samples[-1][2]
        (t0, p0, q0), (t1, p1, q1) = samples[k], samples[k + 1]
        a = (t - t0) / (t1 - t0) if t1 > t0 else 0.0
        return p0 + a * (p1 - p0), slerp(q0, q1, a)

    # ---- state transitions (called by the node) ----

    def activate(self, now: float, gripper: float = 0.0) -> None:
        """Tracking has started: hold the measured pose until the first chunk."""
        with self._lock:
            pose = self.measured_pose()
            if pose is None:
                raise RuntimeError("activate needs a measured pose first (record_pose)")
            self._hold = pose
            self._target = pose
            self._gripper = gripper
            self._trajectory = None
            self._twist = None
            self._last_chunk_time = None
            self._epoch += 1
            self.state = ControllerState.IDLE
            self.reason = f"enabled, waiting for {self._awaited()}"

    def _awaited(self) -> str:
        return "chunks" if self.source == "policy" else "teleoperation commands"

    def set_source(self, source: str) -> str:
        """Make `source` ("policy" or "teleop") the one command source; the arm holds its target until that
        source sends. Returns what happened."""
        if source not in SOURCES:
            raise ValueError(f"command source must be one of {SOURCES}, got {source!r}")
        with self._lock:
            if source == self.source:
                return f"command source is {source} already"
            previous, self.source = self.source, source
            self._trajectory = None
            self._twist = None
            self._last_chunk_time = None
            self._epoch += 1  # a chunk validated across the switch is refused
            if self.state in RUNNING:
                self._hold = self._target
                self.state = ControllerState.IDLE
                self.reason = f"command source switched from {previous} to {source}, waiting for {self._awaited()}"
            return f"command source {previous} -> {source}"

    def deactivate(self, reason: str, error: bool = False) -> None:
        with self._lock:
            self.state = ControllerState.ERROR if error else ControllerState.STOPPED
            self.reason = reason
            self._trajectory = None
            self._epoch += 1

    def reject(self, reason: str, teleop: bool = False) -> str:
        """Count a rejection found before a command reached the core (malformed or rate-limited message)."""
        with self._lock:
            return self._reject(reason, teleop)

    def _reject(self, reason: str, teleop: bool = False) -> str:
        return (self._teleop_rejections if teleop else self._chunk_rejections).add(reason)

    def _inactive(self, what: str) -> str:
        fix = "~/use_teleop" if self.source == "policy" else "~/use_policy"
        return f"command source is {self.source}: {what} ignored (call {fix} to switch)"

    # ---- teleoperation ----

    def submit_twist(self, linear, angular, now: float, stamp: float | None = None, mono: float | None = None,
                     frame: str = "base") -> str | None:
        """A teleoperation twist (unscaled, as the driver sent it); `stamp` None for an unstamped message.
        Returns the rejection reason, or None when accepted."""
        twist = check_twist(self.teleop, linear, angular, frame)  # pure: no core state, so outside the lock
        with self._lock:
            if self.source != "teleop":
                return self._reject(self._inactive("twist"), teleop=True)
            if self.state not in RUNNING or self._target is None:
                return self._reject(f"controller is {self.state.value} ({self.reason}): twist ignored", teleop=True)
            if isinstance(twist, str):
                return self._reject(twist, teleop=True)
            if stamp is not None:
                if not np.isfinite(stamp):
                    return self._reject(f"non-finite twist stamp {stamp}", teleop=True)
                age = now - stamp
                if age > self.limits.max_chunk_age:
                    return self._reject(f"stale twist: stamped {age:.3f} s ago > max_chunk_age "
                                        f"{self.limits.max_chunk_age} s", teleop=True)
                if -age > self.limits.max_chunk_future:
                    return self._reject(f"twist stamp {-age:.3f} s in the future > max_chunk_future "
                                        f"{self.limits.max_chunk_future} s", teleop=True)
            self._twist = twist
            self._twist_time = now if mono is None else mono
            self._last_chunk_time = self._twist_time
            self.state = ControllerState.ACTIVE
            self.reason = "teleoperated"
            self.teleop_accepted += 1
            return None

    def submit_gripper(self, value: float) -> str | None:
        """A teleoperation gripper command, 0 open .. 1 closed; the rejection reason or None. Taken while STOPPED
        too: with the arm guided by hand (kinesthetic teaching) the controller does not track, the hand still
        obeys (`gripper_command`)."""
        with self._lock:
            if self.source != "teleop":
                return self._reject(self._inactive("gripper command"), teleop=True)
            if not np.isfinite(value):
                return self._reject(f"non-finite gripper command {value}", teleop=True)
            if self.state == ControllerState.ERROR:
                return self._reject(f"controller is ERROR ({self.reason}): gripper command ignored", teleop=True)
            self._gripper = float(np.clip(value, 0.0, 1.0))
            self.teleop_accepted += 1
            return None

    def _teleop_target(self, step_dt: float, mono: float) -> tuple[np.ndarray, np.ndarray]:
        """The target one tick along the twist, bent by the workspace box and the tilt limit."""
        position, quat = self._target
        self.teleop_limited = ""
        if self._twist is None or self._twist_time is None or mono - self._twist_time > self.teleop.command_timeout:
            return position, quat  # the operator let go (or the stream paused): stand still
        moved, turned = integrate(position, quat, self._twist, step_dt)
        # the box stops motion outward on each axis; a target already outside it is not pulled in
        lo = np.minimum(self.limits.workspace_min, position)
        hi = np.maximum(self.limits.workspace_max, position)
        inside = np.clip(moved, lo, hi)
        if np.any(inside != moved):
            self.teleop_limited = "workspace"
        tilted = float(tilt(turned)[0])
        if tilted > self.limits.max_tilt and tilted > float(tilt(quat)[0]):
            turned = quat  # the rotation would tilt the gripper past max_tilt: translate only
            self.teleop_limited = "tilt"
        return inside, turned

    # ---- chunk admission ----

    def submit(self, chunk: ActionChunk, now: float, mono: float | None = None) -> str | None:
        """Validate a chunk and schedule it; returns the rejection reason, or None when accepted."""
        with self._lock:  # a snapshot only: validation runs without the lock
            if self.source != "policy":
                return self._reject(self._inactive("chunk"))
            state, reason, target = self.state, self.reason, self._target
            history, epoch = list(self._history), self._epoch
        result = self._build(chunk, now, state, reason, target, history)
        with self._lock:
            if isinstance(result, str):
                return self._reject(result)
            if self._epoch != epoch or self.state not in RUNNING:  # stopped, re-enabled or switched while validating
                return self._reject(f"controller is {self.state.value} ({self.reason}): chunk ignored")
            if self.state == ControllerState.ACTIVE:
                old = self._trajectory
            else:  # entering from IDLE/HOLDING: fade from the current target, not from an old chunk
                old = PoseTrajectory.constant(now, *self._target, self._gripper)
            trajectory, clamped = result
            self._trajectory = blend(old, trajectory, now, self.blend_window)
            self.rows_clamped += clamped
            self.state = ControllerState.ACTIVE
            self.reason = "executing chunks"
            self._last_chunk_time = now if mono is None else mono
            self.chunks_accepted += 1
            self.chunk_id = self.chunks_accepted
            return None

    def _build(self, chunk: ActionChunk, now: float, state: ControllerState, state_reason: str,
               target: tuple[np.ndarray, np.ndarray] | None, history: list) -> tuple[PoseTrajectory, int] | str:
        """The chunk as a trajectory with how many of its rows were clamped onto the workspace, or why not."""
        if state not in RUNNING or target is None:
            return f"controller is {state.value} ({state_reason}): chunk ignored"
        if tuple(chunk.action_names) != self.action_names:
            return f"action names {list(chunk.action_names)} != expected {list(self.action_names)}"
        actions = np.asarray(chunk.actions, dtype=np.float64)
        if actions.shape[0] == 0:
            return "empty chunk"
        bad = ~np.isfinite(actions)
        if bad.any():
            k, j = (int(i) for i in np.argwhere(bad)[0])
            return f"non-finite value {actions[k, j]} at row {k} ({self.action_names[j]})"
        if not (np.isfinite(chunk.stamp) and np.isfinite(chunk.dt)):
            return f"non-finite stamp {chunk.stamp} or dt {chunk.dt}"
        if len(actions) > 1 and not self.limits.min_chunk_dt <= chunk.dt <= self.limits.max_chunk_dt:
            return f"chunk dt {chunk.dt:.4g} s outside {self.limits.min_chunk_dt}..{self.limits.max_chunk_dt} s"
        age = now - chunk.stamp
        if age > self.limits.max_chunk_age:
            return f"stale chunk: observation {age:.3f} s old > max_chunk_age {self.limits.max_chunk_age} s"
        if -age > self.limits.max_chunk_future:
            return f"chunk stamp {-age:.3f} s in the future > max_chunk_future {self.limits.max_chunk_future} s"
        times = chunk.times().astype(np.float64)
        if len(times) == 1:
            times = np.array([max(now, float(times[0]))])  # a single row is a hold target: valid from now on
        elif times[-1] < now:
            return f"every row is in the past (last row {now - times[-1]:.3f} s ago)"
        if chunk.action_mode == "delta":
            obs = self._pose_at(history, chunk.stamp)
            if obs is None:
                return "delta chunk: no measured pose at the observation time"
            positions, quats = delta_to_absolute(actions[:, :6], *obs)
        else:
            positions, quats = vector_to_pose(actions[:, :6])
        positions, clamped = self.limits.clamp_to_workspace(positions)
        reason = check_rows(self.limits, positions, quats)
        if reason:
            return reason
        trajectory = PoseTrajectory(times, positions, quats, np.clip(actions[:, 6], 0.0, 1.0))
        start = trajectory.sample(now)
        offset = float(np.linalg.norm(start.position - target[0]))
        if offset > self.limits.max_start_offset:
            return (f"chunk starts {offset:.3f} m from the current target > max_start_offset "
                    f"{self.limits.max_start_offset} m")
        angle = float(quat_angle_between(start.quat, target[1]))
        if angle > self.limits.max_start_offset_angle:
            return (f"chunk starts {angle:.3f} rad from the current target orientation > max_start_offset_angle "
                    f"{self.limits.max_start_offset_angle} rad")
        return trajectory, clamped

    # ---- control tick ----

    def update(self, now: float, dt: float, mono: float | None = None) -> ControlTarget | None:
        """One control tick: the next streamed target, or None when not tracking."""
        with self._lock:
            self._now = now
            if self.state not in RUNNING:
                return None
            mono = now if mono is None else mono
            silent = None if self._last_chunk_time is None else mono - self._last_chunk_time
            what = "chunk" if self.source == "policy" else "teleoperation command"
            if self.state == ControllerState.ACTIVE and silent is not None and silent > self.hold_after:
                measured = self.measured_pose()
                self._hold = measured if measured is not None else self._target
                # hold where the arm is, not where it was going: an arm lagging its targets would
                # otherwise keep moving until the rate-limited target walked back to it
                self._target = self._hold
                self._trajectory = None
                self._twist = None
                self.state = ControllerState.HOLDING
                self.reason = f"watchdog: no {what} for {silent:.2f} s > hold_after {self.hold_after} s, holding pose"
            if self.state == ControllerState.HOLDING and silent is not None and silent > self.stop_after:
                self.reason = f"watchdog: no {what} for {silent:.2f} s > stop_after {self.stop_after} s, stopping"
                return ControlTarget(self._target[0], self._target[1], self._gripper, stop=True)
            step_dt = min(max(dt, 0.0), self.max_tick_dt)
            if self.state == ControllerState.ACTIVE and self.source == "teleop":
                desired, gripper = self._teleop_target(step_dt, mono), self._gripper
            elif self.state == ControllerState.ACTIVE:
                sample = self._trajectory.sample(now)
                desired, gripper = (sample.position, sample.quat), sample.gripper
            else:
                desired, gripper = self._hold, self._gripper
            position, quat, self.speed_limited = rate_limit(*self._target, *desired, step_dt, self.limits)
            if not (np.all(np.isfinite(position)) and np.all(np.isfinite(quat))):
                # cannot happen with validated chunks; never stream it if it does
                self.state = ControllerState.ERROR
                self.reason = "internal: non-finite target computed"
                return ControlTarget(self._target[0], self._target[1], self._gripper, stop=True)
            self._target = (position, quat / np.linalg.norm(quat))
            self._gripper = gripper
            return ControlTarget(self._target[0], self._target[1], gripper)

    # ---- reporting ----

    def status(self) -> dict:
        with self._lock:
            seconds_left = 0.0
            if self.state == ControllerState.ACTIVE and self._trajectory is not None:
                seconds_left = max(0.0, self._trajectory.end_time - self._now)
            tracking_error = float("nan")
            measured = self.measured_pose()
            if measured is not None and self._target is not None:
                tracking_error = float(np.linalg.norm(measured[0] - self._target[0]))
            return {
                "state": self.state.value,
                "reason": self.reason,
                "chunk_id": self.chunk_id,
                "seconds_left": seconds_left,
                "tracking_error": tracking_error,
                "chunks_accepted": self.chunks_accepted,
                "chunks_rejected": self._chunk_rejections.count,
                "rows_clamped": self.rows_clamped,
                "last_rejection": self._chunk_rejections.last,
                "rejections_by_kind": dict(self._chunk_rejections.by_kind),
                "speed_limited": self.speed_limited,
                "command_source": self.source,
                "teleop_accepted": self.teleop_accepted,
                "teleop_rejected": self._teleop_rejections.count,
                "teleop_last_rejection": self._teleop_rejections.last,
                "teleop_rejections_by_kind": dict(self._teleop_rejections.by_kind),
                "teleop_limited": self.teleop_limited,
            }

    @property
    def target(self) -> tuple[np.ndarray, np.ndarray] | None:
        return self._target

    @property
    def gripper_command(self) -> float:
        """The gripper command in force (0 open .. 1 closed)."""
        return self._gripper
