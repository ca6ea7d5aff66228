"""When policy_node infers and on which observation, without ROS: replay and the node share it.

`ObservationBuffer` keeps the latest frame per camera and short histories of the end-effector pose and
finger positions, and pairs frames with the robot state at their stamp. `InferenceSchedule` adds the
node's `infer_mode` on top: when a step is due and which frames are recent enough for it.
Choosing an observation (`choose`, which only forgets frames older than `max_observation_age`) is
separate from consuming it (`consume`, which marks the frames used and advances the schedule).

Times are seconds on one clock: the node's ROS clock, or the bag's clock in offline replay. Not
thread-safe: the caller holds its lock around every call. One use, as policy_node's worker does:

    schedule = InferenceSchedule(ScheduleConfig(n_cameras=2, policy_period=0.2, chunk_duration=0.8))
    schedule.buffer.add_frame(camera, Frame(rgb, stamp, receipt)); schedule.buffer.add_pose(...); ...
    if schedule.due(now) and not isinstance(obs := schedule.choose(now), str):
        schedule.consume(obs, now); chunk = runtime.step(...); schedule.chunk_published(chunk.stamp)
    schedule.restart()   # a new instruction

policy_node builds its `ObservationBuffer` first (robot state arrives while the policy loads) and hands it
to the `InferenceSchedule` it builds once the checkpoint's period and chunk are known.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from mambavla.spaces import pose_to_vector, slerp

INFER_MODES = ("period", "consumed", "rate", "frame")


@dataclass(frozen=True)
class Frame:
    rgb: np.ndarray  # uint8 [H, W, 3], already at the policy's size
    stamp: float  # observation time (header stamp), s
    receipt: float  # when the node received it, s
    arrived: float = float("nan")  # the same moment on the node's steady clock (time.perf_counter), s: compute latency


@dataclass(frozen=True)
class Observation:
    images: tuple[np.ndarray, ...]  # per camera, in camera order
    proprio: np.ndarray  # float32 [8]: pose vector at `stamp` + finger positions
    stamp: float  # the oldest frame's stamp: the chunk is stamped with it
    stamps: tuple[float, ...]  # every camera's frame stamp
    receipt: float  # the newest frame's receipt
    arrived: float = float("nan")  # the newest frame's arrival on the steady clock (latency is measured from it)


class ObservationBuffer:
    """Frames per camera plus short histories of the end-effector pose and the finger positions."""

    def __init__(self, n_cameras: int, max_age: float, state_history: float = 2.0, max_state_gap: float = 0.1):
        self.n_cameras = n_cameras
        self.max_age = max_age  # frames and state older than this (relative to now) are not used
        self.state_history = state_history
        self.max_state_gap = max_state_gap  # a frame may be at most this far past the newest state sample
        self.frames: dict[int, Frame] = {}
        self.used: dict[int, float] = {}  # camera -> stamp of the frame last fed to the policy
        self._poses: deque[tuple[float, np.ndarray, np.ndarray]] = deque()
        self._fingers: deque[tuple[float, np.ndarray]] = deque()
        self.frames_dropped = 0

    # ---- input ----

    def add_frame(self, camera: int, frame: Frame) -> None:
        self.frames[camera] = frame

    def add_pose(self, stamp: float, position: np.ndarray, quat: np.ndarray) -> None:
        _append(self._poses, (stamp, position, quat), self.state_history)

    def add_fingers(self, stamp: float, values: np.ndarray) -> None:
        _append(self._fingers, (stamp, values), self.state_history)

    def drop_stale(self, now: float) -> str | None:
        """Forget frames older than `max_age`; the reason when one was dropped."""
        reason = None
        for camera, frame in list(self.frames.items()):
            if now - frame.stamp > self.max_age:
                del self.frames[camera]
                self.frames_dropped += 1
                reason = f"dropped a stale frame of camera {camera} ({now - frame.stamp:.2f} s old)"
        return reason

    def reset(self) -> None:
        """A new instruction: every current frame counts as new again."""
        self.used.clear()

    # ---- choosing ----

    def select(self, now: float, not_before: float = float("-inf"), all_new: bool = False) -> Observation | str:
        """The observation to infer on now, or the reason there is none.

        `not_before`: every frame must be stamped at or after this time. `all_new`: every camera must
        have a frame not used yet (else one new frame is enough)."""
        n = self.n_cameras
        if len(self.frames) < n:
            return f"waiting for cameras ({len(self.frames)}/{n} seen)"
        frames = [self.frames[i] for i in range(n)]
        new = [f.stamp > self.used.get(i, float("-inf")) for i, f in enumerate(frames)]
        if not any(new) or (all_new and not all(new)):
            return "waiting for new frames"
        stamp = min(f.stamp for f in frames)
        if stamp < not_before:
            return f"waiting for frames taken after {not_before:.3f}"
        if now - stamp > self.max_age:
            return f"frames are {now - stamp:.2f} s old"
        pose = self.pose_at(stamp)
        if isinstance(pose, str):
            return pose
        fingers = self.fingers_at(stamp)
        if isinstance(fingers, str):
            return fingers
        proprio = np.concatenate([pose_to_vector(*pose), fingers]).astype(np.float32)
        return Observation(tuple(f.rgb for f in frames), proprio, stamp, tuple(f.stamp for f in frames),
                           max(f.receipt for f in frames), max(f.arrived for f in frames))

    def consume(self, observation: Observation) -> None:
        for camera, stamp in enumerate(observation.stamps):
            self.used[camera] = stamp

    def pose_at(self, t: float) -> tuple[np.ndarray, np.ndarray] | str:
        """End-effector pose at observation time t, interpolated between samples; else the reason."""
        h = self._poses
        if not h:
            return "waiting for robot state (ee_pose)"
        if t < h[0][0]:
            return f"no ee_pose as old as the frames ({h[0][0] - t:.2f} s before the oldest kept)"
        if t > h[-1][0]:
            if t - h[-1][0] > self.max_state_gap:
                return f"ee_pose lags the frames by {t - h[-1][0]:.2f} s"
            return h[-1][1], h[-1][2]
        k = int(np.searchsorted([s[0] for s in h], t, side="right")) - 1
        t0, p0, q0 = h[k]
        if k + 1 >= len(h):
            return p0, q0
        t1, p1, q1 = h[k + 1]
        a = (t - t0) / (t1 - t0) if t1 > t0 else 0.0
        return p0 + a * (p1 - p0), slerp(q0, q1, a)

    def fingers_at(self, t: float) -> np.ndarray | str:
        """Finger positions from the sample nearest to t, if it is within `max_state_gap`."""
        if not self._fingers:
            return "waiting for robot state (finger joint_states)"
        stamp, values = min(self._fingers, key=lambda s: abs(s[0] - t))
        if abs(stamp - t) > self.max_state_gap:
            return f"finger joint_states are {abs(stamp - t):.2f} s from the frames"
        return values


def _append(history: deque, sample: tuple, keep: float) -> None:
    if history and sample[0] < history[-1][0]:
        history.clear()  # a clock stepped back (or a replayed bag restarted): older samples no longer fit
    history.append(sample)
    while history and history[0][0] < sample[0] - keep:
        history.popleft()


class PeriodSchedule:
    """`period` mode: one step per `period` seconds of observation time, so that the frames the policy
    sees are spaced as in training: never closer than `period - tolerance` (a frame a little early
    counts), later only by how far the next frame falls past the due time."""

    def __init__(self, period: float, tolerance: float | None = None):
        if not period > 0:
            raise ValueError(f"policy period must be > 0 s, got {period}")
        self.period = period
        self.tolerance = min(0.01, 0.1 * period) if tolerance is None else tolerance
        self._due: float | None = None

    def not_before(self) -> float:
        return float("-inf") if self._due is None else self._due - self.tolerance

    def consumed(self, stamp: float) -> None:
        """A step ran on frames stamped `stamp`: the next is due one period later."""
        self._due = stamp + self.period

    def reset(self) -> None:
        self._due = None


@dataclass(frozen=True)
class ScheduleConfig:
    n_cameras: int
    policy_period: float  # s of frame time between steps in `period` mode (the checkpoint's policy_period)
    chunk_duration: float  # s: chunk_size * dt, for `consumed` mode
    infer_mode: str = "period"
    consume_fraction: float = 0.5  # `consumed`: the next step once this much of the last chunk is executed
    infer_period: float = 0.2  # s between steps in `rate` mode (the node: 1 / infer_rate_hz)
    max_observation_age: float = 0.5  # s: older frames and robot state are not used

    def __post_init__(self) -> None:
        if self.infer_mode not in INFER_MODES:
            raise ValueError(f"infer_mode must be one of {INFER_MODES}, got {self.infer_mode!r}")
        for name in ("policy_period", "chunk_duration", "infer_period", "max_observation_age"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 s, got {getattr(self, name)}")


class InferenceSchedule:
    """policy_node's `infer_mode` over an `ObservationBuffer`: `due`, `choose`, `consume`.

    `buffer`: one already filling (the node's); by default a new one."""

    def __init__(self, config: ScheduleConfig, buffer: ObservationBuffer | None = None):
        self.config = config
        if buffer is None:
            buffer = ObservationBuffer(config.n_cameras, config.max_observation_age)
        elif (buffer.n_cameras, buffer.max_age) != (config.n_cameras, config.max_observation_age):
            raise ValueError(f"the buffer keeps {buffer.n_cameras} cameras for {buffer.max_age} s; the schedule "
                             f"needs {config.n_cameras} for {config.max_observation_age} s")
        self.buffer = buffer
        self.period = PeriodSchedule(config.policy_period)
        self._last_chunk_stamp: float | None = None
        self._last_infer = float("-inf")

    def not_before(self) -> float:
        """Frames older than this are not worth a step."""
        if self.config.infer_mode == "period":
            return self.period.not_before()
        if self.config.infer_mode == "consumed" and self._last_chunk_stamp is not None:
            return self._last_chunk_stamp + self.config.consume_fraction * self.config.chunk_duration
        return float("-inf")

    def next_due(self, now: float) -> float:
        """The earliest time >= now at which a step may start (frames permitting): only `rate` waits on the clock."""
        if self.config.infer_mode == "rate":
            return max(now, self._last_infer + self.config.infer_period)
        return now

    def due(self, now: float) -> bool:
        return now >= self.next_due(now)

    def choose(self, now: float) -> Observation | str:
        """The observation to infer on now, or the reason there is none (stale frames are forgotten)."""
        dropped = self.buffer.drop_stale(now)
        choice = self.buffer.select(now, self.not_before(), all_new=self.config.infer_mode == "frame")
        return (dropped or choice) if isinstance(choice, str) else choice

    def consume(self, observation: Observation, now: float) -> None:
        """A step starts now on `observation`: its frames are used, the period advances."""
        self.buffer.consume(observation)
        self.period.consumed(observation.stamp)
        self._last_infer = now

    def chunk_published(self, chunk_stamp: float) -> None:
        self._last_chunk_stamp = chunk_stamp

    def restart(self) -> None:
        """A new instruction: every current frame counts as new, the schedule starts over."""
        self.buffer.reset()
        self.period.reset()
        self._last_chunk_stamp = None

    @property
    def frames_dropped(self) -> int:
        return self.buffer.frames_dropped
