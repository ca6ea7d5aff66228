"""How a policy is trained, declared once: `TrainSettings`' fields carry their default and help, and
`mambavla train` derives its flags from them (`add_arguments`, `given`). Importing this module or constructing
settings loads no torch, so that building the command line stays fast.

A field's flag is `--<name>` with dashes; a boolean that is on by default gets `--no-<name>`, one that is off
`--<name>`; metadata "cli" holds what argparse needs beyond that (another flag name, aliases, nargs, metavar).
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, Field, dataclass, field, fields

from mambavla.data.bags import ACTION_LEAD, ReadOptions
from mambavla.data.roles import parse_maps
from mambavla.spaces import ACTION_MODES

HISTORY_MODES = ("stream", "window")
INIT_STATS = ("merge", "data", "checkpoint")  # fine-tuning's normalisation statistics (train/trainer.py)
SCRATCH_LR = 3e-4  # peak learning rate from scratch
FINE_TUNE_LR = 1e-4  # --init's default peak learning rate: a third of training from scratch's
SHIFT_PX = 6  # the random image shift's reach at 128 x 128: about 5% of the image

# the fields that say how bags become rows (data/bags.py ReadOptions), shared with `mambavla dataset`
BAG_FIELDS = ("maps", "instruction", "cameras", "image_size", "dt", "action_lead", "split_gap", "depth")


def default_warmup(steps: int, fine_tuning: bool) -> int:
    """Warmup steps: a tenth of the run up to 200 from scratch; a fifth up to 500 when fine-tuning, so that fresh
    optimiser moments do not take full steps on weights that already work."""
    return min(500, max(1, steps // 5)) if fine_tuning else min(200, max(1, steps // 10))


def _setting(default, help: str, **cli) -> Field:
    """A field with its help text and any argparse keywords beyond the derived ones (`flags`: the names)."""
    metadata = {"help": help, "cli": cli}
    if isinstance(default, (dict, tuple)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainSettings:
    steps: int = _setting(3000, "total optimiser steps (with --resume: extend the run to this many)")
    batch_size: int = _setting(16, "segments (stream) or samples (window) per step and GPU")
    history: str = _setting("stream", "stream: segments of frames in one scan, the checkpoint continues its state; "
                                      "window: the last K frames per sample", choices=HISTORY_MODES)
    segment_frames: int = _setting(64, "policy frames per stream segment")
    history_frames: int = _setting(1, "frames per sample in window mode")
    action_mode: str = _setting("absolute", "actions as absolute targets or as deltas from the measured pose",
                                choices=ACTION_MODES)
    lr: float | None = _setting(None, f"peak learning rate (default {SCRATCH_LR}; with --init {FINE_TUNE_LR})",
                                type=float)
    weight_decay: float = _setting(1e-4, "AdamW weight decay")
    warmup: int | None = _setting(None, "warmup steps (default: min(200, steps / 10); with --init min(500, steps / 5))",
                                  type=int)
    clip: float = _setting(1.0, "gradient norm clip")
    ema_decay: float = _setting(0.999, "EMA decay of the saved weights", aliases=("--ema",))
    grounding_weight: float = _setting(0.1, "weight of the grounding head's loss beside the flow loss: where the "
                                            "named cube started, from the episode's seed (0: no grounding head)")
    other_cube_grounding: bool = _setting(True, "the grounding head answers only for the named cube (by default it "
                                                "also answers, on the same frames, for another cube of the layout "
                                                "named instead, so the picture alone cannot give the answer)")
    val_fraction: float = _setting(0.1, "episodes held out for the validation loss")
    episodes_per_task: int = _setting(0, "train on the first N episodes of each task, validate on the same held-out "
                                         "ones (0: all)", metavar="N")
    val_every: int = _setting(250, "validate every N steps", metavar="N")
    save_every: int = _setting(500, "write RUN/last every N steps", metavar="N")
    augment: bool = _setting(True, "no random shift or colour jitter")
    # the sim's front camera sees about 0.6 cm (y) and 0.9 cm (x) per pixel (pinhole geometry: 50 deg field of
    # view over 128 px, 0.85 m, 45 deg down), so a 6 px shift says the cube may be 3.5-5 cm from where it looks
    shift_px: int = _setting(SHIFT_PX, "reach of the random image shift in pixels (0: colour jitter only)",
                             metavar="PX")
    balance_tasks: bool = _setting(False, "stream mode: each task gets the same share of every batch, however many "
                                          "episodes it has")
    bf16: bool = _setting(True, "fp32 on CUDA (bf16 autocast by default)")
    seed: int = _setting(0, "seed of the weights, the sampling and the noise")
    device: str = _setting("cpu", "cpu, cuda, cuda:1 ... (torchrun picks one GPU per process)")
    max_seconds: float = _setting(0.0, "stop after this much wall time, saving RUN/last (--resume goes on; "
                                       "0: no limit)", metavar="SECONDS")
    init: str = _setting("", "fine-tune: start from this checkpoint (its architecture, cameras found by name, image "
                             "size, dt and weights; e.g. src/mambavla/policies/base_sim on demonstrations from your "
                             "cell). A grounding head the data cannot supervise is dropped", metavar="CHECKPOINT")
    init_stats: str = _setting("merge", "fine-tuning's normalisation statistics: merge (the checkpoint's ranges "
                                        "widened to cover the new data), data (the new data's alone) or checkpoint "
                                        "(unchanged)", choices=INIT_STATS)
    maps: dict = _setting({}, "topic of a role: a camera name of the policy (front, wrist ...), joint_states, "
                              "ee_pose, instruction, actions or target_pose (a commanded PoseStamped); repeatable "
                              "(default: found by type and name)",
                          flags=("--map",), action="append", metavar="ROLE=TOPIC", parse=parse_maps)
    instruction: str = _setting("", "instruction for bags that recorded none (no topic, no episode.json)")
    cameras: tuple = _setting((), "the policy's cameras, in order (default: the --init checkpoint's, else the bags' "
                                  "own names, else the preset's)", nargs="+", metavar="NAME")
    image_size: tuple = _setting((), "resize every frame to this as it is read (default: the preset's, or the --init "
                                     "checkpoint's)", nargs=2, type=int, metavar=("H", "W"))
    dt: float = _setting(0.0, "s between rows, resampled (default: the first camera's recorded interval; with --init "
                              "the checkpoint's)", metavar="SECONDS")
    action_lead: float = _setting(ACTION_LEAD, "where no action topic was recorded: the measured pose this far ahead "
                                               "is a row's target", metavar="SECONDS")
    split_gap: float = _setting(0.0, "a bag holds several demonstrations: a gap longer than this in the first "
                                     "camera's stream ends one (0: one demonstration per bag)", metavar="SECONDS")
    depth: bool = _setting(False, "RGB-D: read every camera's depth aligned to its colour frames (found by name, "
                                  "e.g. /cameras/front/aligned_depth_to_color/image_raw, else --map NAME_depth=TOPIC) "
                                  "and train a policy that takes it as a fourth channel (with --init of an RGB "
                                  "checkpoint: its weights, the depth channel's starting at zero)")

    def __post_init__(self) -> None:
        for name, choices in [(f.name, f.metadata["cli"].get("choices")) for f in fields(self)]:
            if choices and getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        if self.episodes_per_task < 0:
            raise ValueError(f"episodes_per_task must be >= 0, got {self.episodes_per_task}")
        if self.balance_tasks and self.history != "stream":
            raise ValueError("balance_tasks applies to stream-mode training (segments)")
        if self.shift_px < 0:
            raise ValueError(f"shift_px must be >= 0, got {self.shift_px}")
        for name in ("steps", "batch_size", "segment_frames", "history_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not self.grounding_weight >= 0:  # also rejects NaN
            raise ValueError(f"grounding_weight must be >= 0 (0: no grounding head), got {self.grounding_weight}")
        if self.lr is None:
            self.lr = FINE_TUNE_LR if self.init else SCRATCH_LR
        if self.warmup is None:
            self.warmup = default_warmup(self.steps, bool(self.init))
        self.cameras, self.image_size = tuple(self.cameras), tuple(self.image_size)  # lists, from run.json

    def read_options(self, config, fine_tuning: bool) -> ReadOptions:
        """How bags become rows for `config` (a MambaVLAConfig): its image size, and with fine-tuning its dt,
        unless set here."""
        dt = self.dt or (config.dt if fine_tuning else None)
        size = self.image_size or config.image_size
        return ReadOptions.make(self.maps, self.instruction, size, dt, self.action_lead, config.cameras, self.split_gap,
                                self.depth or config.use_depth)


def defaults() -> dict:
    """name -> default of every setting, in declaration order (None: chosen by a rule, see the help)."""
    return {f.name: f.default if f.default is not MISSING else f.default_factory() for f in fields(TrainSettings)}


def add_arguments(parser, names: tuple[str, ...] | None = None) -> None:
    """One flag per setting in `names` (default: all) on `parser` (a parser or an argument group). Every flag
    defaults to None, which `given` reads as "not on the command line": the dataclass keeps the one default."""
    default_of = defaults()
    for f in fields(TrainSettings):
        if names is not None and f.name not in names:
            continue
        cli = {k: v for k, v in f.metadata["cli"].items() if k != "parse"}
        default, dashed = default_of[f.name], f.name.replace("_", "-")
        flags = cli.pop("flags", None)
        if isinstance(default, bool):
            flags = flags or (f"--no-{dashed}" if default else f"--{dashed}",)
            cli.update(action="store_const", const=not default)
        else:
            flags = flags or (f"--{dashed}",)
            if "type" not in cli and "action" not in cli and default is not None and not isinstance(default, tuple):
                cli["type"] = type(default)
        flags = (*flags, *cli.pop("aliases", ()))
        help_text = f.metadata["help"]
        said = "(default" in help_text or (default == 0 and "0:" in help_text)  # "(0: no limit)" says it
        if not isinstance(default, bool) and default not in (None, "", (), {}) and not said:
            help_text += f" (default {default})"
        parser.add_argument(*flags, dest=f.name, default=None, help=help_text, **cli)


def given(args: argparse.Namespace, names: tuple[str, ...] | None = None) -> dict:
    """The settings in `names` (default: all) that the command line set, parsed: keyword arguments of
    `TrainSettings`."""
    out = {}
    for f in fields(TrainSettings):
        value = getattr(args, f.name, None)
        if value is not None and (names is None or f.name in names):
            parse = f.metadata["cli"].get("parse")
            out[f.name] = parse(value) if parse else value
    return out
