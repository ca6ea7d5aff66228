"""Camera frames -> policy pixels (`mambavla.data.images`), as policy_node, the bag reader and replay get them:
raw encodings, JPEG/PNG, INTER_AREA resizing, and hostile frames refused from their header with a clear error."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from mambavla.data.images import MAX_IMAGE_BYTES, image_to_rgb, resize_rgb

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (6, 8, 3), dtype=np.uint8)


def image(pixels: np.ndarray, encoding: str, pad: int = 0) -> Image:
    h, w = pixels.shape[:2]
    c = 1 if pixels.ndim == 2 else pixels.shape[2]
    rows = np.zeros((h, w * c + pad), dtype=np.uint8)
    rows[:, : w * c] = pixels.reshape(h, w * c)
    return Image(height=h, width=w, encoding=encoding, step=w * c + pad, data=rows.tobytes())


def camera_frame(height: int = 480, width: int = 640) -> np.ndarray:
    """A smooth RGB scene with edges, as a camera sees it (noise would be JPEG's worst case)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([128 + 100 * np.sin(x / 37.0), 128 + 100 * np.cos(y / 23.0), (x + y) % 256], axis=2)
    rgb[height // 3 : height // 2, width // 4 : width // 2] = (220, 30, 30)  # a red cube
    return rgb.astype(np.uint8)


def compressed(rgb: np.ndarray, ext: str, fmt: str | None = None) -> CompressedImage:
    data = cv2.imencode(ext, np.ascontiguousarray(rgb[..., ::-1]))[1].tobytes()  # OpenCV encodes BGR
    return CompressedImage(format=fmt or f"rgb8; {ext[1:]} compressed bgr8", data=data)


def png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR claiming width x height (8-bit RGB), with a tiny IDAT: a decompression bomb."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, body: struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))  # noqa: E731
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(1000))) + chunk(b"IEND", b"")
    )


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real JPEG whose frame header (SOF0) claims another size."""
    data = bytearray(compressed(camera_frame(48, 64), ".jpg").data)
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


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
    np.testing.assert_array_equal(image_to_rgb(image(pixels, encoding), (3, 5)), resize_rgb(RGB, (3, 5)))


def test_mono8_becomes_grey_rgb():
    grey = RGB[:, :, 0]
    out = image_to_rgb(image(grey, "mono8"))
    assert out.shape == (6, 8, 3) and out.flags.writeable
    np.testing.assert_array_equal(out[:, :, 1], grey)
    np.testing.assert_array_equal(image_to_rgb(image(grey, "mono8"), (3, 4))[:, :, 2], resize_rgb(grey, (3, 4)))


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda m: setattr(m, "encoding", "jpeg"), "unsupported image encoding"),
        (lambda m: setattr(m, "encoding", "32FC1"), "unsupported image encoding"),
        (lambda m: setattr(m, "data", bytes(m.data)[:-5]), "truncated"),
        (lambda m: setattr(m, "step", 3), "step"),
        (lambda m: setattr(m, "height", 0), "no pixels"),
        (lambda m: setattr(m, "height", 100000), "px per side"),
        (
            lambda m: (
                setattr(m, "height", 500000),
                setattr(m, "width", 1),
                setattr(m, "step", 1),
                setattr(m, "encoding", "mono8"),
                setattr(m, "data", bytes(500000)),
            ),
            "px per side",
        ),
        (lambda m: (setattr(m, "height", 8000), setattr(m, "width", 8000), setattr(m, "step", 24000)), "bytes exceeds"),
    ],
    ids=[
        "jpeg-as-encoding",
        "float",
        "truncated",
        "short-step",
        "empty",
        "claims-too-tall",
        "500000x1-within-bytes",
        "claims-192MB",
    ],
)
def test_bad_raw_images_raise_a_clear_error(mutate, fragment):
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
    np.testing.assert_array_equal(up[::2, ::2], RGB)  # INTER_AREA enlarges by repeating pixels at integer factors


@pytest.mark.parametrize(("height", "width"), [(480, 640), (720, 1280)])
def test_jpeg_and_png_frames_give_the_raw_frames_pixels(height, width):
    rgb = camera_frame(height, width)
    raw = image(rgb, "rgb8")
    np.testing.assert_array_equal(image_to_rgb(compressed(rgb, ".png")), rgb)
    full = image_to_rgb(compressed(rgb, ".jpg"))
    assert full.shape == rgb.shape and np.abs(full.astype(int) - rgb).mean() < 3
    # policy-sized: JPEG decodes at 1/2 or 1/4 scale first; still the raw frame's INTER_AREA pixels within JPEG's error
    small, expected = image_to_rgb(compressed(rgb, ".jpg"), (128, 128)), image_to_rgb(raw, (128, 128))
    diff = np.abs(small.astype(int) - expected)
    assert small.shape == (128, 128, 3) and diff.mean() < 1.5 and diff.max() < 32, (diff.mean(), diff.max())
    np.testing.assert_array_equal(image_to_rgb(compressed(rgb, ".png"), (128, 128)), expected)


def test_frames_decoded_for_a_later_resize_keep_their_size_or_the_jpeg_scale_that_keeps_the_target():
    rgb = camera_frame(480, 640)
    for encoding, pixels in (("rgb8", rgb), ("bgr8", rgb[:, :, ::-1]), ("mono8", rgb[:, :, 0])):
        whole = image_to_rgb(image(pixels, encoding), (128, 128), resize=False)  # for the GPU's resize
        np.testing.assert_array_equal(whole, image_to_rgb(image(pixels, encoding)))
        np.testing.assert_array_equal(resize_rgb(whole, (128, 128)), image_to_rgb(image(pixels, encoding), (128, 128)))
    jpeg = compressed(rgb, ".jpg")
    assert image_to_rgb(jpeg, (128, 128), resize=False).shape == (240, 320, 3)  # 1/2: 1/4 would be 120 rows < 128
    assert image_to_rgb(jpeg, (32, 32), resize=False).shape == (60, 80, 3)  # 1/8
    np.testing.assert_array_equal(
        resize_rgb(image_to_rgb(jpeg, (128, 128), resize=False), (128, 128)), image_to_rgb(jpeg, (128, 128))
    )


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (lambda: compressed(camera_frame(), ".jpg").data[:20000], "truncated or corrupt JPEG"),
        (lambda: compressed(camera_frame(), ".jpg").data[:200], "truncated or corrupt JPEG"),
        (lambda: compressed(camera_frame(), ".png").data[:5000], "truncated or corrupt PNG"),
        (lambda: png_header(100_000, 100_000), "px per side"),
        (lambda: png_header(8000, 8000), "bytes exceeds"),
        (lambda: jpeg_claiming(60_000, 60_000), "px per side"),
        (lambda: b"\xff\xd8" + b"\xff" * 1_000_000, "truncated or corrupt JPEG"),  # header scan bounded
        (lambda: bytes(MAX_IMAGE_BYTES + 1), "compressed image of .* bytes exceeds"),
        (lambda: b"GIF89a" + bytes(100), "neither JPEG nor PNG"),
        (lambda: bytes(12) + png_header(64, 64), "neither JPEG nor PNG"),  # compressedDepth: a depth header first
        (lambda: b"", "empty"),
    ],
    ids=[
        "jpeg-cut-mid-scan",
        "jpeg-cut-in-header",
        "png-cut",
        "png-bomb-100000px",
        "png-bomb-192MB",
        "jpeg-claims-60000px",
        "jpeg-fill-bytes",
        "65MB",
        "gif",
        "compressed-depth",
        "empty",
    ],
)
def test_hostile_compressed_frames_raise_a_clear_error(data, fragment):
    with pytest.raises(ValueError, match=fragment):
        image_to_rgb(CompressedImage(format="jpeg", data=data()), (128, 128))
