"""policy_node's observation choice without ROS: the infer modes, pairing frames with the robot
state at the frames' time, stale and new frames."""

from __future__ import annotations

import numpy as np
import pytest

from mambavla.runtime.schedule import Frame, InferenceSchedule, ObservationBuffer, PeriodSchedule, ScheduleConfig
from mambavla.spaces import EE_REFERENCE_QUAT, pose_to_vector

Q = np.array(EE_REFERENCE_QUAT, dtype=float)
RGB = np.zeros((4, 4, 3), dtype=np.uint8)


def feed_state(buf: ObservationBuffer, t0: float, t1: float, rate: float = 50.0, velocity=(0.1, 0.0, 0.0)):
    for t in np.arange(t0, t1, 1.0 / rate):
        buf.add_pose(t, np.array([0.5, 0.0, 0.3]) + t * np.asarray(velocity), Q)
        buf.add_fingers(t, np.array([0.04, 0.04]))


def test_period_mode_steps_once_per_policy_period_of_frame_time():
    rng = np.random.default_rng(0)
    buf = ObservationBuffer(2, max_age=1.0)
    schedule = PeriodSchedule(0.2)
    used = []
    for k in range(240):  # 8 s of 30 Hz frames with 3 ms stamp jitter; the worker polls after each frame
        t = 1.0 + k / 30.0 + rng.uniform(-0.003, 0.003)
        feed_state(buf, t - 1 / 30.0, t + 0.01)
        buf.add_frame(0, Frame(RGB, t, t + 0.01))
        buf.add_frame(1, Frame(RGB, t, t + 0.01))
        obs = buf.select(t + 0.01, schedule.not_before())
        if not isinstance(obs, str):
            buf.consume(obs)
            schedule.consumed(obs.stamp)
            used.append(obs.stamp)
    spacing = np.diff(used)
    assert spacing.min() >= 0.2 - 0.011  # never closer than trained (a frame may be a tolerance early)
    assert np.mean(spacing) < 0.2 + 1 / 30.0  # later only by less than one camera frame
    assert len(used) >= 8.0 / (0.2 + 1 / 30.0) - 1


def test_period_schedule_makes_no_catch_up_steps():
    schedule = PeriodSchedule(0.2)
    assert schedule.not_before() == float("-inf")
    schedule.consumed(1.0)
    assert schedule.not_before() == pytest.approx(1.2 - 0.01)
    schedule.consumed(2.0)  # the worker was busy for a second: no burst of steps on older frames
    assert schedule.not_before() == pytest.approx(2.2 - 0.01)


def test_frames_are_paired_with_the_pose_at_their_stamp_not_the_latest():
    buf = ObservationBuffer(1, max_age=1.0)
    feed_state(buf, 0.0, 2.0, velocity=(0.1, 0.0, 0.0))  # moving 10 cm/s
    buf.add_frame(0, Frame(RGB, 1.5, 2.0))  # the frame is 0.5 s older than the newest pose
    obs = buf.select(2.0)
    expected = pose_to_vector(np.array([0.5 + 0.15, 0.0, 0.3]), Q)
    np.testing.assert_allclose(obs.proprio[:6], expected, atol=1e-5)


def test_a_frame_newer_than_the_robot_state_waits_for_it():
    buf = ObservationBuffer(1, max_age=1.0)
    feed_state(buf, 0.0, 1.0)
    buf.add_frame(0, Frame(RGB, 1.5, 1.5))
    assert "lags" in buf.select(1.5)


def test_finger_state_far_from_the_frame_time_is_not_used():
    buf = ObservationBuffer(1, max_age=5.0)
    for t in np.arange(0.0, 2.0, 0.02):
        buf.add_pose(t, np.array([0.5, 0.0, 0.3]), Q)
    buf.add_fingers(0.0, np.array([0.04, 0.04]))  # the finger stream stopped 2 s ago
    buf.add_frame(0, Frame(RGB, 1.98, 2.0))
    assert "finger" in buf.select(2.0)


def test_a_used_frame_is_not_fed_twice_and_stale_frames_are_dropped():
    buf = ObservationBuffer(1, max_age=0.5)
    feed_state(buf, 0.0, 2.0)
    buf.add_frame(0, Frame(RGB, 1.9, 1.95))
    obs = buf.select(1.95)
    buf.consume(obs)
    assert "new frames" in buf.select(1.96)
    assert "stale" in buf.drop_stale(3.0) and buf.frames_dropped == 1


def test_a_clock_step_back_clears_the_state_history():
    buf = ObservationBuffer(1, max_age=1.0)
    feed_state(buf, 100.0, 101.0)
    feed_state(buf, 0.0, 1.0, velocity=(0.0, 0.0, 0.0))  # the clock jumped back 100 s
    buf.add_frame(0, Frame(RGB, 0.9, 0.95))
    obs = buf.select(0.95)
    assert obs.proprio[0] == pytest.approx(0.5, abs=1e-6)


def test_rate_mode_steps_at_once_on_a_clock_that_starts_at_zero():
    """A simulated clock starts at 0 s: the first step must not wait a period for a step that never ran."""
    schedule = InferenceSchedule(ScheduleConfig(n_cameras=1, policy_period=0.2, chunk_duration=0.8, infer_mode="rate",
                                                infer_period=0.2, max_observation_age=1.0))
    feed_state(schedule.buffer, 0.0, 0.5)
    schedule.buffer.add_frame(0, Frame(RGB, 0.0, 0.0))
    assert schedule.due(0.0)
    observation = schedule.choose(0.0)
    assert not isinstance(observation, str) and observation.stamp == 0.0
    schedule.consume(observation, 0.0)
    assert not schedule.due(0.1) and schedule.next_due(0.1) == pytest.approx(0.2) and schedule.due(0.2)


def test_consumed_mode_waits_for_frames_past_the_executed_fraction_and_a_new_instruction_starts_over():
    schedule = InferenceSchedule(ScheduleConfig(n_cameras=1, policy_period=0.2, chunk_duration=0.8,
                                                infer_mode="consumed", consume_fraction=0.5, max_observation_age=1.0))
    feed_state(schedule.buffer, 0.0, 1.0)
    schedule.buffer.add_frame(0, Frame(RGB, 0.1, 0.1))
    schedule.consume(schedule.choose(0.1), 0.1)
    schedule.chunk_published(0.1)
    schedule.buffer.add_frame(0, Frame(RGB, 0.3, 0.3))
    assert schedule.choose(0.3) == "waiting for frames taken after 0.500"  # 0.1 + 0.5 * 0.8
    schedule.restart()
    assert schedule.choose(0.3).stamp == 0.3


def test_the_schedule_continues_a_buffer_that_filled_before_it():
    """policy_node keeps robot state from its start; the schedule built after loading goes on with it."""
    buffer = ObservationBuffer(1, max_age=1.0)
    feed_state(buffer, 0.0, 0.5)
    buffer.add_frame(0, Frame(RGB, 0.4, 0.4))
    config = ScheduleConfig(n_cameras=1, policy_period=0.2, chunk_duration=0.8, max_observation_age=1.0)
    schedule = InferenceSchedule(config, buffer)
    assert schedule.buffer is buffer and schedule.choose(0.45).stamp == 0.4
    with pytest.raises(ValueError, match="needs 2 for"):
        InferenceSchedule(ScheduleConfig(n_cameras=2, policy_period=0.2, chunk_duration=0.8, max_observation_age=1.0),
                          buffer)
