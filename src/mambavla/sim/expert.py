"""Scripted expert: solves every workcell task through real franky, on the control path the controller
node uses: `franky.CartesianImpedanceTracker` streaming end-effector targets at 100 Hz, and
`franky.Gripper` for the fingers.

A task is a short plan of segments (move, settle, gripper, hold). Moves follow minimum-jerk profiles
timed in *simulated* seconds, so a demonstration is the same whether the server runs at 0.6x or 1x
real time. Waypoints, heights and durations carry small seeded noise so demonstrations differ.
Every tick the expert also writes its commanded action (7-D, `mambavla.spaces` layout) to
`Workcell.commanded_action`, which is what recordings store on `/action`.

With `noise` > 0 (DART: Laskey et al. 2017, "DART: Noise Injection for Robust Imitation Learning") the
tracker is sent the expert's target plus a smooth seeded offset (`TargetNoise`) while the recorded action
stays the expert's own target, so the demonstrations show the arm pulled back from where the noise pushed
it: the states a policy drifts into, labelled with the way back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from mambavla import spaces
from mambavla.sim.config import WorkcellConfig
from mambavla.sim.tasks import Layout, TaskSpec
from mambavla.sim.workcell import OPEN_WIDTH, Workcell

DOWN = np.array([1.0, 0.0, 0.0, 0.0])  # (x, y, z, w): pi about x, gripper pointing down


def down_quat(yaw: float) -> np.ndarray:
    """Gripper pointing down, turned by yaw about the base z axis."""
    return spaces.quat_multiply(np.array([0.0, 0.0, np.sin(yaw / 2), np.cos(yaw / 2)]), DOWN)


def grasp_yaw(cube_yaw: float) -> float:
    """The finger yaw closest to zero that closes on a pair of the cube's faces."""
    return float((cube_yaw + np.pi / 4) % (np.pi / 2) - np.pi / 4)


@dataclass(frozen=True)
class Segment:
    kind: str  # "move", "settle", "grasp", "release", "close", "hold"
    position: np.ndarray | None = None
    yaw: float | None = None
    duration: float = 0.0
    # gain on the DART target noise while this move runs. Halved on descents, 0 in a push's contact: at 0.015 m
    # with the full noise on every move the expert solved 3 of 6 pushes (seeds 5000-07, two runs), with these
    # gains 8 of 8 episodes (seeds 5000-07), then 80 of 80 at 0.015 m and 74 of 80 at 0.025 m
    noise: float = 1.0


def min_jerk(s: float) -> float:
    s = min(max(s, 0.0), 1.0)
    return s**3 * (10 - 15 * s + 6 * s**2)


class TargetNoise:
    """A smooth offset (metres, base frame) for the streamed target: per axis a sum of three sinusoids of
    seeded frequency (0.15-0.8 Hz) and phase, standard deviation `scale` on x and y and half that on z (the
    fingers work close to the table). It fades in while the expert moves and out while it settles, grips
    or holds (first-order, `fade` seconds), so grasps and releases happen where the expert means them;
    `offset(t, gain)` fades towards `gain` instead of 1 for moves that need less."""

    Z_FRACTION = 0.5

    def __init__(self, scale: float, rng: np.random.Generator, fade: float = 0.3):
        self.fade = fade
        self.freq = rng.uniform(0.15, 0.8, (3, 3))  # (component, axis) in Hz
        self.phase = rng.uniform(0.0, 2 * np.pi, (3, 3))
        # three sinusoids of amplitude A have variance 3 A^2 / 2
        self.amplitude = scale * np.sqrt(2.0 / 3.0) * np.array([1.0, 1.0, self.Z_FRACTION])
        self.weight, self._last_t = 0.0, None

    def offset(self, t: float, gain: float) -> np.ndarray:
        dt = 0.0 if self._last_t is None else max(0.0, t - self._last_t)
        self._last_t = t
        self.weight += (gain - self.weight) * min(1.0, dt / self.fade)
        return self.weight * (self.amplitude * np.sin(2 * np.pi * self.freq * t + self.phase)).sum(0)


class ScriptedExpert:
    def __init__(self, cell: Workcell, robot, gripper, config: WorkcellConfig | None = None, noise: float = 0.0):
        self.cell, self.robot, self.gripper = cell, robot, gripper
        self.config = config or cell.config
        if not noise >= 0:  # also NaN: a negative scale would otherwise pass for the clean expert
            raise ValueError(f"DART noise must be >= 0 metres, got {noise}")
        self.noise = noise  # DART target-noise scale in metres (0: the clean expert)

    def plan(self, spec: TaskSpec, layout: Layout, rng: np.random.Generator, start: np.ndarray) -> list[Segment]:
        c = self.config
        jitter = lambda: rng.uniform(-c.waypoint_jitter, c.waypoint_jitter, 3) * np.array([1, 1, 0.5])  # noqa: E731
        x, y, cube_yaw = layout.cubes[spec.cube]
        yaw = grasp_yaw(cube_yaw)
        cube = np.array([x, y, 0.0])
        above = cube + np.array([0, 0, c.approach_height + rng.uniform(0.0, 0.04)]) + jitter()
        grasp = cube + np.array([0, 0, c.grasp_height]) + jitter() * np.array([1, 1, 0])
        carry_z = c.carry_height + rng.uniform(-0.02, 0.03)
        if spec.family.startswith("push"):
            sign = 1.0 if spec.family == "push-left" else -1.0
            back = c.cube_half + 0.032
            start_xy = np.array([x, y - sign * back])
            end_xy = np.array([x, sign * (c.push_y + 0.05 + rng.uniform(0.0, 0.02)) - sign * back])
            z_push = c.cube_half + rng.uniform(-0.002, 0.004)
            pre = np.array([*start_xy, z_push + c.approach_height]) + jitter()
            return [
                Segment("close"),
                self._move(start, pre, yaw, rng),
                self._move(pre, np.array([*start_xy, z_push]), yaw, rng, speed=c.approach_speed, noise=0.5),
                Segment("settle", np.array([*start_xy, z_push]), yaw),
                self._move(np.array([*start_xy, z_push]), np.array([*end_xy, z_push]), yaw, rng,
                           speed=c.approach_speed, noise=0.0),
                Segment("hold", duration=0.3),
                self._move(np.array([*end_xy, z_push]), np.array([*end_xy, z_push + 0.08]), yaw, rng,
                           speed=c.lift_speed),
                Segment("hold", duration=0.4),
            ]
        lifted = np.array([grasp[0], grasp[1], carry_z])
        segments = [
            self._move(start, above, yaw, rng),
            self._move(above, grasp, yaw, rng, speed=c.approach_speed, noise=0.5),
            Segment("settle", grasp, yaw),
            Segment("grasp"),
            self._move(grasp, lifted, yaw, rng, speed=c.lift_speed),
        ]
        if spec.family == "lift":
            return segments + [Segment("hold", duration=c.lift_hold + 0.5)]
        px, py = layout.plates[spec.plate]
        plate_above = np.array([px, py, carry_z]) + jitter()
        put = np.array([px, py, 2 * c.plate_half_height + c.grasp_height + 0.006]) + jitter() * np.array([1, 1, 0])
        return segments + [
            self._move(lifted, plate_above, yaw, rng),
            self._move(plate_above, put, yaw, rng, speed=c.approach_speed, noise=0.5),
            Segment("release"),
            self._move(put, put + np.array([0, 0, 0.08]), yaw, rng, speed=c.lift_speed),
            Segment("hold", duration=c.place_hold + 0.4),
        ]

    def _move(self, a: np.ndarray, b: np.ndarray, yaw: float, rng: np.random.Generator, speed: float | None = None,
              noise: float = 1.0) -> Segment:
        c = self.config
        distance = float(np.linalg.norm(np.asarray(b) - np.asarray(a)))
        peak = speed or c.speed
        # min-jerk peak speed <= peak
        duration = max(0.6, 1.875 * distance / peak) * (1 + rng.uniform(0.0, c.timing_jitter))
        return Segment("move", np.asarray(b, dtype=float), yaw, duration, noise)

    def run(self, seed: int) -> bool:
        """Solve the workcell's current episode; returns the task's success as the workcell sees it."""
        import franky

        c, cell = self.config, self.cell
        rng = np.random.default_rng([seed, 7])
        pose = self.robot.current_pose.end_effector_pose
        position, quat = np.array(pose.translation), np.array(pose.quaternion)
        segments = self.plan(cell.spec, cell.layout, rng, position)
        self._gripper_cmd = 0.0
        # its own stream, so the plan (and the recorded labels' timing) is the clean expert's for this seed
        self._noise = TargetNoise(self.noise, np.random.default_rng([seed, 11])) if self.noise > 0 else None
        self._noise_gain = 0.0  # the running move's Segment.noise; 0 while settling, gripping, holding
        deadline = cell.sim_time + c.episode_timeout
        with franky.CartesianImpedanceTracker(
            self.robot,
            translational_stiffness=c.stiffness,
            rotational_stiffness=c.rotational_stiffness,
            period=c.tracker_period,
        ) as tracker:
            self._tracker = tracker
            self._target = (position, quat)
            for seg in segments:
                if cell.sim_time > deadline:
                    break
                self._execute(seg, deadline)
            # Let the task monitor see the final state held.
            end = min(deadline, cell.sim_time + 1.0)
            while not cell.success() and cell.sim_time < end and tracker.tick():
                self._stream(*self._target)
        return cell.success()

    def _stream(self, position: np.ndarray, quat: np.ndarray) -> None:
        import franky

        self._target = (position, quat)
        sent = np.asarray(position, dtype=float)
        if self._noise is not None:
            sent = sent + self._noise.offset(self.cell.sim_time, self._noise_gain)
        self._tracker.set_target(franky.Affine(sent, np.asarray(quat, dtype=float)))
        self.cell.commanded_action = np.concatenate([spaces.pose_to_vector(position, quat), [self._gripper_cmd]])

    def _hold_until(self, done, deadline: float) -> None:
        while not done() and self.cell.sim_time < deadline and self._tracker.tick():
            self._stream(*self._target)

    def _execute(self, seg: Segment, deadline: float) -> None:
        c, cell = self.config, self.cell
        if seg.kind == "move":
            p0, q0 = self._target
            q1 = down_quat(seg.yaw)
            t0 = cell.sim_time
            self._noise_gain = seg.noise
            while self._tracker.tick():
                s = min_jerk((cell.sim_time - t0) / seg.duration)
                self._stream(p0 + s * (seg.position - p0), _slerp(q0, q1, s))
                if s >= 1.0:
                    break
            self._noise_gain = 0.0
        elif seg.kind == "settle":
            end = min(deadline, cell.sim_time + c.settle_timeout)
            target, tolerance = seg.position, c.settle_tolerance
            self._hold_until(lambda: np.linalg.norm(cell.robot_state().ee_position - target) < tolerance, end)
        elif seg.kind == "hold":
            end = min(deadline, cell.sim_time + seg.duration)
            self._hold_until(lambda: False, end)
        elif seg.kind in ("grasp", "release", "close"):
            self._gripper_cmd = 0.0 if seg.kind == "release" else 1.0
            if seg.kind == "grasp":
                future = self.gripper.grasp_async(0.0, c.gripper_speed, c.grasp_force, 0.08, 0.08)
            elif seg.kind == "close":
                future = self.gripper.move_async(0.0, c.gripper_speed)
            else:
                future = self.gripper.move_async(OPEN_WIDTH, c.gripper_speed)
            end = min(deadline, cell.sim_time + 3.0)
            self._hold_until(lambda: future.wait(0.0), end)
            if seg.kind == "grasp":  # let the grip force build before lifting
                settle = cell.sim_time + 0.2
                self._hold_until(lambda: False, settle)
            if seg.kind == "close":
                return
        else:
            raise ValueError(f"unknown segment {seg.kind!r}")


def _slerp(a: np.ndarray, b: np.ndarray, s: float) -> np.ndarray:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if np.dot(a, b) < 0:
        b = -b
    dot = min(float(np.dot(a, b)), 1.0)
    if dot > 0.9995:
        q = a + s * (b - a)
        return q / np.linalg.norm(q)
    theta = np.arccos(dot)
    return (np.sin((1 - s) * theta) * a + np.sin(s * theta) * b) / np.sin(theta)


def run_expert_episode(cell: Workcell, robot, gripper, seed: int, task: str | None = None, noise: float = 0.0) -> bool:
    """Reset the workcell to `seed` and let the expert solve it (the arm must be idle)."""
    cell.reset(seed=seed, task=task)
    time.sleep(0.01)
    return ScriptedExpert(cell, robot, gripper, noise=noise).run(seed)
