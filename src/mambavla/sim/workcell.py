"""The simulated FR3 workcell: franky-sim's MuJoCo FR3 plus table, cubes, plates and cameras, serving
the libfranka protocol on a loopback address so real `franky` drives it unchanged.

    from mambavla.sim import Workcell
    with Workcell(task="lift", seed=0) as cell:          # starts the 1 kHz server thread
        robot = franky.Robot(cell.robot_ip, realtime_config=franky.RealtimeConfig.Ignore)
        gripper = franky.Gripper(cell.robot_ip)
        cell.instruction                                 # "pick up the red cube"
        images = cell.render()                           # {"front": uint8[H,W,3], "wrist": ...}
        state = cell.robot_state()                       # RobotState: ee pose, joints, fingers
        cell.success()                                   # task predicate held long enough
        cell.reset(seed=1, task="place")                 # teleports arm and objects (arm must be idle)

Threads: franky-sim steps physics in its own Python thread at 1 kHz of simulated time. That thread
only copies state (a `Snapshot` of qpos/qvel/mocap every step) and runs the cheap task monitor
every `monitor_dt`; rendering and forward kinematics for observers happen on the caller's thread
from a snapshot, into a separate `MjData`, so `render()` and `robot_state()` are safe from any
thread and never stall the server loop. `start_sampling(dt)` queues one snapshot per `dt` of
simulated time (the policy rate), for recorders that must not miss frames.

`host=None` binds the first free 127.x.y.z address (several workcells can run side by side);
pass "127.0.0.1" to insist on that address. The robot and gripper use libfranka's ports there.
`speed` paces the server: 1 = real time (as a robot), 2 = twice as fast, 0 = as fast as the CPU allows
(franky keeps up; the expert times everything in simulated seconds).

Lockstep (`hold_at(t)` / `release()`): the caller holds physics at a simulated time while it thinks
(evaluation: the simulator waits for the policy). libfranka drops a client that hears nothing for about
1 s, so a hold never blocks the server loop longer than `MAX_HOLD` at a time: after that one 1 ms step
runs (counted in `keepalive_steps`) and the hold resumes.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from mambavla import spaces
from mambavla.sim.config import CUBE_COLOURS, PLATE_COLOURS, WorkcellConfig
from mambavla.sim.scene import ROBOT_PREFIX, build_scene
from mambavla.sim.tasks import Layout, SceneState, TaskMonitor, TaskSpec, sample_episode

OPEN_WIDTH = spaces.FRANKA_MAX_FINGER_WIDTH
# s of wall time the server loop may be held at once (libfranka times out after ~1 s; margin for a loaded CPU)
MAX_HOLD = 0.1
HALF_STEP = 0.5e-3  # s: tolerance when comparing simulated times on the 1 ms step grid


@dataclass(frozen=True)
class Snapshot:
    """Physics state copied in the server thread at simulated `time` (enough to render and to read state)."""

    time: float
    qpos: np.ndarray
    qvel: np.ndarray
    mocap_pos: np.ndarray
    mocap_quat: np.ndarray
    success: bool
    action: np.ndarray | None  # the client's commanded action at that moment, if it set one


@dataclass(frozen=True)
class RobotState:
    time: float
    joint_positions: np.ndarray  # (7,) rad
    joint_velocities: np.ndarray  # (7,) rad/s
    finger_positions: np.ndarray  # (2,) m, each finger
    ee_position: np.ndarray  # (3,) m, base frame (franky's end-effector frame)
    ee_quat: np.ndarray  # (4,) x, y, z, w

    @property
    def finger_width(self) -> float:
        return float(self.finger_positions.sum())

    @property
    def proprio(self) -> np.ndarray:
        """float32[8] in `mambavla.spaces` layout: ee position, ee rotation vector, finger positions."""
        pose = spaces.pose_to_vector(self.ee_position, self.ee_quat)
        return np.concatenate([pose, self.finger_positions]).astype(np.float32)


class Workcell:
    def __init__(
        self,
        task: str = "lift",
        seed: int = 0,
        camera_size: tuple[int, int] | None = None,
        host: str | None = None,
        config: WorkcellConfig | None = None,
        speed: float = 1.0,
    ):
        config = config or WorkcellConfig()
        self.config = replace(config, camera_size=tuple(camera_size)) if camera_size else config
        self.camera_names: tuple[str, ...] = tuple(c.name for c in self.config.cameras)
        self._task, self._seed, self._host = task, seed, host
        self._realtime = 1.0 / speed if speed > 0 else False  # franky-sim sleeps realtime x 1 ms per step
        self.spec, self.layout = sample_episode(task, seed, self.config)
        self.commanded_action: np.ndarray | None = None  # set by a client (the expert) for recording
        self._sim = self._server = self._robot = None
        self._snapshot: Snapshot | None = None
        self._monitor = TaskMonitor(self.spec, self.config)
        self._pending: list[Callable[[], None]] = []
        self._next_monitor = 0.0
        self._sample_queue: queue.Queue | None = None
        self._sample_dt = self.config.policy_dt
        self._next_sample = 0.0
        self._render_lock = threading.Lock()
        self._renderer = None
        self._render_data = None
        self.steps = 0
        self._gate = threading.Condition()
        self._hold_time: float | None = None  # hold physics once simulated time reaches this
        self._held = False
        self.keepalive_steps = 0  # steps let through during a hold so libfranka does not time out

    # Lifecycle.

    def start(self) -> "Workcell":
        import franky_sim
        from franky_sim.mujoco_simulator import MujocoSimulator

        sim = MujocoSimulator()
        sim.init()
        self._robot = sim.add_robot(initial_q=self.layout.home_q, initial_hand_width=OPEN_WIDTH)
        build_scene(sim, self.config)
        candidates = [self._host] if self._host else franky_sim.LocalHostnames()
        self._server = franky_sim.SimulationServer(sim, hostname_candidates=candidates)
        self._server.init()  # binds the ports, compiles the model, starts the simulator
        self._sim = sim
        self._index_model()
        sim.register_pre_step_callback(self._pre_step)
        sim.register_post_step_callback(self._post_step)
        self._apply_layout(self.layout)
        self._post_step(sim)
        self._server.run_async(self._realtime)
        return self

    def stop(self) -> None:
        self.release()
        if self._server is not None:
            self._server.cleanup()
            self._server = None
        if self._sim is not None and not self._sim.is_cleaned_up:
            self._sim.cleanup()
        with self._render_lock:
            if self._renderer is not None:
                self._renderer.close()
                self._renderer = None

    def __enter__(self) -> "Workcell":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def robot_ip(self) -> str:
        """Address to hand to `franky.Robot` and `franky.Gripper`."""
        if self._robot is None or self._robot.hostname is None:
            raise RuntimeError("workcell not started")
        return self._robot.hostname

    @property
    def model(self):
        return self._sim.model

    # Episodes.

    @property
    def instruction(self) -> str:
        return self.spec.instruction

    @property
    def seed(self) -> int:
        return self._seed

    def reset(self, seed: int | None = None, task: str | None = None, timeout: float = 10.0) -> TaskSpec:
        """Start a new episode: sample task and layout from the seed, teleport arm and objects.

        The arm must be idle (no franky motion running); stop the tracker first.
        """
        self._seed = self._seed + 1 if seed is None else seed
        self._task = task or self._task
        spec, layout = sample_episode(self._task, self._seed, self.config)
        done, error = threading.Event(), []

        def apply() -> None:
            try:
                if self._robot.server.current_motion_id != 0:
                    raise RuntimeError("cannot reset while a motion is running; stop the robot first")
                self._apply_layout(layout)
                self.spec, self.layout = spec, layout
                self._monitor = TaskMonitor(spec, self.config)
                self.commanded_action = None
                self._post_step(self._sim)
            except Exception as err:  # handed to the caller's thread
                error.append(err)
            finally:
                done.set()

        self._pending.append(apply)
        if not done.wait(timeout):
            raise TimeoutError("the simulation server did not apply the reset")
        if error:
            raise error[0]
        return spec

    def set_cube_pose(self, colour: str, position, yaw: float = 0.0, timeout: float = 10.0) -> None:
        """Teleport a cube (at rest) — for tests, demos and scripted scenarios."""
        import mujoco

        if colour not in self._cube_qpos:
            raise ValueError(f"no {colour!r} cube; cubes are {', '.join(self._cube_qpos)}")
        done = threading.Event()

        def apply() -> None:
            d, adr, dof = self._sim.data, self._cube_qpos[colour], self._cube_dof[colour]
            d.qpos[adr : adr + 7] = (*position, np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2))
            d.qvel[dof : dof + 6] = 0.0
            mujoco.mj_forward(self._sim.model, d)
            done.set()

        self._pending.append(apply)
        if not done.wait(timeout):
            raise TimeoutError("the simulation server did not apply the cube pose")

    def _apply_layout(self, layout: Layout) -> None:
        import mujoco

        m, d, robot, c = self._sim.model, self._sim.data, self._robot, self.config
        for addr, q in zip(robot._qpos_addrs, layout.home_q):
            d.qpos[addr] = q
        for addr in robot._finger_qpos_addrs:
            d.qpos[addr] = OPEN_WIDTH / 2
        robot.set_hand_goal(OPEN_WIDTH, 0.1, 70.0)
        for colour, (x, y, yaw) in layout.cubes.items():
            adr = self._cube_qpos[colour]
            d.qpos[adr : adr + 7] = (x, y, c.cube_half, np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2))
        for colour, (x, y) in layout.plates.items():
            d.mocap_pos[self._plate_mocap[colour]] = (x, y, c.plate_half_height)
        d.qvel[:] = 0.0
        d.qacc[:] = 0.0
        d.qfrc_applied[:] = 0.0
        mujoco.mj_forward(m, d)
        robot.server._reset_state()  # idle, holding the new joint configuration

    # Server-thread hooks: keep them cheap.

    def _pre_step(self, sim) -> None:
        while self._pending:
            self._pending.pop(0)()
        if self._hold_time is not None:
            self._hold(float(sim.data.time))

    def _hold(self, t: float) -> None:
        with self._gate:
            if self._hold_time is None or t < self._hold_time - HALF_STEP:
                return
            self._held = True
            self._gate.notify_all()
            released = self._gate.wait_for(lambda: self._hold_time is None or t < self._hold_time - HALF_STEP, MAX_HOLD)
            if not released:  # one step now; the next pre-step holds again
                self.keepalive_steps += 1

    # Lockstep.

    def hold_at(self, t: float, timeout: float = 30.0) -> Snapshot:
        """Run physics until simulated time `t`, then hold it there until the next `hold_at` (later) or
        `release()`. Returns the snapshot at the hold (time >= t; == t on the 1 ms grid unless already past)."""
        with self._gate:
            self._hold_time = t
            self._held = False
            self._gate.notify_all()
            if not self._gate.wait_for(lambda: self._held, timeout):
                raise TimeoutError(f"the simulation server did not reach simulated time {t:.3f} s within {timeout} s")
            return self._snapshot

    def release(self) -> None:
        """Let physics run freely again."""
        with self._gate:
            self._hold_time = None
            self._held = False
            self._gate.notify_all()

    def _post_step(self, sim) -> None:
        d = sim.data
        self.steps += 1
        t = float(d.time)
        if t >= self._next_monitor - 1e-9:
            self._monitor.update(self._scene_state_from(d.qpos, d.qvel, d.mocap_pos, t))
            self._next_monitor = t + self.config.monitor_dt
        action = self.commanded_action
        snap = Snapshot(t, d.qpos.copy(), d.qvel.copy(), d.mocap_pos.copy(), d.mocap_quat.copy(),
                        self._monitor.success, None if action is None else np.array(action, dtype=np.float64))
        self._snapshot = snap
        q = self._sample_queue
        if q is not None and t >= self._next_sample - 1e-9:
            q.put(snap)
            self._next_sample += self._sample_dt
            if self._next_sample < t:  # fell behind (e.g. after a reset): no burst of stale samples
                self._next_sample = t + self._sample_dt

    # Observation.

    @property
    def sim_time(self) -> float:
        return self._snapshot.time if self._snapshot else 0.0

    def snapshot(self) -> Snapshot:
        if self._snapshot is None:
            raise RuntimeError("workcell not started")
        return self._snapshot

    def success(self) -> bool:
        """Whether the current episode's task predicate has held for the task's hold time."""
        return self._monitor.success

    def task_state(self) -> dict:
        return {"task": self.spec.family, "instruction": self.instruction, "seed": self._seed,
                "success": self._monitor.success, "success_time": self._monitor.success_time}

    def start_sampling(self, dt: float | None = None) -> queue.Queue:
        """Queue one `Snapshot` per `dt` of simulated time (default: the policy rate), from now on."""
        self._sample_dt = dt or self.config.policy_dt
        q: queue.Queue = queue.Queue()
        self._next_sample = self.sim_time + self._sample_dt
        self._sample_queue = q
        return q

    def stop_sampling(self) -> None:
        self._sample_queue = None

    def scene_state(self, snap: Snapshot | None = None) -> SceneState:
        snap = snap or self.snapshot()
        return self._scene_state_from(snap.qpos, snap.qvel, snap.mocap_pos, snap.time)

    def robot_state(self, snap: Snapshot | None = None) -> RobotState:
        import mujoco

        snap = snap or self.snapshot()
        with self._render_lock:
            d = self._load(snap)
            mujoco.mj_kinematics(self._sim.model, d)
            pos = d.site_xpos[self._tcp_site].copy()
            quat_wxyz = np.empty(4)
            mujoco.mju_mat2Quat(quat_wxyz, d.site_xmat[self._tcp_site])
        q = snap.qpos
        return RobotState(
            time=snap.time,
            joint_positions=q[self._robot._qpos_addrs].copy(),
            joint_velocities=snap.qvel[self._robot._dof_addrs].copy(),
            finger_positions=q[self._robot._finger_qpos_addrs].copy(),
            ee_position=pos,
            ee_quat=np.roll(quat_wxyz, -1),
        )

    def render(self, cameras: tuple[str, ...] | None = None, snap: Snapshot | None = None) -> dict[str, np.ndarray]:
        """RGB images {camera: uint8[H, W, 3]} of a snapshot (default: the latest). Any thread."""
        return self._render(cameras, snap, depth=False)[0]

    def render_rgbd(self, cameras: tuple[str, ...] | None = None,
                    snap: Snapshot | None = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """RGB images and depth aligned to them ({camera: uint16[H, W]} mm along the optical axis, 0 = nothing
        within the camera's far plane), of one snapshot: what an RGB-D camera's aligned depth gives. Any thread."""
        return self._render(cameras, snap, depth=True)

    def _render(self, cameras, snap, depth: bool):
        import mujoco

        from mambavla.data.images import metres_to_mm

        snap = snap or self.snapshot()
        cameras = cameras or self.camera_names
        height, width = self.config.camera_size
        images, depths = {}, {}
        with self._render_lock:
            d = self._load(snap)
            mujoco.mj_forward(self._sim.model, d)
            if self._renderer is None:
                self._renderer = mujoco.Renderer(self._sim.model, height, width)
            far = self._sim.model.stat.extent * self._sim.model.vis.map.zfar
            for name in cameras:
                self._renderer.update_scene(d, camera=name)
                images[name] = self._renderer.render().copy()
                if depth:
                    self._renderer.enable_depth_rendering()
                    try:
                        metres = self._renderer.render()
                    finally:
                        self._renderer.disable_depth_rendering()
                    depths[name] = metres_to_mm(np.where(metres < 0.999 * far, metres, 0.0))
        return images, depths

    # Internals.

    def _index_model(self) -> None:
        # franky-sim's robot keeps its joint addresses in `_qpos_addrs` / `_dof_addrs` /
        # `_finger_qpos_addrs` (no public accessor); the workcell reads them, never writes.
        import mujoco

        m = self._sim.model
        obj = mujoco.mjtObj
        cube_joints = {c: mujoco.mj_name2id(m, obj.mjOBJ_JOINT, f"cube_{c}") for c in CUBE_COLOURS}
        self._cube_qpos = {c: int(m.jnt_qposadr[j]) for c, j in cube_joints.items()}
        self._cube_dof = {c: int(m.jnt_dofadr[j]) for c, j in cube_joints.items()}
        plate_bodies = {c: mujoco.mj_name2id(m, obj.mjOBJ_BODY, f"plate_{c}") for c in PLATE_COLOURS}
        self._plate_mocap = {c: int(m.body_mocapid[b]) for c, b in plate_bodies.items()}
        self._tcp_site = mujoco.mj_name2id(m, obj.mjOBJ_SITE, "tcp")
        for name in self.camera_names:
            if mujoco.mj_name2id(m, obj.mjOBJ_CAMERA, name) < 0:
                raise ValueError(f"camera {name!r} missing from the scene")
        self._render_data = mujoco.MjData(m)
        self.hand_body = mujoco.mj_name2id(m, obj.mjOBJ_BODY, ROBOT_PREFIX + "hand")

    def _load(self, snap: Snapshot):
        d = self._render_data
        d.qpos[:] = snap.qpos
        d.qvel[:] = snap.qvel
        d.mocap_pos[:] = snap.mocap_pos
        d.mocap_quat[:] = snap.mocap_quat
        return d

    def _scene_state_from(self, qpos, qvel, mocap_pos, t: float) -> SceneState:
        c = self.config
        cubes = {k: np.array(qpos[a : a + 3]) for k, a in self._cube_qpos.items()}
        speeds = {k: float(np.linalg.norm(qvel[a : a + 3])) for k, a in self._cube_dof.items()}
        lift = np.array([0.0, 0.0, c.plate_half_height])
        plates = {k: np.array(mocap_pos[i]) + lift for k, i in self._plate_mocap.items()}
        width = float(sum(qpos[a] for a in self._robot._finger_qpos_addrs))
        return SceneState(cubes, plates, width, t, speeds)


def wait_sim_time(cell: Workcell, seconds: float, poll: float = 0.002) -> None:
    """Sleep until `seconds` of simulated time have passed (robust to a slower-than-real-time server)."""
    end = cell.sim_time + seconds
    while cell.sim_time < end:
        time.sleep(poll)
