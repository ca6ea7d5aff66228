"""Teleoperation as a command source of `ControllerCore`: a twist stream (linear m/s, angular rad/s, as
spacenav, teleop_twist_joy and teleop_twist_keyboard publish it) integrated into the streamed target, and
a gripper command. The safety rules are the core's: the integrated target goes through the same workspace
box, tilt limit, speed limits and watchdog as a chunk's.

Also the admission gate both command inputs share: a per-publisher message budget, so one publisher
flooding a topic costs the node a counter increment per message instead of a full validation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mambavla.spaces import quat_multiply, rotvec_to_quat

SOURCES = ("policy", "teleop")
FRAMES = ("base", "tool")


@dataclass(frozen=True)
class TeleopParams:
    linear_scale: float = 1.0  # m/s per unit of twist.linear (drivers publish m/s, or -1..1 for a SpaceMouse)
    angular_scale: float = 1.0  # rad/s per unit of twist.angular
    max_linear: float = 2.0  # m/s after scaling: a faster twist is a corrupt or mis-scaled message, rejected
    max_angular: float = 6.0  # rad/s after scaling, likewise
    command_timeout: float = 0.25  # s: an older twist counts as zero, so a lost stream stops the motion at once

    def __post_init__(self) -> None:
        for name in ("linear_scale", "angular_scale", "max_linear", "max_angular", "command_timeout"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"teleop_{name} must be a positive number, got {value}")


@dataclass(frozen=True)
class Twist:
    """A validated, scaled teleoperation command in the base frame."""

    linear: np.ndarray  # (3,) m/s
    angular: np.ndarray  # (3,) rad/s
    frame: str = "base"  # "tool": linear and angular are in the gripper's frame, rotated at each tick


def check_twist(params: TeleopParams, linear, angular, frame: str) -> Twist | str:
    """Scale a raw twist; the rejection reason if it is unusable."""
    if frame not in FRAMES:
        return f"twist frame {frame!r} is neither of {FRAMES}"
    linear = np.asarray(linear, dtype=np.float64).reshape(-1)
    angular = np.asarray(angular, dtype=np.float64).reshape(-1)
    if linear.shape != (3,) or angular.shape != (3,):
        return f"malformed twist: linear {linear.shape}, angular {angular.shape}, expected 3 values each"
    if not (np.all(np.isfinite(linear)) and np.all(np.isfinite(angular))):
        return f"non-finite twist linear {linear.tolist()} angular {angular.tolist()}"
    linear, angular = linear * params.linear_scale, angular * params.angular_scale
    speed, turn = float(np.linalg.norm(linear)), float(np.linalg.norm(angular))
    if speed > params.max_linear:
        return (f"twist of {speed:.3g} m/s exceeds teleop_max_linear {params.max_linear} m/s "
                f"(a corrupt message, or teleop_linear_scale too large)")
    if turn > params.max_angular:
        return (f"twist of {turn:.3g} rad/s exceeds teleop_max_angular {params.max_angular} rad/s "
                f"(a corrupt message, or teleop_angular_scale too large)")
    return Twist(linear, angular, frame)


def rotate(quat: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """Rotate a (3,) vector by the unit (x, y, z, w) quaternion."""
    u, w = np.asarray(quat[:3], dtype=np.float64), float(quat[3])
    t = 2.0 * np.cross(u, vector)
    return vector + w * t + np.cross(u, t)


def integrate(position: np.ndarray, quat: np.ndarray, twist: Twist, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """The pose `dt` seconds along `twist` from (position, quat)."""
    linear, angular = twist.linear, twist.angular
    if twist.frame == "tool":
        linear, angular = rotate(quat, linear), rotate(quat, angular)
    moved = np.asarray(position, dtype=np.float64) + linear * dt
    turned = quat_multiply(rotvec_to_quat(angular * dt), quat)  # base-frame angular velocity: left product
    return moved, turned / np.linalg.norm(turned)


class RateGate:
    """Admits at most `rate_hz` messages per second per publisher (a token bucket of `burst` messages).

    Keys are publisher ids; a publisher silent for a minute is forgotten, so the table stays bounded by the
    publishers of the last minute. The empty key stands for a publisher the middleware did not identify (no
    publisher_gid in the message info): all such messages share one budget, and `unidentified` counts them."""

    def __init__(self, rate_hz: float, burst: float | None = None):
        if not (math.isfinite(rate_hz) and rate_hz > 0):
            raise ValueError(f"max_command_rate_hz must be a positive number, got {rate_hz}")
        self.rate = float(rate_hz)
        self.burst = float(burst if burst is not None else max(2.0, rate_hz / 5.0))
        self._buckets: dict[bytes, tuple[float, float]] = {}  # key -> (tokens, time of the last update)
        self._swept = 0.0
        self.unidentified = 0  # messages admitted or dropped under the empty key

    def allow(self, key: bytes, now: float) -> bool:
        if not key:
            self.unidentified += 1
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate) if now >= last else tokens
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        if now - self._swept > 60.0:
            self._swept = now
            self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60.0}
        return allowed
