"""Camera messages -> RGB pixels with OpenCV, for any reader of images (bags, replay; no ROS needed).

`image_to_rgb(msg, size)` takes a `sensor_msgs/Image` or `sensor_msgs/CompressedImage` as rclpy or
rosbags deserialises it (duck-typed: `format` + `data` for compressed; `encoding`, `height`, `width`,
`step`, `data` for raw) and returns uint8 [H, W, 3] RGB, resized with INTER_AREA when `size` is given.
Raw encodings: rgb8, bgr8, rgba8, bgra8, mono8, mono16, 8UC1/8UC3, 16UC1 (scaled to 8 bit),
bayer_*8, yuv422 (UYVY), yuv422_yuy2 (YUYV). Compressed: whatever cv2.imdecode reads (JPEG, PNG ...).
A message that cannot be decoded raises ValueError saying why.
"""

from __future__ import annotations

import numpy as np

MAX_IMAGE_BYTES = 64 * 1024 * 1024

# encoding -> (channels, dtype, OpenCV conversion to RGB or None)
_RAW: dict[str, tuple[int, type, str | None]] = {
    "rgb8": (3, np.uint8, None),
    "bgr8": (3, np.uint8, "COLOR_BGR2RGB"),
    "8uc3": (3, np.uint8, "COLOR_BGR2RGB"),  # OpenCV's own type: BGR by convention
    "rgba8": (4, np.uint8, "COLOR_RGBA2RGB"),
    "bgra8": (4, np.uint8, "COLOR_BGRA2RGB"),
    "mono8": (1, np.uint8, "COLOR_GRAY2RGB"),
    "8uc1": (1, np.uint8, "COLOR_GRAY2RGB"),
    "mono16": (1, np.uint16, "COLOR_GRAY2RGB"),
    "16uc1": (1, np.uint16, "COLOR_GRAY2RGB"),
    "bayer_rggb8": (1, np.uint8, "COLOR_BayerRGGB2RGB"),
    "bayer_bggr8": (1, np.uint8, "COLOR_BayerBGGR2RGB"),
    "bayer_gbrg8": (1, np.uint8, "COLOR_BayerGBRG2RGB"),
    "bayer_grbg8": (1, np.uint8, "COLOR_BayerGRBG2RGB"),
    "yuv422": (2, np.uint8, "COLOR_YUV2RGB_UYVY"),
    "uyvy": (2, np.uint8, "COLOR_YUV2RGB_UYVY"),
    "yuv422_yuy2": (2, np.uint8, "COLOR_YUV2RGB_YUYV"),
    "yuyv": (2, np.uint8, "COLOR_YUV2RGB_YUYV"),
}
RAW_ENCODINGS: tuple[str, ...] = tuple(_RAW)


def _buffer(data) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except TypeError:  # a plain sequence (rclpy array.array works above; lists land here)
        return np.asarray(data, dtype=np.uint8)


def _raw_to_rgb(msg) -> np.ndarray:
    import cv2

    encoding = str(msg.encoding).lower()
    if encoding not in _RAW:
        raise ValueError(f"unsupported image encoding {msg.encoding!r} (supported: {', '.join(RAW_ENCODINGS)})")
    channels, dtype, conversion = _RAW[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    itemsize = np.dtype(dtype).itemsize
    if height <= 0 or width <= 0:
        raise ValueError(f"image has no pixels ({width}x{height})")
    if step < width * channels * itemsize:
        raise ValueError(f"image step {step} < width {width} x {channels} channels x {itemsize} bytes")
    if step * height > MAX_IMAGE_BYTES:
        raise ValueError(f"image of {step * height} bytes exceeds {MAX_IMAGE_BYTES}")
    buf = _buffer(msg.data)
    if buf.size < step * height:
        raise ValueError(f"truncated image data: {buf.size} bytes < step {step} x height {height}")
    rows = buf[: step * height].reshape(height, step)[:, : width * channels * itemsize]
    pixels = np.ascontiguousarray(rows).view(np.dtype(dtype).newbyteorder(">" if msg.is_bigendian else "<"))
    pixels = pixels.reshape(height, width, channels) if channels > 1 else pixels.reshape(height, width)
    if itemsize == 2:  # 16-bit (depth, IR): scale the frame's own range to 8 bit for viewing
        lo, hi = float(pixels.min()), float(pixels.max())
        pixels = ((pixels.astype(np.float32) - lo) * (255.0 / max(hi - lo, 1.0))).astype(np.uint8)
    if conversion is None:
        return pixels
    return cv2.cvtColor(pixels, getattr(cv2, conversion))


def _compressed_to_rgb(msg) -> np.ndarray:
    import cv2

    buf = _buffer(msg.data)
    if buf.size == 0:
        raise ValueError(f"empty compressed image (format {msg.format!r})")
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"could not decode compressed image (format {msg.format!r}, {buf.size} bytes)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [h, w, 3] -> [H, W, 3] with area averaging (OpenCV INTER_AREA)."""
    import cv2

    h, w = size
    if rgb.shape[:2] == (h, w):
        return rgb
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)


def image_to_rgb(msg, size: tuple[int, int] | None = None) -> np.ndarray:
    """sensor_msgs/Image or CompressedImage -> uint8 [H, W, 3] RGB (resized to `size` = (H, W))."""
    rgb = _compressed_to_rgb(msg) if hasattr(msg, "format") and not hasattr(msg, "encoding") else _raw_to_rgb(msg)
    rgb = resize_rgb(rgb, size) if size is not None else rgb
    return rgb if rgb.flags.writeable and rgb.flags.c_contiguous else np.array(rgb, order="C")  # own the pixels
