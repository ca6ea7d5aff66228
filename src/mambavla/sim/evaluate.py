"""Closed-loop evaluation in the simulated workcell, through the robot's control path and in simulated time.

    policy (PolicyRuntime) -> ActionChunk -> ControllerCore (safety checks, blending, rate limits; the
    limits of config/controller.yaml + controller_sim.yaml) -> franky.CartesianImpedanceTracker
    (+ franky.Gripper) -> franky-sim (Workcell)

through the control loop `controller_node` runs (`mambavla.control.loop.ControlLoop`), without ROS. The
policy is separated from the host: the loop's clock is the simulated clock, and the simulator waits for the
policy (lockstep). Physics is held at every control tick (1 / rate_hz of simulated time) and at every
observation (every `policy_period`); an observation is rendered from the held snapshot, the chunk is stamped
with the snapshot's time and submitted before physics moves on, so a chunk arrives with zero simulated latency
however long the host takes to infer. `latency` emulates a fixed inference time in simulated seconds instead: the
chunk is submitted that much later while the arm keeps executing the previous one.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from mambavla.control import ControllerState
from mambavla.control.config import SIM_PARAM_FILES, TrackingParams, controller_core, load_params
from mambavla.control.gripper import GripperWorker
from mambavla.control.loop import ControlLoop, SteppedClock
from mambavla.realtime import keep_thread_scheduling
from mambavla.sim.config import WorkcellConfig
from mambavla.sim.stats import percentiles, wilson_interval
from mambavla.sim.tasks import EVAL_SEED_BASE, WORDINGS, held_out_instruction
from mambavla.sim.workcell import HALF_STEP, OPEN_WIDTH, Snapshot, Workcell

# one row per control tick: simulated s; the controller's target, the measured hand (franky's end-effector
# point) and the named cube's centre, metres in the base frame; the finger width (m); the hand commanded closed (0/1)
TRACE_COLUMNS = ("t", "target_x", "target_y", "target_z", "hand_x", "hand_y", "hand_z", "cube_x", "cube_y", "cube_z",
                 "finger_width", "closed")


@dataclass
class EpisodeResult:
    task: str
    seed: int
    instruction: str = ""
    conditioned_on: str = ""  # the instruction the policy was conditioned on (the runtime's snap of `instruction`)
    success: bool = False
    end: str = ""  # success, timeout, controller STOPPED/ERROR: reason, error, refused (the instruction)
    sim_seconds: float = 0.0
    wall_seconds: float = 0.0
    chunks_produced: int = 0
    chunks_accepted: int = 0
    chunks_rejected: int = 0
    rejections_by_kind: dict[str, int] = field(default_factory=dict)
    rows_clamped: int = 0  # chunk rows the controller moved onto the workspace box
    inference_ms: list[float] = field(default_factory=list)  # wall time of each policy step
    controller_states: dict[str, int] = field(default_factory=dict)  # control ticks spent in each state
    observation_stamps: list[float] = field(default_factory=list)  # simulated time of each observation
    submit_delays: list[float] = field(default_factory=list)  # simulated s from observation to submission
    gripper_commands: int = 0  # each one lets physics run freely for the call (a few ms of simulated time)
    cube: str = ""  # the cube the instruction names
    closest: dict[str, float] = field(default_factory=dict)  # cube -> closest the hand came to it (m), at observations
    error: str = ""
    frames: list[np.ndarray] = field(default_factory=list, repr=False)  # front | wrist, for the GIF
    trace: list[tuple] = field(default_factory=list, repr=False)  # per control tick, TRACE_COLUMNS (with trace=True)

    def as_dict(self) -> dict:
        return {
            "task": self.task, "seed": self.seed, "instruction": self.instruction,
            "conditioned_on": self.conditioned_on, "success": self.success,
            "end": self.end,
            "sim_seconds": round(self.sim_seconds, 3), "wall_seconds": round(self.wall_seconds, 3),
            "chunks_produced": self.chunks_produced, "chunks_accepted": self.chunks_accepted,
            "chunks_rejected": self.chunks_rejected, "rejections_by_kind": dict(self.rejections_by_kind),
            "rows_clamped": self.rows_clamped, "controller_states": dict(self.controller_states),
            "gripper_commands": self.gripper_commands, "cube": self.cube, "approached_cube": self.approached_cube,
            "closest_m": {c: round(d, 4) for c, d in self.closest.items()}, "error": self.error,
        }

    @classmethod
    def from_dict(cls, d: dict) -> EpisodeResult:
        """The inverse of `as_dict` (an `episodes.jsonl` line); what it does not keep (frames, per-step
        timings) stays empty."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known}, closest=dict(d.get("closest_m", {})))

    @property
    def approached_cube(self) -> str | None:
        """The cube the hand came closest to: which one the policy went for, whether or not it got the task
        done (a policy that goes for the wrong cube has not read the instruction; one that reaches the right
        cube and fails, has failed at the motion)."""
        return min(self.closest, key=self.closest.get) if self.closest else None


class SimEvaluator:
    """Runs episodes on one started workcell with one franky connection (server and connection re-made after
    an episode's error)."""

    def __init__(self, cell: Workcell, runtime, param_files: tuple[str, ...] = SIM_PARAM_FILES,
                 latency: float = 0.0, time_limit: float | None = None, trace: bool = False,
                 param_overrides: dict | None = None, wordings: str = "trained"):
        if wordings not in WORDINGS:
            raise ValueError(f"wordings must be one of {', '.join(WORDINGS)}, got {wordings!r}")
        self.wordings = wordings  # held-out: the task in a wording no training episode has (HELD_OUT_PARAPHRASES)
        if latency < 0:
            raise ValueError(f"--latency must be >= 0 s, got {latency}")
        self.cell, self.runtime = cell, runtime
        self.params = {**load_params(param_files), **(param_overrides or {})}  # overrides: as a later parameter file
        self.tracking = TrackingParams.from_params(self.params)
        controller_core(self.params)  # bad limits fail here, before any episode
        self.latency = float(latency)
        self.trace = trace  # fill EpisodeResult.trace
        self.time_limit = float(time_limit if time_limit is not None else cell.config.episode_timeout)
        if not self.time_limit > 0:
            raise ValueError(f"time limit must be > 0 s, got {self.time_limit}")
        self.robot = None
        self.gripper: GripperWorker | None = None  # synchronous: lockstep decides when physics runs
        self._abandoned_grippers: list = []  # kept alive: see _reconnect
        self.connect()

    # ---- franky connection ----

    def connect(self) -> None:
        """Connect franky's Robot (and Gripper) to the workcell: at start, and again after `close()`. Refused while
        connected: franky-sim takes one gripper connection at a time, and a second one waits for good."""
        import franky

        if self.robot is not None:
            raise RuntimeError("SimEvaluator.connect: already connected (close() first)")

        with keep_thread_scheduling():  # franky would make this thread SCHED_FIFO 99
            self.robot = franky.Robot(self.cell.robot_ip, realtime_config=franky.RealtimeConfig.Ignore)
            hand = franky.Gripper(self.cell.robot_ip) if self.tracking.gripper else None
        if hand is not None:
            self.gripper = GripperWorker(hand, self.tracking.gripper_speed, self.tracking.gripper_force, OPEN_WIDTH,
                                         open_delay=self.tracking.gripper_open_delay, threaded=False,
                                         before_send=self.cell.release)

    def close(self) -> None:
        """Let go of franky before the workcell's server stops: stopping the server under a live Robot and
        Gripper can crash inside libfranka as a run ends, after its episodes were logged and before eval.json."""
        try:
            if self.gripper is not None:
                self.gripper.finish()
        except RuntimeError as err:  # a hand that never settled: dropping the Gripper is all that is left to do
            print(f"eval-sim: closing with the last gripper command unfinished: {err}", file=sys.stderr)
        self.robot = self.gripper = None  # CPython frees them here, while the server still answers

    def _reconnect(self) -> None:
        """After an episode's error: a fresh simulation server, then a fresh connection. Reconnecting to the
        same server could wait for good: franky-sim takes one gripper connection at a time, and an abandoned
        Gripper with an unfinished command keeps it (and blocks the Gripper constructor)."""
        self.cell.release()
        if self.gripper is not None and self.gripper.pending:  # its Gripper would block in its destructor
            self._abandoned_grippers.append(self.gripper)
        self.robot = self.gripper = None
        self.cell.stop()
        self.cell.start()  # the next reset() sets the episode's layout
        self.connect()
        if self.robot.has_errors:
            self.robot.recover_from_errors()

    # ---- one episode ----

    def run_episode(self, task: str, seed: int, keep_frames: bool = False) -> EpisodeResult:
        result = EpisodeResult(task, seed)
        wall0 = time.perf_counter()
        core = controller_core(self.params)
        clock = SteppedClock()
        loop = ControlLoop(core, self.tracking, clock, before_blocking=self.cell.release)
        try:
            self.cell.release()
            spec = self.cell.reset(seed=seed, task=task)  # the arm is idle: the last tracker was stopped
            text = spec.instruction if self.wordings == "trained" else held_out_instruction(spec, seed)
            result.instruction, result.cube = text, spec.cube
            try:
                self.runtime.set_instruction(text)  # also forgets the history
                result.conditioned_on = getattr(self.runtime, "conditioned_on", None) or text
            except ValueError as err:  # refused (the checkpoint's gate): the arm never moves, franky is fine
                result.success, result.end, result.error = False, "refused", str(err)
                result.wall_seconds = time.perf_counter() - wall0
                return result
            if self.gripper is not None:
                self.gripper.reset(closed=False)  # the reset opened the hand
            clock.t = self.cell.sim_time
            loop.attach(self.robot, self.gripper)
            ok, message = loop.start_tracking()
            if not ok:
                raise RuntimeError(message)
            try:
                self._drive(loop, clock, result, keep_frames)
            finally:
                ok, message = loop.stop("episode over")  # brings the arm to rest so the next reset may teleport it
            if not ok:
                raise RuntimeError(message)
        except Exception as err:  # franky raises several types; one episode fails, the run goes on
            result.success, result.end, result.error = False, "error", f"{type(err).__name__}: {err}"
            try:
                self._reconnect()
            except Exception as again:
                raise RuntimeError(f"episode {task} seed {seed} failed ({result.error}) and reconnecting failed: "
                                   f"{again}") from again
        status = core.status()
        result.chunks_accepted, result.chunks_rejected = status["chunks_accepted"], status["chunks_rejected"]
        result.rejections_by_kind, result.rows_clamped = status["rejections_by_kind"], status["rows_clamped"]
        result.wall_seconds = time.perf_counter() - wall0
        return result

    def _drive(self, loop: ControlLoop, clock: SteppedClock, result: EpisodeResult, keep_frames: bool) -> None:
        """Run the control loop in simulated time, one event (tick, observation, submission) per hold."""
        cell, runtime, core = self.cell, self.runtime, loop.core
        tick, period = 1.0 / self.tracking.rate_hz, runtime.policy_period
        obs_stride = observation_stride(self.latency, period)
        snap = cell.hold_at(cell.sim_time)
        clock.t = t0 = snap.time
        loop.activate()
        sent0 = self.gripper.commands_sent if self.gripper is not None else 0
        n_tick = n_obs = 0
        pending: deque = deque()  # (simulated submission time, chunk)
        states: Counter = Counter()
        while True:
            clock.t = now = snap.time
            loop.read_state()  # at every event: delta chunks look the pose up at their observation time
            hand = loop.snapshot.position
            if snap.success:
                result.success, result.end = True, "success"
                break
            if now - t0 >= self.time_limit - HALF_STEP:
                result.end = "timeout"
                break
            if now >= t0 + n_obs * period - HALF_STEP:
                pending.append((now + self.latency, self._observe(snap, result, keep_frames)))
                n_obs += obs_stride
            while pending and now >= pending[0][0] - HALF_STEP:
                due, chunk = pending.popleft()
                result.submit_delays.append(now - chunk.stamp)
                core.submit(chunk, now)  # a rejection is counted by the core, by kind
            if now >= t0 + n_tick * tick - HALF_STEP:
                target = loop.tick()
                n_tick += 1
                if loop.tick_state is None:  # franky no longer in control
                    raise RuntimeError(f"franky: {loop.franky_error}")
                states[loop.tick_state.value] += 1
                if target is None:
                    result.end = f"controller {loop.tick_state.value}: {core.reason}"
                    break
                if self.trace:
                    scene = cell.scene_state(snap)
                    closed = float(self.gripper is not None and self.gripper.closed)
                    result.trace.append((now, *target.position, *hand,
                                         *scene.cube_pos[result.cube], scene.finger_width, closed))
            upcoming = [t0 + n_tick * tick, t0 + n_obs * period] + ([pending[0][0]] if pending else [])
            snap = cell.hold_at(min(upcoming))
        result.sim_seconds = snap.time - t0
        result.controller_states = dict(states)
        result.gripper_commands = (self.gripper.commands_sent if self.gripper is not None else 0) - sent0
        if core.state == ControllerState.ERROR and not result.end.startswith("controller"):
            result.end = f"controller ERROR: {core.reason}"

    def _observe(self, snap: Snapshot, result: EpisodeResult, keep_frames: bool):
        import cv2

        from mambavla.data.images import resize_depth

        runtime = self.runtime
        cameras = self.cell.camera_names if keep_frames else runtime.camera_names
        depth = {}
        if runtime.config.use_depth:  # an RGB-D policy: the cameras' aligned depth, as sim_node publishes it
            images, depth = self.cell.render_rgbd(cameras=cameras, snap=snap)
        else:
            images = self.cell.render(cameras=cameras, snap=snap)
        h, w = runtime.image_size
        policy_images = {c: images[c] if images[c].shape[:2] == (h, w)
                         else cv2.resize(images[c], (w, h), interpolation=cv2.INTER_AREA)
                         for c in runtime.camera_names}
        robot = self.cell.robot_state(snap)
        proprio = robot.proprio  # the recorded episodes' proprio, at the snapshot
        for cube, pos in self.cell.scene_state(snap).cube_pos.items():
            d = float(np.linalg.norm(np.asarray(pos) - robot.ee_position))
            result.closest[cube] = min(d, result.closest.get(cube, math.inf))
        start = time.perf_counter()
        observation = {"images": policy_images, "proprio": proprio, "stamp": snap.time}
        if depth:  # at the colour frames' size, as they are given
            observation["depth"] = {c: resize_depth(depth[c], (h, w)) for c in runtime.camera_names}
        chunk = runtime.step(observation)
        result.inference_ms.append((time.perf_counter() - start) * 1e3)
        result.chunks_produced += 1
        result.observation_stamps.append(snap.time)
        if keep_frames:
            result.frames.append(np.concatenate([images[c] for c in cameras], axis=1))
        return chunk


def write_trace(result: EpisodeResult, folder: Path) -> tuple[Path, Path]:
    """An episode's trace as `<task>_<seed>.npz` (one array per TRACE_COLUMNS name) and its plot `<task>_<seed>.png`."""
    from mambavla.sim.eval_media import trace_plot

    rows = np.asarray(result.trace, dtype=np.float64).reshape(-1, len(TRACE_COLUMNS))
    stem = folder / f"{result.task}_{result.seed}"
    np.savez_compressed(stem.with_suffix(".npz"), **{name: rows[:, i] for i, name in enumerate(TRACE_COLUMNS)})
    outcome = "success" if result.success else result.end
    return stem.with_suffix(".npz"), trace_plot(rows, TRACE_COLUMNS, stem.with_suffix(".png"),
                                                f"{result.task} {result.seed}: {result.instruction!r}, {outcome}")


def observation_stride(latency: float, period: float) -> int:
    """Observations stay on the policy's grid, skipping those that fall inside an emulated inference."""
    return max(1, math.ceil(latency / period - 1e-9))


# ---- the run and its summary ----


def episode_seeds(episodes: int, first: int = 0) -> list[int]:
    """Held-out seeds first .. first + episodes - 1 of the evaluation range."""
    if episodes < 1:
        raise ValueError("--episodes must be at least 1")
    if first < 0:
        raise ValueError("--seed must be >= 0 (an offset into the held-out seeds)")
    return list(range(EVAL_SEED_BASE + first, EVAL_SEED_BASE + first + episodes))


def evaluate(runtime, tasks: tuple[str, ...], episodes: int, seed: int = 0, latency: float = 0.0,
             time_limit: float | None = None, gif_episodes: int = 1, speed: float = 1.0, progress: bool = True,
             cell: Workcell | None = None, episode_log: str | Path | None = None,
             trace_dir: str | Path | None = None,
             param_overrides: dict | None = None,
             config: WorkcellConfig | None = None,
             wordings: str = "trained") -> tuple[dict, dict[str, list[EpisodeResult]]]:
    """Evaluate on `episodes` held-out seeds per task. Returns (summary, results per task).

    `cell`: an already started workcell to use (tests); otherwise one is started and stopped here.
    `episode_log`: a JSON-lines file that gets each episode's result as soon as it ends (a run that
    hangs or dies in franky's native code later keeps what it measured; see docs/evaluation.md).
    `trace_dir`: a folder that gets each episode's per-tick trace (`TRACE_COLUMNS`) as `<task>_<seed>.npz`
    and its plot as `<task>_<seed>.png` as soon as it ends.
    `param_overrides`: controller parameters that replace those of the parameter files.
    `config`: the workcell to start (`sim.config.CELLS`); ignored when `cell` is given.
    `wordings`: "trained" (each seed's own instruction) or "held-out" (the same task in a wording kept out of
    training)."""
    from tqdm import tqdm

    from mambavla.sim.tasks import TASK_FAMILIES

    unknown = [t for t in tasks if t not in TASK_FAMILIES]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; choose from {', '.join(TASK_FAMILIES)}")
    seeds = episode_seeds(episodes, seed)
    own = None if cell is not None else Workcell(task=tasks[0], seed=seeds[0], speed=speed, config=config)
    if own is not None:
        cell = own.start()
    evaluator = None
    try:
        evaluator = SimEvaluator(cell, runtime, latency=latency, time_limit=time_limit, trace=trace_dir is not None,
                                 param_overrides=param_overrides, wordings=wordings)
        if trace_dir is not None:
            Path(trace_dir).mkdir(parents=True, exist_ok=True)
        results: dict[str, list[EpisodeResult]] = {t: [] for t in tasks}
        wall0, sim_total, keepalive0 = time.perf_counter(), 0.0, cell.keepalive_steps
        bar = tqdm(total=len(tasks) * len(seeds), desc="eval-sim", unit="episode", disable=not progress)
        for task in tasks:
            for i, s in enumerate(seeds):
                r = evaluator.run_episode(task, s, keep_frames=i < gif_episodes)
                results[task].append(r)
                if episode_log is not None:
                    with open(episode_log, "a") as log:
                        log.write(json.dumps(r.as_dict()) + "\n")
                if trace_dir is not None:
                    write_trace(r, Path(trace_dir))
                sim_total += r.sim_seconds
                done = results[task]
                bar.set_postfix(task=task, success=f"{sum(x.success for x in done)}/{len(done)}")
                bar.update()
        bar.close()
        wall = time.perf_counter() - wall0
        summary = summarize(results)
        summary.update({
            "seeds": [seeds[0], seeds[-1]], "wordings": wordings, "latency_s": latency, "lockstep": True,
            "policy_period_s": runtime.policy_period, "noise_scale": runtime.noise_scale,
            "control_rate_hz": evaluator.tracking.rate_hz,
            "gripper_open_delay_s": evaluator.tracking.gripper_open_delay,
            "time_limit_s": evaluator.time_limit, "wall_seconds": round(wall, 2), "sim_seconds": round(sim_total, 3),
            "sim_real_factor": round(sim_total / wall, 3) if wall > 0 else None,
            "keepalive_steps": cell.keepalive_steps - keepalive0,
        })
    finally:
        if evaluator is not None:
            evaluator.close()
        if own is not None:
            own.stop()
    return summary, results


def summarize(results: dict[str, list[EpisodeResult]]) -> dict:
    tasks = {}
    for task, rs in results.items():
        n, k = len(rs), sum(r.success for r in rs)
        lo, hi = wilson_interval(k, n)
        success_times = [r.sim_seconds for r in rs if r.success]
        rejections: Counter = Counter()
        states: Counter = Counter()
        for r in rs:
            rejections.update(r.rejections_by_kind)
            states.update(r.controller_states)
        tasks[task] = {
            "success_rate": k / n, "ci95": [round(lo, 4), round(hi, 4)], "episodes": n, "successes": k,
            "mean_success_sim_seconds": round(float(np.mean(success_times)), 3) if success_times else None,
            "mean_episode_sim_seconds": round(float(np.mean([r.sim_seconds for r in rs])), 3),
            "mean_episode_wall_seconds": round(float(np.mean([r.wall_seconds for r in rs])), 3),
            "chunks_produced": sum(r.chunks_produced for r in rs),
            "chunks_accepted": sum(r.chunks_accepted for r in rs),
            "chunks_rejected": sum(r.chunks_rejected for r in rs),
            "rejections_by_kind": dict(rejections),
            "rows_clamped": sum(r.rows_clamped for r in rs),
            "inference_ms": percentiles([v for r in rs for v in r.inference_ms]),
            "controller_states": dict(states),
            "ends": dict(Counter(r.end.split(":")[0] for r in rs)),
            # episodes in which the hand came closest to the cube the instruction names
            "approached_named_cube_rate": round(float(np.mean([r.approached_cube == r.cube for r in rs])), 4),
            "errors": [f"seed {r.seed}: {r.error}" for r in rs if r.error],
            "episodes_detail": [r.as_dict() for r in rs],
        }
    return {
        "tasks": tasks,
        "mean_success_rate": float(np.mean([t["success_rate"] for t in tasks.values()])),
        "inference_ms": percentiles([v for rs in results.values() for r in rs for v in r.inference_ms]),
    }


def merge_runs(folders: list[str | Path]) -> dict:
    """One summary (eval-sim's layout) from runs made in chunks, read from each run's `episodes.jsonl`, in
    order. A seed in two runs is an error, unless the earlier episode ended in an error (a franky fault of
    the host, not the policy): the later run replaces it, and `replaced_errors` says so. Inference latency
    is not in `episodes.jsonl`; `runs` keeps each run's own from its eval.json, where it wrote one."""
    episodes: dict[tuple[str, int], EpisodeResult] = {}
    replaced = []
    for folder in map(Path, folders):
        for line in (folder / "episodes.jsonl").read_text().splitlines():
            r = EpisodeResult.from_dict(json.loads(line))
            earlier = episodes.get((r.task, r.seed))
            if earlier is not None and earlier.end != "error":
                raise ValueError(f"{folder}: {r.task} seed {r.seed} is in an earlier run too")
            if earlier is not None:
                replaced.append(f"{r.task} seed {r.seed}: {earlier.error}")
            episodes[(r.task, r.seed)] = r
    by_task: dict[str, list[EpisodeResult]] = {}
    for (task, _), r in sorted(episodes.items()):
        by_task.setdefault(task, []).append(r)
    summary = summarize(by_task)
    for task in summary["tasks"].values():
        task.pop("inference_ms")
    summary["replaced_errors"] = replaced
    summary["runs"] = {}
    for folder in map(Path, folders):
        run = json.loads((folder / "eval.json").read_text()) if (folder / "eval.json").is_file() else {}
        # with the settings each chunk ran under (None: the run predates the setting, or wrote no eval.json)
        keys = ("checkpoint", "backend", "dtype", "device", "cell", "wordings", "seeds", "latency_s", "noise_scale",
                "gripper_open_delay_s", "inference_ms", "wall_seconds")
        summary["runs"][str(folder)] = {k: run.get(k) for k in keys}
    for key in ("cell", "wordings"):  # runs in another cell or with other wordings measure something else
        values = {str(f): r[key] for f, r in summary["runs"].items() if r[key] is not None}
        if len(set(values.values())) > 1:
            raise ValueError(f"the runs differ in {key}: {values}; merge runs of one {key} only")
    return summary
