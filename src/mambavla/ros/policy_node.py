"""policy_node: cameras + robot state + instruction in, action chunks out, through `PolicyRuntime`.

Callbacks only store messages (the latest frame per camera, still encoded); the worker thread decodes
and resizes frames (`image_transport` raw: sensor_msgs/Image on each camera topic; compressed:
sensor_msgs/CompressedImage JPEG/PNG on `<topic>/compressed`, as image_transport publishes it), chooses
the observation and runs inference. The node holds no model logic: it translates messages to
and from the runtime.

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

from mambavla.data.images import image_to_rgb
from mambavla.ros.convert import chunk_to_trajectory, pose_from_msg, stamp_to_seconds
from mambavla.ros.diagnostics import ERROR, OK, WARN, diagnostic_array
from mambavla.ros.params import declare
from mambavla.ros.qos import COMMAND_QOS, DIAGNOSTICS_QOS, LATCHED_QOS, SENSOR_QOS, STATE_QOS
from mambavla.ros.startup import run_until_stopped
from mambavla.runtime.schedule import INFER_MODES, Frame, Observation, ObservationBuffer, PeriodSchedule

IMAGE_TRANSPORTS = ("raw", "compressed")


class PolicyNode(Node):
    def __init__(self, **kwargs):
        super().__init__("policy_node", **kwargs)
        p = lambda *a, **k: declare(self, *a, **k)  # noqa: E731
        self.checkpoint = p("checkpoint", "", "checkpoint folder; empty runs the untrained `preset` (and says so)")
        self.preset = p("preset", "tiny", "model preset used when no checkpoint is given")
        self.device = p("device", "cpu", "torch device: cpu, cuda, cuda:1 ...")
        self.dtype = p("dtype", "fp32", "fp32, bf16 (torch backend), fp16 (onnx backend's graph), or auto (torch: bf16 on "
                                        "CUDA, else fp32; onnx: the onnx_path graph's own, fp32 when exported at load); "
                                        "closed loop in simulation on a CPU, 40 held-out episodes: fp32 and fp16 32, bf16 31 (docs/benchmarks.md)")
        self.seed = p("seed", 0, "seed of the flow-matching noise (and of untrained weights)")
        self.torch_threads = p("torch_threads", 0, "CPU threads for inference (torch or ONNX Runtime); 0 keeps the default")
        self.backend = p("backend", "torch", "torch, or onnx: the step in ONNX Runtime (CUDA provider with onnxruntime-gpu, "
                                             "else CPU; on a CPU about 2x faster than torch eager)")
        self.backend_label = self.backend  # until the runtime has loaded (onnx: with its provider)
        self.onnx_path = p("onnx_path", "", "graph from `mambavla export --onnx` for backend onnx; empty: exported at load")
        self.compile_step = p("compile_step", "", "torch backend on cuda: compile the captured step with torch.compile "
                                                  "(default or max-autotune-no-cudagraphs; minutes at load for the large "
                                                  "preset); empty: the plain CUDA graph")
        self.camera_topics = p("camera_topics", ["/cameras/front/image_raw", "/cameras/wrist/image_raw"],
                               "one camera base topic per camera, named by camera_names")
        self.camera_names = p("camera_names", ["front", "wrist"],
                              "the checkpoint camera each topic feeds (checked against the checkpoint at load)")
        self.image_transport = p("image_transport", "raw",
                                 "raw: sensor_msgs/Image on each camera topic; compressed: sensor_msgs/CompressedImage "
                                 "(JPEG/PNG) on <topic>/compressed")
        instruction_topic = p("instruction_topic", "/instruction", "std_msgs/String instruction (transient-local)")
        joint_states_topic = p("joint_states_topic", "/joint_states", "robot joint states (finger positions used)")
        ee_pose_topic = p("ee_pose_topic", "/ee_pose", "end-effector pose (geometry_msgs/PoseStamped)")
        action_topic = p("action_topic", "/action_chunk", "published action chunks (trajectory_msgs/JointTrajectory)")
        self.base_frame = p("base_frame", "fr3_link0", "frame of absolute targets (header.frame_id of chunks)")
        self.infer_mode = p("infer_mode", "period",
                            "when to infer: period (once per the checkpoint's policy_period of frame time, as trained), "
                            "consumed (the last chunk is `consume_fraction` executed), rate, or frame (every new set of frames)")
        self.consume_fraction = p("consume_fraction", 0.5, "fraction of a chunk's duration after which the next is computed")
        self.infer_rate_hz = p("infer_rate_hz", 5.0, "inference rate in `rate` mode, Hz")
        self.max_observation_age = p("max_observation_age", 0.5, "frames and robot state older than this are dropped, s")
        self.max_instruction_chars = p("max_instruction_chars", 1000, "longer instructions are rejected")
        self.max_frame_future = p("max_frame_future", 0.1, "frames stamped further ahead of their receipt are rejected, s")
        diagnostics_rate = p("diagnostics_rate_hz", 1.0, "status publishing rate, Hz")
        if self.infer_mode not in INFER_MODES:
            raise ValueError(f"infer_mode must be one of {INFER_MODES}, got {self.infer_mode!r}")
        if self.backend not in ("torch", "onnx"):
            raise ValueError(f"backend must be 'torch' or 'onnx', got {self.backend!r}")
        if self.image_transport not in IMAGE_TRANSPORTS:
            raise ValueError(f"image_transport must be one of {IMAGE_TRANSPORTS}, got {self.image_transport!r}")
        if any(t.rstrip("/").endswith("/compressed") for t in self.camera_topics):
            raise ValueError(f"camera_topics {self.camera_topics} name the base topic: image_transport compressed "
                             "subscribes <topic>/compressed")
        if len(self.camera_names) != len(self.camera_topics) or len(set(self.camera_names)) != len(self.camera_names):
            raise ValueError(f"camera_names {self.camera_names} must name each of camera_topics {self.camera_topics} once")

        self.runtime = None
        self.state = "LOADING"
        self.reason = "loading the policy"
        self._lock = threading.Condition()
        self._observations = ObservationBuffer(len(self.camera_topics), self.max_observation_age)
        self._period: PeriodSchedule | None = None  # built from the checkpoint's policy_period
        self._camera_slot: list[int] = []  # topic index -> position in the checkpoint's camera order
        # topic index -> (latest, receipt on the ROS clock, arrival on the steady clock)
        self._undecoded: dict[int, tuple[Image | CompressedImage, float, float]] = {}
        self._pending_instruction: str | None = None  # "" = a rejected instruction: end the current task
        self.instruction = ""
        self.chunks_published = 0
        self.frames_dropped = 0
        self.inputs_rejected = 0
        self.last_rejection = ""
        # the node's own times run on the steady clock: under use_sim_time the ROS clock is the simulator's,
        # which may not move at all while a step runs (a simulation slower than the node)
        self.latencies_ms: deque[float] = deque(maxlen=500)  # frame receipt -> chunk published
        self.inference_ms: deque[float] = deque(maxlen=500)
        self.convert_ms: deque[float] = deque(maxlen=500)  # decode (+ resize on the CPU) of one frame, on the worker
        self.wait_ms: deque[float] = deque(maxlen=500)  # newest frame's receipt -> its step starts (decoding included)
        self._last_chunk_stamp: float | None = None
        self._last_infer = 0.0
        self._running = True

        image_type, suffix = (Image, "") if self.image_transport == "raw" else (CompressedImage, "/compressed")
        # like image_transport: remapping applies to the base topic, then the transport's suffix is appended
        self.image_topics = [self.resolve_topic_name(topic) + suffix for topic in self.camera_topics]
        for index, topic in enumerate(self.image_topics):
            self.create_subscription(image_type, topic, lambda msg, i=index: self._on_image(i, msg), SENSOR_QOS)
        self.create_subscription(String, instruction_topic, self._on_instruction, LATCHED_QOS)
        self.create_subscription(PoseStamped, ee_pose_topic, self._on_pose, STATE_QOS)
        self.create_subscription(JointState, joint_states_topic, self._on_joint_state, STATE_QOS)
        self.chunk_pub = self.create_publisher(JointTrajectory, action_topic, COMMAND_QOS)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", DIAGNOSTICS_QOS)
        self.create_timer(1.0 / diagnostics_rate, self._publish_diagnostics)
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

    def _on_instruction(self, msg: String) -> None:
        text = clean_instruction(msg.data)
        if not text:
            reason = "instruction rejected: empty (after Unicode normalisation, without control and zero-width characters)"
        elif len(text) > self.max_instruction_chars:
            reason = f"instruction rejected: {len(text)} characters > max_instruction_chars {self.max_instruction_chars}"
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
        fingers = [i for i, n in enumerate(msg.name) if n.endswith("finger_joint1") or n.endswith("finger_joint2")]
        if len(fingers) != 2 or max(fingers) >= len(msg.position):
            return
        values = np.array([msg.position[i] for i in fingers], dtype=np.float64)
        if np.all(np.isfinite(values)):
            with self._lock:
                self._observations.add_fingers(stamp_to_seconds(msg.header.stamp), values)

    # ---- worker ----

    def _load(self) -> None:
        from mambavla.runtime.policy_runtime import PolicyRuntime, runtime_dtype

        if self.torch_threads > 0:
            import torch

            torch.set_num_threads(self.torch_threads)
        options = {"backend": self.backend, "onnx_path": self.onnx_path or None, "threads": self.torch_threads or None,
                   "dtype": runtime_dtype(self.dtype, self.device, self.backend), "compile_step": self.compile_step or False}
        if self.checkpoint:
            self.runtime = PolicyRuntime.from_checkpoint(self.checkpoint, device=self.device, seed=self.seed, **options)
            source = f"checkpoint {self.checkpoint}"
        else:
            self.runtime = PolicyRuntime.from_preset(self.preset, device=self.device, seed=self.seed, **options)
            source = f"UNTRAINED preset {self.preset!r} (no checkpoint given): actions are noise"
            self.get_logger().warning(f"running an {source}")
        cams = self.runtime.camera_names
        if sorted(cams) != sorted(self.camera_names):
            raise ValueError(f"camera_names {self.camera_names} (for topics {self.camera_topics}) do not match the "
                             f"policy's cameras {list(cams)}")
        self._camera_slot = [list(cams).index(name) for name in self.camera_names]
        self.policy_source = source
        if self.backend == "onnx":  # what the diagnostics report: the provider, and whether ORT replays CUDA graphs
            self.backend_label = f"onnx ({self.runtime.onnx_provider}{', CUDA graphs' if self.runtime.onnx_cuda_graph else ''})"
        elif self.runtime.cuda_graph:  # and for torch, the captured step (compiled or not)
            self.backend_label = f"torch (CUDA graph{f', torch.compile {self.compile_step}' if self.compile_step else ''})"
        self._period = PeriodSchedule(self.runtime.policy_period)
        dtype = self.runtime.precision
        step = f"torch.compile {self.compile_step}, " if self.compile_step else ""
        resize = "GPU" if self.runtime.resizes_on_device else "CPU"
        self.get_logger().info(f"policy: {source} on {self.device} ({step}{dtype}, frames resized on the {resize}); "
                               f"cameras {dict(zip(self.camera_names, self.image_topics))}, "
                               f"image {self.runtime.image_size}, {self.runtime.chunk_size} x {self.runtime.dt} s, "
                               f"{self.runtime.action_mode} actions, infer_mode {self.infer_mode}"
                               + (f" (every {self.runtime.policy_period} s of frame time)" if self.infer_mode == "period" else ""))

    def _not_before(self) -> float:
        """Frames older than this are not worth a step (the schedule of the infer mode)."""
        if self.infer_mode == "period":
            return self._period.not_before()
        if self.infer_mode == "consumed" and self._last_chunk_stamp is not None:
            return self._last_chunk_stamp + self.consume_fraction * self.runtime.chunk_size * self.runtime.dt
        return float("-inf")

    def _due(self, now: float) -> bool:
        if self.infer_mode == "rate":
            return now >= self._last_infer + 1.0 / self.infer_rate_hz
        return True

    def _convert_frames(self) -> None:
        """Worker: decode and resize the latest frame of each camera to the policy's size, or log a rejection."""
        with self._lock:
            received, self._undecoded = self._undecoded, {}
        for index, (msg, receipt, arrived) in received.items():
            topic = self.image_topics[index]
            stamp = stamp_to_seconds(msg.header.stamp)
            if stamp - receipt > self.max_frame_future:
                self._reject(f"{topic}: frame stamped {stamp - receipt:.2f} s in the future (camera clock?) "
                             f"> max_frame_future {self.max_frame_future} s")
                continue
            try:
                started = time.perf_counter()
                # on the GPU the runtime resizes the whole frame (`resizes_on_device`): here only decoding
                rgb = image_to_rgb(msg, self.runtime.image_size, resize=not self.runtime.resizes_on_device)
                self.convert_ms.append((time.perf_counter() - started) * 1e3)
            except (ValueError, MemoryError) as err:  # one hostile frame must never end the node
                self._reject(f"{topic}: {type(err).__name__ if isinstance(err, MemoryError) else ''}{err}")
                continue
            with self._lock:
                self._observations.add_frame(self._camera_slot[index], Frame(rgb, stamp, receipt, arrived))

    def _observation(self, now: float) -> Observation | None:
        """Choose the observation to infer on now (a query: nothing is consumed); None when there is none."""
        dropped = self._observations.drop_stale(now)
        self.frames_dropped = self._observations.frames_dropped
        choice = self._observations.select(now, self._not_before(), all_new=self.infer_mode == "frame")
        if isinstance(choice, str):
            self.reason = dropped or choice
            return None
        return choice

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
            with self._lock:
                if self._pending_instruction is None and (not self.instruction or not self._due(self._now())
                                                          or (obs := self._observation(self._now())) is None):
                    self._lock.wait(timeout=0.01)
                    continue
                text, self._pending_instruction = self._pending_instruction, None
                if text is None:
                    self._observations.consume(obs)
                    if self._period is not None:
                        self._period.consumed(obs.stamp)
            try:
                if text is not None:
                    self._apply_instruction(text)
                else:
                    self._infer(obs)
            except Exception as err:  # a failing policy must not silently kill the worker: report, keep trying
                self.state, self.reason = "ERROR", f"inference failed: {type(err).__name__}: {err}"
                self.get_logger().error(self.reason, throttle_duration_sec=5.0)
                time.sleep(0.5)

    def _end_task(self, why: str) -> None:
        """No chunks until a valid instruction: the controller's watchdog holds, then stops the arm."""
        self.instruction = ""
        self._last_chunk_stamp = None
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
        self.instruction = text
        self._last_chunk_stamp = None
        with self._lock:
            self._observations.reset()
            self._period.reset()
        self.state, self.reason = "RUNNING", "instruction set"
        self.get_logger().info(f"instruction: {text[:200]!r}")

    def _infer(self, obs: Observation) -> None:
        self._last_infer = self._now()
        self.wait_ms.append((time.perf_counter() - obs.arrived) * 1e3)
        try:
            chunk = self.runtime.step({"images": dict(zip(self.runtime.camera_names, obs.images)),
                                       "proprio": obs.proprio, "stamp": obs.stamp})
        except ValueError as err:
            self._reject(f"observation rejected by the policy: {err}")
            return
        self.chunk_pub.publish(chunk_to_trajectory(chunk, self.base_frame))
        self.chunks_published += 1
        self._last_chunk_stamp = chunk.stamp
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
        values = {
            "state": self.state,
            "reason": self.reason,
            "policy": getattr(self, "policy_source", ""),
            "backend": self.backend_label,
            "instruction": self.instruction[:200],
            "chunks_published": self.chunks_published,
            "frames_dropped": self.frames_dropped,
            "inputs_rejected": self.inputs_rejected,
            "last_rejection": self.last_rejection,
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
