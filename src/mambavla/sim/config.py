"""Every number of the simulated workcell in one place: scene geometry, cameras, task thresholds,
expert timing. Lengths in metres, angles in radians, times in seconds of simulated time.

The robot base is the world origin and the table top is the plane z = 0, so base-frame and world
coordinates coincide (actions and proprio are base-frame).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.10),
    "green": (0.12, 0.65, 0.18),
    "blue": (0.12, 0.28, 0.85),
    "yellow": (0.95, 0.80, 0.10),
    "purple": (0.55, 0.20, 0.70),
}
CUBE_COLOURS: tuple[str, ...] = ("red", "green", "blue")
PLATE_COLOURS: tuple[str, ...] = ("yellow", "purple")

# Seeds at or above this are held out for evaluation; `collect` refuses them unless asked.
EVAL_SEED_BASE = 1_000_000


@dataclass(frozen=True)
class CameraConfig:
    name: str
    parent: str  # "world" or a body name of the robot without its "robot0_" prefix
    pos: tuple[float, float, float]
    xyaxes: tuple[float, float, float, float, float, float]
    fovy: float


@dataclass(frozen=True)
class WorkcellConfig:
    camera_size: tuple[int, int] = (128, 128)  # (height, width)
    cameras: tuple[CameraConfig, ...] = (
        # Facing the robot from across the table, 45 degrees down; image right is the robot's left (+y).
        CameraConfig("front", "world", (1.1, 0.0, 0.62), (0.0, 1.0, 0.0, -0.7071, 0.0, 0.7071), 50.0),
        # On the hand, beside the flange, looking along the fingers (tilted 14 degrees towards them).
        CameraConfig("wrist", "hand", (0.07, 0.0, 0.03), (0.0, 1.0, 0.0, 0.970, 0.0, 0.243), 75.0),
    )
    shadows: bool = False  # osmesa renders several times faster without shadows
    policy_dt: float = 0.05  # recording / policy rate (20 Hz)
    monitor_dt: float = 0.01  # how often the task monitor reads MuJoCo state in the server loop

    table_size: tuple[float, float] = (1.1, 1.2)  # x, y extent of the table top
    table_rgba: tuple[float, float, float, float] = (0.62, 0.50, 0.38, 1.0)  # wood
    top_light: tuple[float, float, float] = (0.35, 0.35, 0.35)  # diffuse colour of the light above the table
    table_center_x: float = 0.45
    cube_half: float = 0.02
    cube_mass: float = 0.05
    cube_friction: tuple[float, float, float] = (1.5, 0.01, 0.001)
    plate_radius: float = 0.06
    plate_half_height: float = 0.002

    # Object placement area (x, y), minimum centre distance between objects.
    object_x: tuple[float, float] = (0.38, 0.62)
    object_y: tuple[float, float] = (-0.20, 0.20)
    min_object_distance: float = 0.10
    max_cube_yaw: float = 0.6
    # Home joint configuration (gripper pointing down) and its per-episode jitter.
    home_q: tuple[float, ...] = (0.0, -0.3, 0.0, -2.2, 0.0, 1.9, 0.785)
    home_q_jitter: float = 0.05

    # Task thresholds.
    lift_height: float = 0.05  # cube bottom above the table
    lift_hold: float = 0.5
    place_hold: float = 0.3
    push_y: float = 0.17  # |y| the cube centre must pass for push-left / push-right
    push_hold: float = 0.3
    push_lane_y: float = 0.06  # pushed cube starts with |y| below this
    push_lane_clearance: float = 0.10  # other objects keep this |dx| from the pushed cube
    push_max_cube_yaw: float = 0.3  # a cube turned further tends to spin off a sideways push

    # Expert.
    stiffness: float = 1000.0
    rotational_stiffness: float = 60.0
    tracker_period: float = 0.01
    # Peak target speeds (min-jerk peak = 1.875 x mean), kept under the controller's max_linear_speed
    # (0.25 m/s) so a policy that imitates the expert asks for nothing the controller would clip.
    speed: float = 0.20  # m/s, free-space moves
    approach_speed: float = 0.15  # m/s, descending onto a cube or plate, pushing
    lift_speed: float = 0.18  # m/s, lifting and retreating
    approach_height: float = 0.10  # above the cube centre before descending
    grasp_height: float = 0.022  # TCP height when closing the fingers
    carry_height: float = 0.14
    grasp_force: float = 30.0
    gripper_speed: float = 0.08
    settle_tolerance: float = 0.006
    settle_timeout: float = 1.5
    episode_timeout: float = 25.0
    waypoint_jitter: float = 0.004
    timing_jitter: float = 0.25  # moves take up to this fraction longer (never faster than the peak speed)


def _turned(camera: CameraConfig, dx: float, dy: float, dz: float, yaw_deg: float) -> CameraConfig:
    """`camera` moved by (dx, dy, dz) and turned by `yaw_deg` about the world's vertical axis."""
    c, s = math.cos(math.radians(yaw_deg)), math.sin(math.radians(yaw_deg))
    x1, y1, z1, x2, y2, z2 = camera.xyaxes
    xyaxes = (c * x1 - s * y1, s * x1 + c * y1, z1, c * x2 - s * y2, s * x2 + c * y2, z2)
    x, y, z = camera.pos
    return replace(camera, pos=(x + dx, y + dy, z + dz), xyaxes=tuple(round(v, 4) for v in xyaxes))


def _other_cell(dx: float, dy: float, dz: float, yaw_deg: float) -> WorkcellConfig:
    base = WorkcellConfig()
    front, *others = base.cameras
    return replace(base, cameras=(_turned(front, dx, dy, dz, yaw_deg), *others),
                   table_rgba=(0.42, 0.47, 0.55, 1.0), top_light=(0.50, 0.44, 0.32))


# Named workcells. "changed" and "moved" stand for a user's cell that is not ours, to measure how the shipped
# policy transfers and what fine-tuning on a few demonstrations recovers. Both have a grey-blue table instead of
# wood and a brighter, warmer light above it. In "changed" the front camera is 6.6 cm away from where training saw
# it (3 cm nearer the robot, 5 cm to its left, 3 cm lower) and turned 5 degrees; in "moved" it is 18.5 cm away
# (10 cm nearer, 15 cm to the left, 4 cm higher) and turned 14 degrees. The wrist camera, the robot and the
# tasks are the same.
CELLS: dict[str, WorkcellConfig] = {"sim": WorkcellConfig(), "changed": _other_cell(-0.03, 0.05, -0.03, 5.0),
                                    "moved": _other_cell(-0.10, 0.15, 0.04, 14.0)}


def cell_config(name: str) -> WorkcellConfig:
    if name not in CELLS:
        raise ValueError(f"unknown cell {name!r}; choose from {', '.join(CELLS)}")
    return CELLS[name]
