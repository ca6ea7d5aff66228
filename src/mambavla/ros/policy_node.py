"""policy_node: cameras + robot state + instruction in, action chunks out, through `PolicyRuntime`.

Callbacks only store messages (the latest frame per camera, still encoded); the worker thread decodes
and resizes frames (`image_transport` raw: sensor_msgs/Image on each camera topic; compressed:
sensor_msgs/CompressedImage JPEG/PNG on `<topic>/compressed`, as image_transport publishes it), chooses
the observation and runs inference. The node holds no model logic: it translates messages to
and from the runtime.

A checkpoint that takes depth (`use_depth` in its config.json, read at start) gets one aligned depth topic per
camera (`depth_topics`, by default realsense-ros's `aligned_depth_to_color/image_raw` beside each camera topic as
remapped; sensor_msgs/Image 16UC1 mm or 32FC1 m, or with `depth_transport` compressedDepth the 16UC1 PNG on
`<topic>/compressedDepth`; of its colour frame's size: other sizes are refused, not resized); each step is fed
the depth frame stamped as each colour frame (`runtime.depth_frames`), and waits while one is missing, saying
which on /diagnostics. Other checkpoints, and presets, subscribe to no depth topic.

A rejected instruction (empty after Unicode normalisation, only zero-width or control characters,
too long, too many tokens) ends the current task: no chunk is published until a valid instruction
arrives, so the controller holds the arm after `hold_after` and stops it after `stop_after`. An
operator who sent a bad instruction never gets an arm still doing the previous task.
"""

from __future__ import annotations

import threading
import time
import unicodedata
from collections import deque

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory

from mambavla.data.images import depth_source_size, depth_to_mm, image_to_rgb, source_size
from mambavla.data.roles import finger_positions
from mambavla.ros.convert import chunk_to_trajectory, pose_from_msg, stamp_to_seconds
from mambavla.ros.diagnostics import ERROR, OK, WARN, diagnostic_array
from mambavla.ros.params import declare, refuse_undeclared
from mambavla.ros.qos import COMMAND_QOS, DIAGNOSTICS_QOS, LATCHED_QOS, SENSOR_QOS, STATE_QOS
from mambavla.ros.startup import run_until_stopped
from mambavla.runtime.depth_frames import DepthFrame, DepthFrames
from mambavla.runtime.policy_config import PolicyNodeConfig, depth_topic_of, parameters, takes_depth
from mambavla.runtime.schedule import Frame, InferenceSchedule, Observation, ObservationBuffer

MIN_DEPTH_VALID = 0.1  # below this share of pixels with a reading, a camera's depth is reported as blind (WARN)


class PolicyNode(Node):
    def __init__(self, **kwargs):
        super().__init__("policy_node", **kwargs)
        # an empty list default (depth_topics) has no element to take its type from
        values = {name: declare(self, name, default, description, item_type=str if default == [] else None)
                  for name, (default, description) in parameters().items()}
        refuse_undeclared(self)  # a misspelt key would otherwise leave its default in force
        self.config = config = PolicyNodeConfig.from_params(values)
        self.checkpoint, self.preset, self.device = config.checkpoint, config.preset, config.device
        self.backend = config.backend
        self.backend_label = self.backend  # until the runtime has loaded (onnx: with its provider)
        self.camera_topics, self.camera_names = list(config.camera_topics), list(config.camera_names)

        self.runtime = None
        self.state = "LOADING"
        self.reason = "loading the policy"
        self._lock = threading.Condition()
        # robot state is kept from the start; the schedule over it needs the checkpoint's period and chunk
        self._observations = ObservationBuffer(len(self.camera_topics), config.max_observation_age)
        self.schedule: InferenceSchedule | None = None
        self._camera_slot: list[int] = []  # topic index -> position in the checkpoint's camera order
        # depth checkpoints: the depth topics (camera topic order), and the frames kept for pairing once loaded
        self.depth_topics: list[str] = []
        self._depth: DepthFrames | None = None
        self._depth_undecoded: dict[int, tuple[Image, float]] = {}  # topic index -> (latest, receipt on the ROS clock)
        self._colour_size: dict[int, tuple[int, int]] = {}  # topic index -> (H, W) of its latest frame as sent
        # topic index -> (latest, receipt on the ROS clock, arrival on the steady clock)
        self._undecoded: dict[int, tuple[Image | CompressedImage, float, float]] = {}
        self._pending_instruction: str | None = None  # "" = a rejected instruction: end the current task
        self.instruction = ""
        self.chunks_published = 0
        self.frames_dropped = 0
        self.waiting_for_depth = False  # a step is due and held for a camera's depth
        # topic index -> the share of pixels with a reading in the latest depth frame. Reported, never refused: a
        # wrist camera closer to the table than its minimum range rightly reads none for a moment
        self.depth_valid: dict[int, float] = {}
        self.inputs_rejected = 0
        self.last_rejection = ""
        # the node's own times run on the steady clock: under use_sim_time the ROS clock is the simulator's,
        # which may not move at all while a step runs (a simulation slower than the node)
        self.latencies_ms: deque[float] = deque(maxlen=500)  # frame receipt -> chunk published
        self.inference_ms: deque[float] = deque(maxlen=500)
        self.convert_ms: deque[float] = deque(maxlen=500)  # decode (+ resize on the CPU) of one frame, on the worker
        self.wait_ms: deque[float] = deque(maxlen=500)  # newest frame's receipt -> its step starts (decoding included)
        self._running = True

        image_type, suffix = (Image, "") if config.image_transport == "raw" else (CompressedImage, "/compressed")
        # like image_transport: remapping applies to the base topic, then the transport's suffix is appended
        colour_topics = [self.resolve_topic_name(topic) for topic in self.camera_topics]
        self.image_topics = [topic + suffix for topic in colour_topics]
        for index, topic in enumerate(self.image_topics):
            self.create_subscription(image_type, topic, lambda msg, i=index: self._on_image(i, msg), SENSOR_QOS)
        # here, not at load: rclpy takes no subscriptions from the worker while the executor spins
        if takes_depth(self.checkpoint):
            depth_topics = config.depth_topics or [depth_topic_of(topic) for topic in colour_topics]
            self.depth_topics = [self.resolve_topic_name(topic) for topic in depth_topics]
            shared = sorted({t for t in self.depth_topics if self.depth_topics.count(t) > 1})
            if shared:  # one depth stream fed as two cameras' would pair each colour frame with another's depth
                raise ValueError(f"depth topic(s) {shared} would serve more than one of the cameras "
                                 f"{dict(zip(self.camera_names, self.depth_topics))}: name each camera's aligned "
                                 f"depth in depth_topics")
            # the transport's suffix after remapping, as for the colour frames
            depth_type, depth_suffix = ((Image, "") if config.depth_transport == "raw"
                                        else (CompressedImage, "/compressedDepth"))
            self.depth_topics = [topic + depth_suffix for topic in self.depth_topics]
            for index, topic in enumerate(self.depth_topics):
                self.create_subscription(depth_type, topic, lambda msg, i=index: self._on_depth(i, msg), SENSOR_QOS)
            self.get_logger().info(f"the checkpoint takes depth: {dict(zip(self.camera_names, self.depth_topics))}")
        self.create_subscription(String, config.instruction_topic, self._on_instruction, LATCHED_QOS)
        self.create_subscription(PoseStamped, config.ee_pose_topic, self._on_pose, STATE_QOS)
        self.create_subscription(JointState, config.joint_states_topic, self._on_joint_state, STATE_QOS)
        self.chunk_pub = self.create_publisher(JointTrajectory, config.action_topic, COMMAND_QOS)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", DIAGNOSTICS_QOS)
        self.create_timer(1.0 / config.diagnostics_rate_hz, self._publish_diagnostics)
        self._worker = threading.Thread(target=self._work, name="inference", daemon=True)
        self._worker.start()

    # ---- callbacks: convert and store only ----

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _reject(self, reason: str) -> None:
        self.inputs_rejected += 1
        self.last_rejection = reason
        self.get_logger().warning(reason, throttle_duration_sec=2.0)

    def _on_image(self, index: int, msg: Image | CompressedImage) -> None:
        with self._lock:  # store only: decoding, resizing (and any cost a hostile frame carries) are the worker's
            self._undecoded[index] = (msg, self._now(), time.perf_counter())
            self._lock.notify_all()

    def _on_depth(self, index: int, msg: Image | CompressedImage) -> None:
        with self._lock:  # store only, as for colour frames
            self._depth_undecoded[index] = (msg, self._now())
            self._lock.notify_all()

    def _on_instruction(self, msg: String) -> None:
        text = clean_instruction(msg.data)
        if not text:
            reason = ("instruction rejected: empty (after Unicode normalisation, without control and zero-width "
                      "characters)")
        elif len(text) > self.config.max_instruction_chars:
            reason = (f"instruction rejected: {len(text)} characters > max_instruction_chars "
                      f"{self.config.max_instruction_chars}")
        else:
            reason = ""
        if reason:
            self._reject(f"{reason}; the current task ends (the controller holds)")
            text = ""
        with self._lock:
            self._pending_instruction = text
            self._lock.notify_all()

    def _on_pose(self, msg: PoseStamped) -> None:
        try:
            position, quat = pose_from_msg(msg)
        except ValueError as err:
            self._reject(f"ee_pose: {err}")
            return
        with self._lock:
            self._observations.add_pose(stamp_to_seconds(msg.header.stamp), position, quat)

    def _on_joint_state(self, msg: JointState) -> None:
        values = finger_positions(msg.name, msg.position)  # None: no fingers, or garbage in their place
        if values is not None:
            with self._lock:
                self._observations.add_fingers(stamp_to_seconds(msg.header.stamp), values)

    # ---- worker ----

    def _load(self) -> None:
        from mambavla.runtime.policy_runtime import PolicyRuntime, runtime_dtype

        config = self.config
        if config.torch_threads > 0:
            import torch

            torch.set_num_threads(config.torch_threads)
        options = {"backend": self.backend, "onnx_path": config.onnx_path or None,
                   "threads": config.torch_threads or None, "compile_step": config.compile_step or False,
                   "dtype": runtime_dtype(config.dtype, self.device, self.backend)}
        if self.checkpoint:
            self.runtime = PolicyRuntime.from_checkpoint(self.checkpoint, device=self.device, seed=config.seed,
                                                         snap_instructions=config.snap_instructions, **options)
            source = f"checkpoint {self.checkpoint}"
        else:
            self.runtime = PolicyRuntime.from_preset(self.preset, device=self.device, seed=config.seed, **options)
            source = f"UNTRAINED preset {self.preset!r} (no checkpoint given): actions are noise"
            self.get_logger().warning(f"running an {source}")
        cams = self.runtime.camera_names
        if sorted(cams) != sorted(self.camera_names):
            raise ValueError(f"camera_names {self.camera_names} (for topics {self.camera_topics}) do not match the "
                             f"policy's cameras {list(cams)}")
        self._camera_slot = [list(cams).index(name) for name in self.camera_names]
        if self.runtime.config.use_depth and not self.depth_topics:
            raise ValueError("the policy takes depth, which policy_node subscribes to only for a checkpoint whose "
                             "config.json says use_depth when the node starts (never for a preset)")
        if self.depth_topics and not self.runtime.config.use_depth:
            raise ValueError("the checkpoint's config.json said use_depth when the node started, the policy loaded "
                             "takes no depth: restart the node")
        if self.depth_topics:
            by_slot = sorted(zip(self._camera_slot, self.camera_names, self.depth_topics))
            depth = DepthFrames([name for _, name, _ in by_slot], [topic for _, _, topic in by_slot],
                                self.config.max_depth_offset)
            with self._lock:
                self._depth = depth
        self.policy_source = source
        runtime = self.runtime
        if self.backend == "onnx":  # what the diagnostics report: the provider, and whether ORT replays CUDA graphs
            graphs = ", CUDA graphs" if runtime.onnx_cuda_graph else ""
            self.backend_label = f"onnx ({runtime.onnx_provider}{graphs})"
        elif runtime.cuda_graph:  # and for torch, the captured step (compiled or not)
            compiled = f", torch.compile {config.compile_step}" if config.compile_step else ""
            self.backend_label = f"torch (CUDA graph{compiled})"
        chunk_duration = runtime.chunk_size * runtime.dt
        schedule = config.schedule_config(len(self.camera_topics), runtime.policy_period, chunk_duration)
        with self._lock:
            self.schedule = InferenceSchedule(schedule, self._observations)
        step = f"torch.compile {config.compile_step}, " if config.compile_step else ""
        resize = "GPU" if runtime.resizes_on_device else "CPU"
        period = f" (every {runtime.policy_period} s of frame time)" if config.infer_mode == "period" else ""
        self.get_logger().info(f"policy: {source} on {self.device} ({step}{runtime.precision}, frames resized on the "
                               f"{resize}); cameras {dict(zip(self.camera_names, self.image_topics))}, "
                               f"image {runtime.image_size}, {runtime.chunk_size} x {runtime.dt} s, "
                               f"{runtime.action_mode} actions, infer_mode {config.infer_mode}{period}")

    def _from_the_future(self, topic: str, what: str, stamp: float, receipt: float) -> bool:
        """Whether a frame is stamped further ahead of its receipt than max_frame_future (rejected, counted)."""
        if stamp - receipt <= self.config.max_frame_future:
            return False
        self._reject(f"{topic}: {what} stamped {stamp - receipt:.2f} s in the future (camera clock?) "
                     f"> max_frame_future {self.config.max_frame_future} s")
        return True

    def _convert_depth(self) -> None:
        """Worker: decode the latest depth frame of each camera, sized as its colour frames are given to the policy,
        or log a rejection."""
        with self._lock:
            received, self._depth_undecoded = self._depth_undecoded, {}
        waiting = {}
        for index, (msg, receipt) in received.items():
            topic = self.depth_topics[index]
            stamp = stamp_to_seconds(msg.header.stamp)
            if self._from_the_future(topic, "depth", stamp, receipt):
                continue
            colour = self._colour_size.get(index)
            if colour is None:  # its size is checked against the colour frames': it waits for the first
                waiting[index] = (msg, receipt)
                continue
            try:  # from the header (a compressedDepth PNG's IHDR, checked and capped): nothing decoded yet
                size = depth_source_size(msg)
            except ValueError as err:
                self._reject(f"{topic}: {err}")
                continue
            if size != colour:  # resizing would feed the policy depth of other pixels than its colour frame's
                self._reject(f"{topic}: depth {size[1]}x{size[0]} is not aligned to the colour frames, "
                             f"{colour[1]}x{colour[0]} on {self.image_topics[index]}: use realsense-ros "
                             "align_depth.enable")
                continue
            try:  # at the size its colour frame is handed to the runtime (which checks that they match)
                depth = depth_to_mm(msg, None if self.runtime.resizes_on_device else self.runtime.image_size)
            except (ValueError, MemoryError) as err:
                self._reject(f"{topic}: {'MemoryError: ' if isinstance(err, MemoryError) else ''}{err}")
                continue
            with self._lock:
                self._depth.add(self._camera_slot[index], DepthFrame(depth, stamp))
                self.depth_valid[index] = float(np.count_nonzero(depth)) / depth.size
        if waiting:
            with self._lock:  # unless a newer frame came meanwhile
                self._depth_undecoded = {**waiting, **self._depth_undecoded}

    def _convert_frames(self) -> None:
        """Worker: decode and resize the latest frame of each camera to the policy's size, or log a rejection."""
        with self._lock:
            received, self._undecoded = self._undecoded, {}
        for index, (msg, receipt, arrived) in received.items():
            topic = self.image_topics[index]
            stamp = stamp_to_seconds(msg.header.stamp)
            if self._from_the_future(topic, "frame", stamp, receipt):
                continue
            try:
                started = time.perf_counter()
                # on the GPU the runtime resizes the whole frame (`resizes_on_device`): here only decoding
                rgb = image_to_rgb(msg, self.runtime.image_size, resize=not self.runtime.resizes_on_device)
                self.convert_ms.append((time.perf_counter() - started) * 1e3)
                self._colour_size[index] = source_size(msg)  # the size its aligned depth has
            except (ValueError, MemoryError) as err:  # one hostile frame must never end the node
                self._reject(f"{topic}: {'MemoryError: ' if isinstance(err, MemoryError) else ''}{err}")
                continue
            with self._lock:
                self._observations.add_frame(self._camera_slot[index], Frame(rgb, stamp, receipt, arrived))

    def _observation(self, now: float) -> tuple[Observation, tuple | None] | None:
        """The observation to infer on now and its depth (None: the policy takes none), if a step is due (a query:
        nothing is consumed); else None."""
        if not self.schedule.due(now):
            return None
        choice = self.schedule.choose(now)
        self.frames_dropped = self.schedule.frames_dropped
        if isinstance(choice, str):
            self.reason, self.waiting_for_depth = choice, False
            return None
        if self._depth is None:
            return choice, None
        depth = self._depth.pair(choice.stamps)
        self.waiting_for_depth = isinstance(depth, str)
        if self.waiting_for_depth:
            self.reason = depth
            return None
        return choice, depth

    def _work(self) -> None:
        try:
            self._load()
        except Exception as err:  # a bad checkpoint path or config: report it, keep the node up
            self.state, self.reason = "ERROR", f"could not load the policy: {err}"
            self.get_logger().error(self.reason)
            return
        if not self._running:  # stopped while loading
            return
        self.state, self.reason = "WAITING", "waiting for an instruction"
        while self._running:
            self._convert_frames()
            if self._depth is not None:
                self._convert_depth()
            with self._lock:
                now = self._now()
                if self._pending_instruction is None and (not self.instruction
                                                          or (chosen := self._observation(now)) is None):
                    self._lock.wait(timeout=0.01)
                    continue
                text, self._pending_instruction = self._pending_instruction, None
                if text is None:
                    self.schedule.consume(chosen[0], now)
            try:
                if text is not None:
                    self._apply_instruction(text)
                else:
                    self._infer(*chosen)
            except Exception as err:  # a failing policy must not silently kill the worker: report, keep trying
                what = "inference" if text is None else "the instruction"
                self.state, self.reason = "ERROR", f"{what} failed: {type(err).__name__}: {err}"
                self.get_logger().error(self.reason, throttle_duration_sec=5.0)
                time.sleep(0.5)

    def _end_task(self, why: str) -> None:
        """No chunks until a valid instruction: the controller's watchdog holds, then stops the arm."""
        self.instruction = ""
        self.state, self.reason = "WAITING", f"{why}: no chunks until a valid instruction (the controller holds)"

    def _apply_instruction(self, text: str) -> None:
        if not text:
            self._end_task("instruction rejected")
            return
        try:
            self.runtime.set_instruction(text)  # also resets the streaming history
        except ValueError as err:
            self._reject(f"instruction rejected: {err}; the current task ends (the controller holds)")
            self._end_task("instruction rejected")
            return
        except Exception:  # the policy failed to take it: the old task must not go on either; the worker reports it
            self._end_task("the instruction could not be applied")
            raise
        self.instruction = text
        with self._lock:
            self.schedule.restart()
            self.waiting_for_depth = False
        self.state, self.reason = "RUNNING", "instruction set"
        self.get_logger().info(f"instruction: {text[:200]!r}")

    def _infer(self, obs: Observation, depth: tuple | None) -> None:
        self.wait_ms.append((time.perf_counter() - obs.arrived) * 1e3)
        observation = {"images": dict(zip(self.runtime.camera_names, obs.images)), "proprio": obs.proprio,
                       "stamp": obs.stamp}
        if depth is not None:
            observation["depth"] = dict(zip(self.runtime.camera_names, depth))
        try:
            chunk = self.runtime.step(observation)
        except ValueError as err:
            self._reject(f"observation rejected by the policy: {err}")
            return
        self.chunk_pub.publish(chunk_to_trajectory(chunk, self.config.base_frame))
        self.chunks_published += 1
        with self._lock:
            self.schedule.chunk_published(chunk.stamp)
        self.latencies_ms.append((time.perf_counter() - obs.arrived) * 1e3)
        self.inference_ms.append(chunk.timing_ms.get("total", float("nan")))
        self.state, self.reason = "RUNNING", "publishing chunks"

    # ---- status ----

    def latency_stats(self) -> dict:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.array([np.nan])
        inf = np.array(self.inference_ms) if self.inference_ms else np.array([np.nan])
        return {
            "last_latency_ms": float(lat[-1]),
            "mean_latency_ms": float(np.mean(lat)),
            "p50_latency_ms": float(np.percentile(lat, 50)),
            "p99_latency_ms": float(np.percentile(lat, 99)),
            "mean_inference_ms": float(np.mean(inf)),
            "p50_inference_ms": float(np.percentile(inf, 50)),
            "p50_convert_ms": float(np.percentile(self.convert_ms, 50)) if self.convert_ms else float("nan"),
            "p50_wait_ms": float(np.percentile(self.wait_ms, 50)) if self.wait_ms else float("nan"),
        }

    def _publish_diagnostics(self) -> None:
        level = {"LOADING": OK, "WAITING": OK, "RUNNING": OK, "ERROR": ERROR}[self.state]
        if self.state == "WAITING" and self.last_rejection.startswith("instruction rejected"):
            level = WARN
        if self.state == "RUNNING" and self.last_rejection and self.inputs_rejected:
            level = WARN if level == OK else level
        if self.state == "RUNNING" and self.waiting_for_depth:  # a task in hand and no chunks going out
            level = WARN
        with self._lock:  # the worker adds cameras to it
            valid = sorted(self.depth_valid.items())
        blind = [self.camera_names[i] for i, share in valid if share < MIN_DEPTH_VALID]
        if self.state == "RUNNING" and blind:  # a projector off, a lens covered: the policy runs on holes
            level = WARN
        values = {
            "state": self.state,
            "reason": self.reason,
            "policy": getattr(self, "policy_source", ""),
            "backend": self.backend_label,
            "instruction": self.instruction[:200],
            "conditioned_on": ((getattr(self.runtime, "conditioned_on", None) or "")[:200] if self.instruction
                               else ""),
            "chunks_published": self.chunks_published,
            "frames_dropped": self.frames_dropped,
            "inputs_rejected": self.inputs_rejected,
            "last_rejection": self.last_rejection,
            "depth_topics": ", ".join(self.depth_topics),
            "depth_valid": ", ".join(f"{self.camera_names[i]} {share:.2f}" for i, share in valid),
            "depth_blind": ", ".join(blind),
            **self.latency_stats(),
        }
        self.diag_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), "mambavla/policy_node", self.device,
                                               level, f"{self.state}: {self.reason}", values))

    def starting(self) -> str:
        """What the node is still doing before it can infer; '' once the policy is loaded (or failed to load)."""
        if self.state != "LOADING":
            return ""
        return f"loading the policy ({f'checkpoint {self.checkpoint}' if self.checkpoint else f'preset {self.preset}'})"

    def shutdown(self) -> None:
        self._running = False
        with self._lock:
            self._lock.notify_all()
        # a load cannot be interrupted: main() leaves without waiting for it (ros/startup.py). An inference step in
        # progress may not finish within the wait: launch's SIGTERM comes at 5 s
        if not self.starting():
            self._worker.join(timeout=2.0)


def clean_instruction(text: str) -> str:
    """NFKC-normalised text with control, format (zero-width) and unassigned characters removed and
    whitespace collapsed; '' when nothing readable is left."""
    text = unicodedata.normalize("NFKC", text)
    kept = []
    for ch in text:
        category = unicodedata.category(ch)
        if ch.isspace() or category in ("Zl", "Zp"):
            kept.append(" ")
        elif category[0] != "C":  # Cc control, Cf format (zero-width space/joiner, BOM), Cs, Co, Cn
            kept.append(ch)
    return " ".join("".join(kept).split())


def main(args=None) -> None:
    run_until_stopped("policy_node", PolicyNode, PolicyNode.starting, args)


if __name__ == "__main__":
    main()
