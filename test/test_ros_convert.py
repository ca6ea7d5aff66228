"""Message conversion without DDS: frames out, chunk <-> JointTrajectory, poses (decoding: test_images.py)."""

from __future__ import annotations

import numpy as np
import pytest

from mambavla.data.images import image_to_rgb
from mambavla.ros.convert import (
    DELTA_SUFFIX,
    chunk_to_trajectory,
    pose_from_msg,
    pose_to_msg,
    rgb_to_image,
    seconds_to_stamp,
    stamp_to_seconds,
    trajectory_to_chunk,
)
from mambavla.runtime.chunk import ActionChunk

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (6, 8, 3), dtype=np.uint8)


def test_rgb_image_round_trip_with_resize():
    msg = rgb_to_image(RGB, 12.5, "front_camera")
    assert stamp_to_seconds(msg.header.stamp) == pytest.approx(12.5)
    np.testing.assert_array_equal(image_to_rgb(msg), RGB)
    assert image_to_rgb(msg, (3, 4)).shape == (3, 4, 3)


@pytest.mark.parametrize("mode", ["absolute", "delta"])
def test_chunk_round_trips_through_joint_trajectory(mode):
    actions = RNG.normal(size=(16, 7)).astype(np.float32)
    chunk = ActionChunk(actions=actions, dt=0.05, stamp=1795000000.123456, action_mode=mode)
    msg = chunk_to_trajectory(chunk, "fr3_link0")
    assert msg.header.frame_id == "fr3_link0" + (DELTA_SUFFIX if mode == "delta" else "")
    assert msg.points[3].time_from_start.nanosec == 150_000_000
    back = trajectory_to_chunk(msg, "fr3_link0")
    np.testing.assert_allclose(back.actions, actions)
    assert back.dt == pytest.approx(0.05) and back.stamp == pytest.approx(chunk.stamp, abs=1e-6)
    assert back.action_mode == mode and back.action_names == chunk.action_names


def test_trajectory_with_uneven_times_is_refused():
    msg = chunk_to_trajectory(ActionChunk(actions=np.zeros((4, 7)), dt=0.05, stamp=1.0), "fr3_link0")
    msg.points[2].time_from_start.nanosec = 120_000_000
    with pytest.raises(ValueError, match="k\\*dt"):
        trajectory_to_chunk(msg, "fr3_link0")


def test_pose_round_trip_and_invalid_quaternion():
    msg = pose_to_msg(np.array([0.5, 0.1, 0.3]), np.array([1.0, 0.0, 0.0, 0.0]), 3.0, "fr3_link0")
    position, quat = pose_from_msg(msg)
    np.testing.assert_allclose(position, [0.5, 0.1, 0.3])
    msg.pose.orientation.x = 0.0
    with pytest.raises(ValueError, match="quaternion"):
        pose_from_msg(msg)


def test_stamps_keep_nanoseconds():
    t = 1795365000.987654321
    assert stamp_to_seconds(seconds_to_stamp(t)) == pytest.approx(t, abs=1e-6)
