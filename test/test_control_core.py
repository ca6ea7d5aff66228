"""ControllerCore without ROS or franky: chunk admission, interpolation, blending, limits, watchdog."""

from __future__ import annotations

import numpy as np
import pytest

from mambavla.control import ControllerCore, ControllerState, SafetyLimits
from mambavla.runtime.chunk import ActionChunk
from mambavla.spaces import EE_REFERENCE_QUAT, pose_to_vector, quat_angle_between

HOME_P = np.array([0.55, 0.0, 0.50])
HOME_Q = np.array(EE_REFERENCE_QUAT, dtype=float)
RATE = 100.0


def make_core(limits: SafetyLimits = SafetyLimits(), **kw) -> ControllerCore:
    core = ControllerCore(limits, blend_window=0.1, hold_after=0.5, stop_after=1.5, **kw)
    for k in range(11):  # one second of measured history at the home pose
        core.record_pose(k * 0.1, HOME_P, HOME_Q)
    core.activate(1.0)
    return core


def line_chunk(stamp: float, start: np.ndarray, velocity: np.ndarray, rows: int = 16, dt: float = 0.05,
               gripper: float = 0.0) -> ActionChunk:
    positions = start + np.arange(rows)[:, None] * dt * velocity
    vec = pose_to_vector(positions, np.broadcast_to(HOME_Q, (rows, 4)))
    actions = np.concatenate([vec, np.full((rows, 1), gripper)], axis=1)
    return ActionChunk(actions=actions, dt=dt, stamp=stamp)


def run(core: ControllerCore, t0: float, seconds: float, measured=None):
    targets = []
    for k in range(int(seconds * RATE)):
        t = t0 + k / RATE
        if measured is not None:
            core.record_pose(t, measured, HOME_Q)
        targets.append(core.update(t, 1.0 / RATE))
    return targets


def test_chunk_is_interpolated_between_rows_at_the_tick_rate():
    core = make_core()
    chunk = line_chunk(1.0, HOME_P, np.array([0.1, 0.0, 0.0]))
    assert core.submit(chunk, 1.0) is None
    targets = run(core, 1.0, 0.45)
    assert core.state == ControllerState.ACTIVE
    xs = np.array([t.position[0] for t in targets])
    # after the blend window the target is the chunk's line, between rows too (t = 1.0 + 0.42)
    assert xs[42] == pytest.approx(HOME_P[0] + 0.1 * 0.42, abs=2e-3)
    assert np.all(np.diff(xs) >= -1e-9)


def test_rows_already_in_the_past_are_dropped():
    core = make_core()
    chunk = line_chunk(1.0, HOME_P, np.array([0.0, 0.1, 0.0]))
    assert core.submit(chunk, 1.3) is None  # arrives 0.3 s late: executes from row 6
    run(core, 1.3, 0.01)
    assert core.status()["seconds_left"] == pytest.approx(1.0 + 15 * 0.05 - 1.3, abs=1e-6)


def test_streamed_target_never_exceeds_speed_limits():
    core = make_core()
    # fast but jump-free chunk: 0.9 m/s (45 mm per row) along y
    chunk = line_chunk(1.0, HOME_P, np.array([0.0, 0.9, 0.0]), rows=8)
    assert core.submit(chunk, 1.0) is None
    targets = run(core, 1.0, 0.5)
    steps = np.linalg.norm(np.diff([t.position for t in targets], axis=0), axis=1)
    assert steps.max() <= core.limits.max_linear_speed / RATE + 1e-9
    assert core.status()["speed_limited"]


def test_blending_leaves_no_jump_at_the_chunk_boundary():
    # speed limit far above the motion: the blend alone must smooth the seam (the limiter would hide a jump)
    core = make_core(SafetyLimits(max_linear_speed=10.0))
    assert core.submit(line_chunk(1.0, HOME_P, np.array([0.1, 0.0, 0.0])), 1.0) is None
    targets = run(core, 1.0, 0.4)
    # the replacement disagrees by 3 cm: the blend spreads that over the 0.1 s window (10 ticks)
    second = line_chunk(1.4, targets[-1].position + np.array([0.0, 0.03, 0.0]), np.array([0.1, 0.0, 0.0]))
    assert core.submit(second, 1.4) is None
    targets += run(core, 1.4, 0.4)
    steps = np.linalg.norm(np.diff([t.position for t in targets], axis=0), axis=1)
    assert not core.status()["speed_limited"]
    assert steps.max() < 0.006  # smoothstep peak 1.5 x 3 mm per tick plus 1 mm of motion; a seam would be 30 mm
    assert targets[-1].position[1] == pytest.approx(0.03, abs=2e-3)


def test_delta_chunk_is_relative_to_the_pose_at_observation_time():
    core = make_core()
    moved = HOME_P + np.array([0.02, 0.0, 0.0])
    for k in range(1, 6):  # the arm moved 2 cm between the observation (t=1.0) and now (t=1.05)
        core.record_pose(1.0 + k * 0.01, moved, HOME_Q)
    deltas = np.zeros((16, 7))
    deltas[:, 2] = -0.01  # 1 cm down from the observed pose
    assert core.submit(ActionChunk(actions=deltas, dt=0.05, stamp=1.0, action_mode="delta"), 1.05) is None
    targets = run(core, 1.05, 0.5)
    np.testing.assert_allclose(targets[-1].position, HOME_P + np.array([0.0, 0.0, -0.01]), atol=1e-6)
    assert float(quat_angle_between(targets[-1].quat, HOME_Q)) < 1e-6


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda a: a.__setitem__((3, 0), np.nan), "non-finite"),
        (lambda a: a.__setitem__((5, 2), np.inf), "non-finite"),
        (lambda a: a.__setitem__((slice(None), 2), -0.3), "outside workspace"),
        (lambda a: a.__setitem__((slice(8, None), 1), 0.3), "jump"),
        (lambda a: a.__setitem__((slice(8, None), 5), 1.0), "jump"),  # a yaw jump: tilt stays 0
        (lambda a: a.__setitem__((slice(None), 0), 0.75), "starts"),
        (lambda a: a.__setitem__((slice(None), 3), 1.3), "tilts"),
    ],
    ids=["nan", "inf", "workspace", "jump", "angle-jump", "start-offset", "tilt"],
)
def test_bad_chunks_are_rejected_with_a_reason_and_never_streamed(mutate, fragment):
    core = make_core()
    chunk = line_chunk(1.0, HOME_P, np.zeros(3))
    mutate(chunk.actions)
    reason = core.submit(chunk, 1.0)
    assert reason is not None and fragment in reason
    assert core.status()["last_rejection"] == reason and core.status()["chunks_rejected"] == 1
    targets = run(core, 1.0, 0.2)
    np.testing.assert_allclose(targets[-1].position, HOME_P)  # still holding
    assert core.state == ControllerState.IDLE


@pytest.mark.parametrize(
    ("stamp", "fragment"), [(1.0 - 50.0, "stale"), (1.0 + 50.0, "future"), (1.0 - 0.9, "past")],
    ids=["far-past", "far-future", "all-rows-past"],
)
def test_chunks_with_bad_stamps_are_rejected(stamp, fragment):
    core = make_core()
    reason = core.submit(line_chunk(stamp, HOME_P, np.zeros(3), rows=4), 1.0)
    assert reason is not None and fragment in reason


def test_yaw_is_free_but_tilt_is_limited():
    from mambavla.control.safety import tilt
    from mambavla.spaces import vector_to_pose

    _, yawed = vector_to_pose(np.array([[0.5, 0, 0.3, 0, 0, 1.5]]))  # 1.5 rad about the gripper axis
    _, tilted = vector_to_pose(np.array([[0.5, 0, 0.3, 0.8, 0, 0]]))
    assert tilt(yawed)[0] == pytest.approx(0.0, abs=1e-9)
    assert tilt(tilted)[0] == pytest.approx(0.8, abs=1e-9)


def test_wrong_action_names_are_rejected():
    core = make_core()
    chunk = ActionChunk(actions=np.zeros((4, 7)), dt=0.05, stamp=1.0, action_names=("a", "b", "c", "d", "e", "f", "g"))
    assert "action names" in core.submit(chunk, 1.0)


def test_stopped_controller_ignores_chunks():
    core = ControllerCore(SafetyLimits(), hold_after=0.5, stop_after=1.5)
    core.record_pose(0.0, HOME_P, HOME_Q)
    assert core.state == ControllerState.STOPPED
    assert "STOPPED" in core.submit(line_chunk(0.0, HOME_P, np.zeros(3)), 0.0)
    assert core.update(0.0, 0.01) is None


def test_watchdog_holds_the_measured_pose_then_asks_to_stop():
    core = make_core()
    assert core.submit(line_chunk(1.0, HOME_P, np.array([0.05, 0.0, 0.0])), 1.0) is None
    arm = HOME_P + np.array([0.02, 0.0, 0.0])
    targets = run(core, 1.0, 0.6, measured=arm)  # 0.6 s > hold_after
    assert core.state == ControllerState.HOLDING
    targets += run(core, 1.6, 0.3, measured=arm)
    np.testing.assert_allclose(targets[-1].position, arm, atol=1e-9)  # holds where the arm is
    assert not targets[-1].stop
    later = run(core, 1.9, 0.7, measured=arm)  # past stop_after = 1.5 s
    assert later[-1].stop
    core.deactivate("watchdog")
    assert core.state == ControllerState.STOPPED


def test_holding_holds_where_the_arm_is_when_it_lags_its_targets():
    core = make_core()
    assert core.submit(line_chunk(1.0, HOME_P, np.array([0.1, 0.0, 0.0])), 1.0) is None
    lag = np.array([0.025, 0.0, 0.0])  # a slow robot (franky-sim at 0.28x real time): 25 mm behind
    held_from = None
    for k in range(100):
        t = 1.0 + k / RATE
        arm = (core.target[0] - lag) if k else HOME_P
        core.record_pose(t, arm, HOME_Q)
        target = core.update(t, 1.0 / RATE)
        if core.state == ControllerState.HOLDING:
            held_from = held_from if held_from is not None else arm
            # from the first holding tick on, the streamed target is the arm's pose: nothing pulls it on
            assert np.linalg.norm(target.position - held_from) < 1e-9, (k, target.position, held_from)
    assert held_from is not None and held_from[0] > HOME_P[0] + 0.02


def test_watchdog_runs_on_the_monotonic_clock_through_a_ros_clock_step_back():
    core = make_core()
    assert core.submit(line_chunk(1.0, HOME_P, np.zeros(3)), 1.0, mono=50.0) is None
    for k in range(70):  # the ROS clock stepped 100 s back right after the chunk; 0.7 s pass
        core.update(1.0 - 100.0 + k / RATE, 1.0 / RATE, mono=50.0 + k / RATE)
    assert core.state == ControllerState.HOLDING


def test_pose_history_survives_a_clock_step_back():
    core = make_core()
    for k in range(11):  # the clock jumped back from ~1 s to 0.2 s, the arm moved 1 cm in x
        core.record_pose(0.2 + k * 0.01, HOME_P + np.array([0.01, 0.0, 0.0]), HOME_Q)
    deltas = np.zeros((8, 7))
    chunk = ActionChunk(actions=deltas, dt=0.05, stamp=0.25, action_mode="delta")
    assert core.submit(chunk, 0.3) is None
    targets = run(core, 0.3, 0.3)
    np.testing.assert_allclose(targets[-1].position, HOME_P + np.array([0.01, 0.0, 0.0]), atol=1e-6)


def test_a_single_row_chunk_is_a_hold_target():
    core = make_core()
    goal = HOME_P + np.array([0.0, 0.02, 0.0])
    row = np.concatenate([pose_to_vector(goal, HOME_Q), [0.0]])[None]
    assert core.submit(ActionChunk(actions=row, dt=0.05, stamp=0.95), 1.0) is None  # stamped with its observation
    targets = run(core, 1.0, 0.5)
    np.testing.assert_allclose(targets[-1].position, goal, atol=1e-6)


@pytest.mark.parametrize("dt", [1e-6, 3600.0])
def test_chunk_dt_is_bounded(dt):
    core = make_core()
    reason = core.submit(line_chunk(1.0, HOME_P, np.zeros(3), rows=4, dt=dt), 1.0)
    assert reason is not None and "dt" in reason


def test_rows_just_outside_the_workspace_are_clamped_onto_it_and_far_ones_reject_the_chunk():
    """A grasp a policy aims 5 mm under the workspace floor runs at the floor (the arm never leaves the
    box); 5 cm under it is not noise and rejects the chunk."""
    limits = SafetyLimits(workspace_min=(0.25, -0.45, 0.45), workspace_max=(0.80, 0.45, 0.70), workspace_clamp=0.02)
    core = make_core(limits)
    floor = limits.workspace_min[2]
    down = line_chunk(1.0, HOME_P, np.array([0.0, 0.0, -0.2]))  # z 0.50 -> 0.35 over 0.75 s, 10 mm a row
    down.actions[:, 2] = np.maximum(down.actions[:, 2], floor - 0.005)  # rows 6-15 at 5 mm under the floor
    under = int((down.actions[:, 2].astype(np.float64) < floor).sum())  # float32 rows, compared as the core does
    assert under >= 10
    assert core.submit(down, 1.0) is None
    targets = run(core, 1.0, 0.45)  # until just before the watchdog's hold (hold_after 0.5 s)
    z = np.array([t.position[2] for t in targets])
    assert z.min() >= floor - 1e-9 and z[-1] == pytest.approx(floor, abs=1e-6)
    assert core.status()["rows_clamped"] == under

    far = line_chunk(2.5, targets[-1].position, np.zeros(3))
    far.actions[8:, 2] = floor - 0.05
    reason = core.submit(far, 2.5)
    assert reason is not None and "outside workspace" in reason and "workspace_clamp" in reason


def test_gripper_rule_closes_at_once_and_opens_only_after_the_command_asks_for_open_without_a_break():
    from mambavla.control.config import TrackingParams
    from mambavla.control.gripper import GripperRule

    plain = GripperRule()  # no delay: the hysteresis alone
    assert [plain.update(v, t) for t, v in enumerate([0.3, 0.7, 0.5, 0.45, 0.3, 0.55, 0.61])] == [
        False, True, True, True, False, False, True]
    rule = GripperRule(open_delay=0.3)
    steps = [(0.0, 0.9, True),   # closes at once
             (0.1, 0.1, True),   # asks to open: not yet
             (0.2, 0.9, True),   # a break: the wait starts again
             (0.3, 0.1, True),
             (0.5, 0.1, True),   # 0.2 s of asking
             (0.55, 0.45, True),  # inside the hysteresis band: not asking, so a break too
             (0.6, 0.1, True),
             (0.89, 0.1, True),  # 0.29 s of asking
             (0.9, 0.1, False),  # 0.3 s: opens
             (0.91, 0.9, True)]  # and closes again at once
    assert [rule.update(v, t) for t, v, _ in steps] == [closed for _, _, closed in steps]
    rule.update(0.1, 5.0)  # asking from t = 5 s ...
    # ... then the clock went back
    assert rule.update(0.1, 1.0) and rule.update(0.1, 1.29) and not rule.update(0.1, 1.3)
    with pytest.raises(ValueError, match="gripper_open_delay"):
        GripperRule(open_delay=-0.1)
    with pytest.raises(ValueError, match="gripper_open_delay"):
        TrackingParams.from_params({"gripper_open_delay": -1.0})
    assert TrackingParams.from_params({"gripper_open_delay": 0.5}).gripper_open_delay == 0.5


def test_gripper_worker_keeps_the_last_plausible_width_when_the_hand_reports_one_that_is_not_a_finger_position():
    import threading
    import time

    from mambavla.control.gripper import GripperWorker

    class Hand:  # stands in for the one read franky-sim cannot be made to get wrong on demand: the width poll
        def __init__(self, widths):
            self._widths, self.polled = list(widths), threading.Event()

        def move_async(self, width, speed):  # the worker opens the hand first
            return self

        def wait(self, timeout):
            return True

        @property
        def width(self):
            value = self._widths.pop(0) if len(self._widths) > 1 else self._widths[0]
            if len(self._widths) == 1:
                self.polled.set()
            return value

    # franky-sim's hand answered -1.2e296 for a few polls while grasping; a NaN, a negative width and one past the
    # stroke are not finger positions either. 0.0805 is inside the tolerance of the 0.08 m open width.
    hand = Hand([0.08, -1.2292388719607037e296, float("nan"), -0.02, 0.3, 0.0805, 0.041, 1e9])
    worker = GripperWorker(hand, 0.1, 20.0, 0.08)
    try:
        assert hand.polled.wait(5.0)  # the worker polls every 0.1 s
        time.sleep(0.15)  # at least one poll of the last value
    finally:
        worker.close()
    assert worker.width == 0.041
    assert worker.implausible_widths >= 5  # four in the list, and the last value once or more


@pytest.mark.parametrize("name, value", [("damping", [10.0, 10.0, 10.0]), ("damping", [-1.0, 5.0, 5.0, 5.0, 5.0, 5.0]),
                                         ("translational_stiffness", -800.0), ("rotational_stiffness", float("nan")),
                                         ("translational_error_clip", [0.05, 0.05]),
                                         ("rotational_error_clip", [0.2, 0.0, 0.2]), ("gripper_force", 0.0),
                                         ("gripper_speed", -0.1)])
def test_impedance_and_gripper_settings_franky_would_refuse_or_ignore_are_refused_at_start(name, value):
    from mambavla.control.config import SIM_PARAM_FILES, TrackingParams, load_params

    with pytest.raises(ValueError, match=name):
        TrackingParams.from_params({name: value})
    for files in (SIM_PARAM_FILES[:1], SIM_PARAM_FILES):  # the shipped files pass
        TrackingParams.from_params(load_params(files))
    assert TrackingParams.from_params({"damping": [20.0] * 6}).tracker_kwargs()["damping"].tolist() == [20.0] * 6


# ---- teleoperation: a twist stream as the command source ----


def teleop_core(limits: SafetyLimits = SafetyLimits(), **kw) -> ControllerCore:
    core = make_core(limits, **kw)
    assert "policy -> teleop" in core.set_source("teleop")
    return core


def stream_twist(core: ControllerCore, t0: float, seconds: float, linear, angular=(0.0, 0.0, 0.0), frame="base",
                 every: int = 5):
    """Ticks at RATE with a twist every `every` ticks (20 Hz, as a joystick driver publishes)."""
    targets = []
    for k in range(int(round(seconds * RATE))):
        t = t0 + k / RATE
        if k % every == 0:
            reason = core.submit_twist(linear, angular, t, stamp=t, frame=frame)
            assert reason is None, reason
        targets.append(core.update(t, 1.0 / RATE))
    return targets


def test_a_twist_stream_is_integrated_into_the_streamed_target():
    core = teleop_core()
    targets = stream_twist(core, 1.0, 1.0, (0.0, 0.1, -0.05))
    assert core.state == ControllerState.ACTIVE and core.status()["command_source"] == "teleop"
    moved = targets[-1].position - HOME_P
    # one second at (0, 0.1, -0.05) m/s, less the first tick's 10 ms (the target moves from the tick after)
    assert moved == pytest.approx([0.0, 0.099, -0.0495], abs=1.5e-3)
    assert quat_angle_between(targets[-1].quat, HOME_Q) < 1e-9


def test_a_twist_in_the_tool_frame_moves_along_the_gripper_axes():
    core = teleop_core()
    # the reference orientation points the gripper's z down: +z in the tool frame is -z in the base frame
    targets = stream_twist(core, 1.0, 0.5, (0.0, 0.0, 0.1), frame="tool")
    moved = targets[-1].position - HOME_P
    assert moved[2] == pytest.approx(-0.049, abs=1.5e-3) and abs(moved[0]) < 1e-6 and abs(moved[1]) < 1e-6


def test_an_angular_twist_turns_the_gripper_about_the_base_axis():
    core = teleop_core()
    targets = stream_twist(core, 1.0, 0.5, (0.0, 0.0, 0.0), angular=(0.0, 0.0, 0.4))
    assert quat_angle_between(targets[-1].quat, HOME_Q) == pytest.approx(0.4 * 0.49, abs=5e-3)
    assert core.status()["teleop_limited"] == ""  # yaw keeps the gripper pointing down


def test_a_twist_stops_at_the_workspace_box_and_slides_along_it():
    limits = SafetyLimits(workspace_max=(0.80, 0.45, 0.52))
    core = teleop_core(limits)
    targets = stream_twist(core, 1.0, 1.0, (0.1, 0.0, 0.1))  # up into the ceiling, and forward
    final = targets[-1].position
    assert final[2] == pytest.approx(0.52, abs=1e-9)  # stopped at the ceiling ...
    assert final[0] == pytest.approx(HOME_P[0] + 0.099, abs=1.5e-3)  # ... still moving forward along it
    assert max(t.position[2] for t in targets) <= 0.52 + 1e-12
    assert core.status()["teleop_limited"] == "workspace"


def test_a_twist_cannot_tilt_the_gripper_past_max_tilt():
    core = teleop_core(SafetyLimits(max_tilt=0.3))
    targets = stream_twist(core, 1.0, 2.0, (0.02, 0.0, 0.0), angular=(0.5, 0.0, 0.0))
    from mambavla.control.safety import tilt

    tilts = tilt(np.array([t.quat for t in targets]))
    assert tilts.max() <= 0.3 + 1e-9 and tilts.max() > 0.25  # turned up to the limit, not beyond
    assert targets[-1].position[0] - HOME_P[0] == pytest.approx(0.0398, abs=2e-3)  # translation goes on
    assert core.status()["teleop_limited"] == "tilt"


def test_a_fast_twist_is_limited_to_max_linear_speed():
    core = teleop_core()
    targets = stream_twist(core, 1.0, 0.5, (1.5, 0.0, 0.0))  # under teleop_max_linear, over max_linear_speed
    steps = np.linalg.norm(np.diff([t.position for t in targets], axis=0), axis=1)
    assert steps.max() == pytest.approx(core.limits.max_linear_speed / RATE, rel=1e-6)
    assert core.status()["speed_limited"]


BAD_TWISTS = {
    "nan": (dict(linear=(np.nan, 0.0, 0.0), angular=(0.0, 0.0, 0.0)), "non-finite"),
    "inf-angular": (dict(linear=(0.0, 0.0, 0.0), angular=(0.0, np.inf, 0.0)), "non-finite"),
    "absurd-speed": (dict(linear=(0.0, 40.0, 0.0), angular=(0.0, 0.0, 0.0)), "too fast"),
    "absurd-turn": (dict(linear=(0.0, 0.0, 0.0), angular=(0.0, 0.0, 100.0)), "too fast"),
    "nan-stamp": (dict(linear=(0.1, 0.0, 0.0), angular=(0.0, 0.0, 0.0), stamp=np.nan), "non-finite"),
    "stale": (dict(linear=(0.1, 0.0, 0.0), angular=(0.0, 0.0, 0.0), stamp=-10.0), "stale"),
    "future": (dict(linear=(0.1, 0.0, 0.0), angular=(0.0, 0.0, 0.0), stamp=1e9), "future"),
    "frame": (dict(linear=(0.1, 0.0, 0.0), angular=(0.0, 0.0, 0.0), frame="camera"), "frame"),
}


@pytest.mark.parametrize("case", list(BAD_TWISTS))
def test_bad_twists_are_rejected_with_a_counted_reason_and_never_move_the_target(case):
    core = teleop_core()
    kwargs, kind = BAD_TWISTS[case]
    kwargs = {"stamp": 1.0, **kwargs}
    assert core.submit_twist(now=1.0, **kwargs) is not None
    targets = run(core, 1.0, 0.3)
    assert np.linalg.norm(targets[-1].position - HOME_P) < 1e-12
    status = core.status()
    assert status["teleop_rejections_by_kind"] == {kind: 1} and status["teleop_rejected"] == 1
    assert status["state"] == "IDLE" and status["chunks_rejected"] == 0


def test_a_nan_gripper_command_is_rejected_and_a_valid_one_drives_the_gripper():
    core = teleop_core()
    assert "non-finite" in core.submit_gripper(float("nan"))
    assert core.update(1.0, 0.01).gripper == 0.0
    assert core.submit_gripper(1.0) is None
    assert core.update(1.01, 0.01).gripper == 1.0


def test_a_twist_stream_that_stops_halts_the_target_then_holds_then_stops():
    core = teleop_core()
    stream_twist(core, 1.0, 0.5, (0.1, 0.0, 0.0))
    # the stream stops at t = 1.45 (the last twist): the target stands still after command_timeout ...
    targets = run(core, 1.5, 0.4)
    still = [t.position[0] for t in targets[25:]]
    assert max(still) - min(still) < 1e-12 and core.state == ControllerState.ACTIVE
    # ... the watchdog holds the measured pose after hold_after (0.5 s) ...
    run(core, 1.9, 0.1, measured=HOME_P + np.array([0.03, 0.0, 0.0]))
    assert core.state == ControllerState.HOLDING and "teleoperation command" in core.reason
    assert core.target[0] == pytest.approx(HOME_P + np.array([0.03, 0.0, 0.0]))
    # ... and asks for a stop after stop_after (1.5 s)
    targets = run(core, 2.0, 1.0)
    assert any(t is not None and t.stop for t in targets) and "stop_after" in core.reason


def test_a_twist_received_longer_than_command_timeout_ago_moves_nothing():
    core = teleop_core()
    # an unstamped twist taken at t = 1.0 that reached the reader 0.4 s earlier (> command_timeout 0.25 s)
    assert core.submit_twist((0.1, 0.0, 0.0), (0.0, 0.0, 0.0), 1.0, mono=0.6) is None
    targets = run(core, 1.0, 0.3)
    assert np.linalg.norm(targets[-1].position - HOME_P) < 1e-12
    assert core.submit_twist((0.1, 0.0, 0.0), (0.0, 0.0, 0.0), 1.3, mono=1.3) is None  # a fresh one drives
    assert run(core, 1.3, 0.1)[-1].position[0] > HOME_P[0]


def test_only_the_active_source_drives_and_switching_holds_the_target():
    core = make_core()
    assert "command source is policy" in core.submit_twist((0.1, 0.0, 0.0), (0.0, 0.0, 0.0), 1.0)
    assert core.status()["teleop_rejections_by_kind"] == {"inactive source": 1}
    assert core.submit(line_chunk(1.0, HOME_P, np.array([0.1, 0.0, 0.0])), 1.0) is None
    targets = run(core, 1.0, 0.3)
    assert targets[-1].position[0] > HOME_P[0] + 0.015  # the chunk moves the target
    core.set_source("teleop")
    assert core.state == ControllerState.IDLE and "switched from policy to teleop" in core.reason
    held = run(core, 1.3, 0.3)  # the chunk no longer steers: the target stays where the switch left it
    assert np.linalg.norm(held[-1].position - targets[-1].position) < 1e-12
    reason = core.submit(line_chunk(1.6, held[-1].position, np.array([0.1, 0.0, 0.0])), 1.6)
    assert "command source is teleop" in reason and "~/use_policy" in reason
    assert core.status()["rejections_by_kind"] == {"inactive source": 1}
    assert core.submit_twist((0.0, 0.1, 0.0), (0.0, 0.0, 0.0), 1.6) is None
    assert core.state == ControllerState.ACTIVE


def test_a_publisher_over_its_message_budget_is_gated_and_others_are_not():
    from mambavla.control.teleop import RateGate

    gate = RateGate(rate_hz=50.0, burst=5.0)
    flood = sum(gate.allow(b"flood", k * 0.0005) for k in range(2000))  # 2,000 messages in one second
    assert 50 <= flood <= 56  # the burst, then 50 per second
    assert all(gate.allow(b"valid", k * 0.2) for k in range(6))  # a 5 Hz publisher beside it is untouched
    assert gate.unidentified == 0


def test_publishers_the_middleware_does_not_identify_share_one_budget_and_are_counted():
    from mambavla.control.teleop import RateGate

    def valid_taken(flood_key: bytes, valid_key: bytes) -> tuple[int, int]:
        """Messages taken from a 5 Hz publisher beside a 2 kHz flood over 1 s, and the unidentified count."""
        gate = RateGate(rate_hz=50.0, burst=5.0)
        taken = 0
        for k in range(1, 2001):
            gate.allow(flood_key, k * 0.0005)
            if k % 400 == 0:
                taken += gate.allow(valid_key, k * 0.0005)
        return taken, gate.unidentified

    assert valid_taken(b"flood", b"valid") == (5, 0)
    taken, unidentified = valid_taken(b"", b"")  # one bucket: the flood spends every token as it refills
    assert taken < 5 and unidentified == 2005


def test_a_stopped_controller_still_takes_the_teleop_gripper_command_but_not_in_error():
    core = teleop_core()
    core.deactivate("stopped by ~/stop")
    assert core.submit_gripper(1.0) is None and core.gripper_command == 1.0  # the hand of an arm guided by hand
    assert core.submit_twist((0.1, 0.0, 0.0), (0.0, 0.0, 0.0), 1.0) is not None  # the arm itself is not driven
    core.deactivate("franky: reflex", error=True)
    assert "ERROR" in core.submit_gripper(0.0) and core.gripper_command == 1.0
