"""The controller's numbers read from the node parameter files (config/controller.yaml, then overrides
such as config/controller_sim.yaml), without ROS: for tools that run `ControllerCore` in-process
(`mambavla eval-sim`) with the same limits `controller_node` loads.

Keys missing from the files keep the defaults of `SafetyLimits` / `ControllerCore`, which stay the one
source of the default values.
"""

from __future__ import annotations

import inspect
import os
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from mambavla.control.core import ControllerCore
from mambavla.control.gripper import GripperRule
from mambavla.control.safety import SafetyLimits
from mambavla.control.teleop import TeleopParams

NODE_NAME = "controller_node"
SIM_PARAM_FILES = ("controller.yaml", "controller_sim.yaml")
CORE_KEYS = ("blend_window", "hold_after", "stop_after", "max_tick_dt", "action_names")
TELEOP_PREFIX = "teleop_"  # TeleopParams' fields as node parameters: teleop_linear_scale, ...


def config_path(name: str) -> Path:
    """A file of the package's `config/`: the source tree's, else an install space's share folder
    (colcon: <prefix>/lib/pythonX.Y/site-packages/mambavla/control/ -> <prefix>/share/mambavla/config;
    every prefix on AMENT_PREFIX_PATH; pip: sys.prefix)."""
    here = Path(__file__).resolve()
    prefixes = [here.parents[5]] if len(here.parents) > 5 else []
    prefixes += [Path(p) for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    prefixes.append(Path(sys.prefix))
    candidates = [here.parents[3] / "config" / name]
    candidates += [prefix / "share" / "mambavla" / "config" / name for prefix in prefixes]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"config file {name!r} not found in {[str(c.parent) for c in candidates]}")


def load_params(files: tuple[str | Path, ...] = SIM_PARAM_FILES, node: str = NODE_NAME) -> dict:
    """`node`'s ros__parameters merged over `files` in order (later files override), as ROS loads them.

    A bare name is looked up in the package's config/ folder; a path is read as given."""
    import yaml

    params: dict = {}
    for name in files:
        path = Path(name) if Path(name).is_file() else config_path(str(name))
        document = yaml.safe_load(path.read_text()) or {}
        section = document.get(node, document.get(f"/{node}", {}))
        params.update((section or {}).get("ros__parameters", {}) or {})
    return params


def safety_limits(params: dict) -> SafetyLimits:
    names = {f.name for f in fields(SafetyLimits)}
    kwargs = {k: (tuple(float(x) for x in v) if isinstance(v, list) else float(v))
              for k, v in params.items() if k in names}
    return SafetyLimits(**kwargs)


def teleop_params(params: dict) -> TeleopParams:
    names = {f.name for f in fields(TeleopParams)}
    return TeleopParams(**{k[len(TELEOP_PREFIX):]: float(v) for k, v in params.items()
                           if k.startswith(TELEOP_PREFIX) and k[len(TELEOP_PREFIX):] in names})


def core_kwargs(params: dict) -> dict:
    """Keyword arguments of `ControllerCore` (limits and teleoperation included) from the parameters."""
    kwargs = {k: params[k] for k in CORE_KEYS if k in params}
    if "action_names" in kwargs:
        kwargs["action_names"] = tuple(kwargs["action_names"])
    for k in CORE_KEYS[:-1]:
        if k in kwargs:
            kwargs[k] = float(kwargs[k])
    if "command_source" in params:
        kwargs["source"] = str(params["command_source"])
    return {"limits": safety_limits(params), "teleop": teleop_params(params), **kwargs}


def controller_core(params: dict) -> ControllerCore:
    return ControllerCore(**core_kwargs(params))


def controller_defaults() -> dict:
    """Every number the controller takes from parameters, with the default its owner holds
    (`SafetyLimits`, `ControllerCore`, `TrackingParams`): what controller_node declares."""
    signature = inspect.signature(ControllerCore.__init__).parameters
    defaults = {**asdict(SafetyLimits()), **{k: signature[k].default for k in CORE_KEYS}, **asdict(TrackingParams()),
                **{TELEOP_PREFIX + k: v for k, v in asdict(TeleopParams()).items()},
                "command_source": signature["source"].default}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()}


@dataclass(frozen=True)
class TrackingParams:
    """How controller_node drives franky: streaming rate, impedance gains, gripper."""

    rate_hz: float = 200.0
    translational_stiffness: float = 800.0
    rotational_stiffness: float = 40.0
    damping: tuple[float, ...] = (-1.0,)  # 6 values, or [-1] for critical damping
    translational_error_clip: tuple[float, float, float] = (0.05, 0.05, 0.05)
    rotational_error_clip: tuple[float, float, float] = (0.2, 0.2, 0.2)
    gripper: bool = True
    gripper_speed: float = 0.1
    gripper_force: float = 20.0
    gripper_open_delay: float = 0.3  # s the chunk must ask a closed hand to open before it opens (GripperRule)
    max_command_rate_hz: float = 50.0  # chunks per second and publisher admitted; more are dropped unread
    teleop_max_rate_hz: float = 200.0  # teleoperation messages per second and publisher admitted

    @classmethod
    def from_params(cls, params: dict) -> "TrackingParams":
        kwargs = {}
        for f in fields(cls):
            if f.name in params:
                value = params[f.name]
                kwargs[f.name] = tuple(float(x) for x in value) if isinstance(value, list) else type(f.default)(value)
        tracking = cls(**kwargs)
        if not 20.0 <= tracking.rate_hz <= 1000.0:
            raise ValueError(f"rate_hz must be within 20..1000, got {tracking.rate_hz}")
        GripperRule(tracking.gripper_open_delay)  # checks the wait here, at start, not at the first grasp
        for name in ("max_command_rate_hz", "teleop_max_rate_hz", "translational_stiffness", "rotational_stiffness",
                     "gripper_speed", "gripper_force"):
            if not (np.isfinite(getattr(tracking, name)) and getattr(tracking, name) > 0):
                raise ValueError(f"{name} must be a positive number, got {getattr(tracking, name)}")
        for name in ("translational_error_clip", "rotational_error_clip"):
            clip = np.asarray(getattr(tracking, name))
            if clip.shape != (3,) or not np.all(np.isfinite(clip) & (clip > 0)):
                raise ValueError(f"{name} must be 3 positive numbers, got {list(getattr(tracking, name))}")
        damping = np.asarray(tracking.damping)
        if list(damping) != [-1.0] and (damping.shape != (6,) or not np.all(np.isfinite(damping) & (damping >= 0))):
            # tracker_kwargs passes 6 values on; anything else would have left critical damping in force unsaid
            raise ValueError(f"damping must be [-1] (critical damping) or 6 values >= 0, got {list(tracking.damping)}")
        return tracking

    def tracker_kwargs(self) -> dict:
        """Keyword arguments of `franky.CartesianImpedanceTracker` (unpaced: the caller keeps time)."""
        kwargs = dict(translational_stiffness=self.translational_stiffness,
                      rotational_stiffness=self.rotational_stiffness,
                      translational_error_clip=np.array(self.translational_error_clip),
                      rotational_error_clip=np.array(self.rotational_error_clip))
        if len(self.damping) == 6:
            kwargs["damping"] = np.array(self.damping)
        return kwargs
