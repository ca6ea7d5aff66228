"""policy_node's parameters, declared once: names, defaults and descriptions in `PolicyNodeConfig`.

The node declares exactly these fields as ROS parameters (read-only: it reads them once, at start), the
shipped config/policy.yaml states each one with the same default, and a parameter file naming anything else
is refused with the names it may have meant. Without ROS: replay and tests build the same `ScheduleConfig`
from it that the node runs.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

from mambavla.parameters import check_names as parameters_check_names
from mambavla.runtime.depth_frames import MAX_OFFSET as MAX_DEPTH_OFFSET
from mambavla.runtime.schedule import INFER_MODES, ScheduleConfig

NODE_NAME = "policy_node"
BACKENDS = ("torch", "onnx")
DTYPES = ("auto", "fp32", "bf16", "fp16")  # the precisions by name; `runtime_dtype` turns one into a torch dtype
IMAGE_TRANSPORTS = ("raw", "compressed")
DEPTH_TRANSPORTS = ("raw", "compressedDepth")


def _param(default, description: str):
    if isinstance(default, tuple):
        return field(default_factory=lambda: default, metadata={"description": description})
    return field(default=default, metadata={"description": description})


@dataclass(frozen=True)
class PolicyNodeConfig:
    checkpoint: str = _param("", "checkpoint folder; empty runs the untrained `preset` (and says so)")
    preset: str = _param("tiny", "model preset used when no checkpoint is given")
    device: str = _param("cuda", "torch device: cpu, cuda, cuda:1 ...")
    dtype: str = _param("fp32", "fp32, bf16 (torch backend), fp16 (onnx backend's graph), or auto (torch: bf16 on "
                                "CUDA, else fp32; onnx: the onnx_path graph's own, fp32 when exported at load)")
    seed: int = _param(0, "seed of the flow-matching noise (and of untrained weights)")
    torch_threads: int = _param(0, "CPU threads for inference (torch or ONNX Runtime); 0 keeps the library's default")
    backend: str = _param("torch", "torch, or onnx: the step in ONNX Runtime (CUDA provider with onnxruntime-gpu, "
                                   "else CPU)")
    onnx_path: str = _param("", "graph from `mambavla export --onnx` for backend onnx; empty: exported at load")
    compile_step: str = _param("", "torch backend on cuda: compile the captured step with torch.compile (default or "
                                   "max-autotune-no-cudagraphs; minutes at load for the large preset); empty: the "
                                   "plain CUDA graph")
    camera_topics: tuple[str, ...] = _param(("/cameras/front/image_raw", "/cameras/wrist/image_raw"),
                                            "one camera base topic per camera, named by camera_names")
    camera_names: tuple[str, ...] = _param(("front", "wrist"),
                                           "the checkpoint camera each topic feeds (checked against the checkpoint "
                                           "at load)")
    image_transport: str = _param("raw", "raw: sensor_msgs/Image on each camera topic; compressed: "
                                         "sensor_msgs/CompressedImage (JPEG/PNG) on <topic>/compressed")
    depth_topics: tuple[str, ...] = _param((), "aligned depth per camera of camera_topics (sensor_msgs/Image 16UC1 "
                                               "mm or 32FC1 m, the colour frame's size), subscribed only when the "
                                               "checkpoint's config.json has use_depth; empty: beside each camera "
                                               "topic (as remapped) as realsense-ros lays them out, <its folder less "
                                               "a color/ or rgb/>/aligned_depth_to_color/image_raw")
    depth_transport: str = _param("raw", "raw: sensor_msgs/Image on each depth topic; compressedDepth: "
                                         "sensor_msgs/CompressedImage (16UC1 PNG, compressed_depth_image_transport) "
                                         "on <depth topic>/compressedDepth")
    max_depth_offset: float = _param(MAX_DEPTH_OFFSET, "the depth fed with a colour frame is the one stamped nearest "
                                                       "to it and at most this far from it, s; none that close: the "
                                                       "step waits. Aligned depth carries its colour frame's stamp "
                                                       "(realsense-ros with enable_sync): the default allows for stamp "
                                                       "rounding only, far below a frame period, so a neighbouring "
                                                       "frame never pairs")
    instruction_topic: str = _param("/instruction", "std_msgs/String instruction (transient-local)")
    joint_states_topic: str = _param("/joint_states", "robot joint states (finger positions used)")
    ee_pose_topic: str = _param("/ee_pose", "end-effector pose (geometry_msgs/PoseStamped)")
    action_topic: str = _param("/action_chunk", "published action chunks (trajectory_msgs/JointTrajectory)")
    base_frame: str = _param("fr3_link0", "frame of absolute targets (header.frame_id of chunks)")
    infer_mode: str = _param("period", "when to infer: period (once per the checkpoint's policy_period of frame time, "
                                       "as trained), consumed (the last chunk is `consume_fraction` executed), rate, "
                                       "or frame (every new set of frames)")
    consume_fraction: float = _param(0.5, "fraction of a chunk's duration after which the next is computed "
                                          "(infer_mode consumed)")
    infer_rate_hz: float = _param(5.0, "inference rate in `rate` mode, Hz")
    max_observation_age: float = _param(0.5, "frames and robot state older than this are dropped, s")
    max_instruction_chars: int = _param(1000, "longer instructions are rejected")
    snap_instructions: bool = _param(True, "condition the policy on the checkpoint's nearest training instruction "
                                           "naming the same colours and sides (reported as conditioned_on on "
                                           "/diagnostics); false: on the instruction as given")
    max_frame_future: float = _param(0.1, "frames stamped further ahead of their receipt are rejected, s")
    diagnostics_rate_hz: float = _param(1.0, "status publishing rate, Hz")

    def __post_init__(self) -> None:
        for name, choices in (("infer_mode", INFER_MODES), ("backend", BACKENDS), ("dtype", DTYPES),
                              ("image_transport", IMAGE_TRANSPORTS), ("depth_transport", DEPTH_TRANSPORTS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        for name in ("infer_rate_hz", "max_observation_age", "diagnostics_rate_hz", "max_instruction_chars",
                     "max_depth_offset"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.max_frame_future >= 0:  # negative: the freshest frames would be refused as from the future
            raise ValueError(f"max_frame_future must be >= 0 s, got {self.max_frame_future}")
        if not 0.0 <= self.consume_fraction <= 1.0:
            raise ValueError(f"consume_fraction must be within 0..1, got {self.consume_fraction}")
        if self.torch_threads < 0:
            raise ValueError(f"torch_threads must be >= 0 (0 keeps the default), got {self.torch_threads}")
        if any(t.rstrip("/").endswith("/compressed") for t in self.camera_topics):
            raise ValueError(f"camera_topics {list(self.camera_topics)} name the base topic: image_transport "
                             "compressed subscribes <topic>/compressed")
        names = self.camera_names
        if len(names) != len(self.camera_topics) or len(set(names)) != len(names):
            raise ValueError(f"camera_names {list(names)} must name each of camera_topics {list(self.camera_topics)} "
                             "once")
        if any(t.rstrip("/").endswith("/compressedDepth") for t in self.depth_topics):
            raise ValueError(f"depth_topics {list(self.depth_topics)} name the base topic: depth_transport "
                             "compressedDepth subscribes <topic>/compressedDepth")
        if self.depth_topics and len(self.depth_topics) != len(self.camera_topics):
            raise ValueError(f"depth_topics {list(self.depth_topics)} must give one topic per camera of camera_topics "
                             f"{list(self.camera_topics)}, or be empty (derived from them)")

    @property
    def depth_topics_used(self) -> tuple[str, ...]:
        """The depth topic of each camera: `depth_topics`, or derived from each camera topic."""
        return self.depth_topics or tuple(depth_topic_of(t) for t in self.camera_topics)

    @classmethod
    def from_params(cls, params: dict, source: str = "the parameters") -> "PolicyNodeConfig":
        """The config from parameter values (lists for the tuple fields); unknown names are refused."""
        check_names(params, source)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in params.items()})

    def schedule_config(self, n_cameras: int, policy_period: float, chunk_duration: float) -> ScheduleConfig:
        """The inference schedule of these parameters for a policy (the checkpoint's period and chunk)."""
        return ScheduleConfig(n_cameras=n_cameras, policy_period=policy_period, chunk_duration=chunk_duration,
                              infer_mode=self.infer_mode, consume_fraction=self.consume_fraction,
                              infer_period=1.0 / self.infer_rate_hz, max_observation_age=self.max_observation_age)


def depth_topic_of(image_topic: str) -> str:
    """The aligned depth topic beside a colour topic, as realsense-ros lays them out: an image_transport suffix
    (/compressed), the image's last name (image_raw) and a `color` or `rgb` folder dropped,
    `aligned_depth_to_color/image_raw` added. The one rule for sim_node, policy_node, recorder_node and doctor.
    /cameras/front/image_raw -> /cameras/front/aligned_depth_to_color/image_raw (`data.bags.depth_topic`);
    /camera/camera/color/image_raw/compressed -> /camera/camera/aligned_depth_to_color/image_raw."""
    topic = image_topic.rstrip("/")
    if topic.endswith("/compressed"):
        topic = topic[: -len("/compressed")]
    base = topic.rsplit("/", 1)[0]
    if base.rsplit("/", 1)[-1] in ("color", "rgb"):
        base = base.rsplit("/", 1)[0]
    return f"{base}/aligned_depth_to_color/image_raw"


def takes_depth(checkpoint: str) -> bool:
    """Whether a checkpoint folder's config.json asks for depth (`use_depth`), read with the standard library: a
    node decides its depth subscriptions at start and doctor runs without torch. An unreadable config: False (the
    load that follows says what is wrong with it)."""
    if not checkpoint:  # no checkpoint: an untrained preset, which takes no depth
        return False
    try:
        return bool(json.loads((Path(checkpoint) / "config.json").read_text()).get("use_depth"))
    except (OSError, ValueError, AttributeError):
        return False


def parameters() -> dict[str, tuple[object, str]]:
    """name -> (default, description) of every policy_node parameter, in declaration order."""
    out = {}
    for f in fields(PolicyNodeConfig):
        default = f.default if f.default is not MISSING else f.default_factory()
        out[f.name] = (list(default) if isinstance(default, tuple) else default, f.metadata["description"])
    return out


def check_names(names, source: str = "the parameters") -> None:
    """Refuse any name that is not a policy_node parameter, naming the close ones (a misspelt key in a
    parameter file would otherwise be ignored and its default used)."""
    parameters_check_names(names, [f.name for f in fields(PolicyNodeConfig)], NODE_NAME, source)
