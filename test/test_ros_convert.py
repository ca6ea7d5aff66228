"""Message conversion without DDS: image encodings and resizing, chunk <-> JointTrajectory, poses."""

from __future__ import annotations

import numpy as np
import pytest
from sensor_msgs.msg import Image

from mambavla.ros.convert import (DELTA_SUFFIX, chunk_to_trajectory, image_to_rgb, pose_from_msg, pose_to_msg,
                                  resize_rgb, rgb_to_image, seconds_to_stamp, stamp_to_seconds, trajectory_to_chunk)
from mambavla.runtime.chunk import ActionChunk

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (6, 8, 3), dtype=np.uint8)


def image(pixels: np.ndarray, encoding: str, pad: int = 0) -> Image:
    h, w = pixels.shape[:2]
    c = 1 if pixels.ndim == 2 else pixels.shape[2]
    rows = np.zeros((h, w * c + pad), dtype=np.uint8)
    rows[:, : w * c] = pixels.reshape(h, w * c)
    return Image(height=h, width=w, encoding=encoding, step=w * c + pad, data=rows.tobytes())


@pytest.mark.parametrize(
    ("encoding", "pixels"),
    [
        ("rgb8", RGB),
        ("bgr8", RGB[:, :, ::-1]),
        ("rgba8", np.concatenate([RGB, np.full((6, 8, 1), 7, np.uint8)], axis=2)),
        ("bgra8", np.concatenate([RGB[:, :, ::-1], np.full((6, 8, 1), 7, np.uint8)], axis=2)),
    ],
)
def test_colour_encodings_decode_to_the_same_rgb(encoding, pixels):
    np.testing.assert_array_equal(image_to_rgb(image(pixels, encoding, pad=4)), RGB)


def test_mono8_becomes_grey_rgb():
    grey = RGB[:, :, 0]
    out = image_to_rgb(image(grey, "mono8"))
    assert out.shape == (6, 8, 3) and out.flags.writeable
    np.testing.assert_array_equal(out[:, :, 1], grey)


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda m: setattr(m, "encoding", "yuv422"), "unsupported image encoding"),
        (lambda m: setattr(m, "encoding", "32FC1"), "unsupported image encoding"),
        (lambda m: setattr(m, "data", bytes(m.data)[:-5]), "truncated"),
        (lambda m: setattr(m, "step", 3), "step"),
        (lambda m: setattr(m, "height", 0), "no pixels"),
        (lambda m: setattr(m, "height", 100000), "px per side"),
        (lambda m: (setattr(m, "height", 500000), setattr(m, "width", 1), setattr(m, "step", 1),
                    setattr(m, "encoding", "mono8"), setattr(m, "data", bytes(500000))), "px per side"),
    ],
    ids=["yuv", "float", "truncated", "short-step", "empty", "claims-too-tall", "500000x1-within-bytes"],
)
def test_bad_images_raise_a_clear_error(mutate, fragment):
    msg = image(RGB, "rgb8")
    mutate(msg)
    with pytest.raises(ValueError, match=fragment):
        image_to_rgb(msg, (4, 4))


def test_resize_averages_areas_and_keeps_constant_images_constant():
    flat = np.full((480, 640, 3), 123, np.uint8)
    assert np.all(resize_rgb(flat, (128, 128)) == 123)
    checker = np.indices((4, 4)).sum(axis=0) % 2 * 255
    small = resize_rgb(np.repeat(checker[:, :, None], 3, axis=2).astype(np.uint8), (2, 2))
    assert np.all(np.abs(small.astype(int) - 128) <= 1)  # anti-aliased, not a sample of one pixel
    up = resize_rgb(RGB, (12, 16))
    np.testing.assert_array_equal(up[::2, ::2], RGB)


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
