"""Camera messages -> RGB pixels with OpenCV: the one conversion policy_node, the bag reader and replay share.

`image_to_rgb(msg, size)` takes a `sensor_msgs/Image` or `sensor_msgs/CompressedImage` as rclpy or
rosbags deserialises it (duck-typed: `format` + `data` for compressed; `encoding`, `height`, `width`,
`step`, `data` for raw) and returns uint8 [H, W, 3] RGB, resized with INTER_AREA when `size` is given
(or, with `resize=False`, decoded for a later INTER_AREA resize to `size`: the GPU runtime's, `area_weights`).
Raw encodings: rgb8, bgr8, rgba8, bgra8, mono8, mono16, 8UC1/8UC3, 16UC1 (scaled to 8 bit),
bayer_*8, yuv422 (UYVY), yuv422_yuy2 (YUYV). Compressed: JPEG and PNG (what image_transport's
`compressed` plugin publishes), recognised by their signature, not by the free-text `format`.
A message that cannot be decoded, or that is larger than the limits below, raises ValueError saying why:
the limits are checked from the header before any pixel is touched, so a hostile frame costs nothing.

No cv_bridge: ROS 2's apt build links numpy 1.x and the nodes run numpy 2, and the PyPI `cv-bridge`
is a ROS 1 copy that fails on numpy 2. OpenCV reads the same encodings here.
"""

from __future__ import annotations

import functools

import numpy as np

MAX_IMAGE_BYTES = 64 * 1024 * 1024  # raw data, compressed data, and the decoded frame alike
MAX_IMAGE_SIDE = 8192  # px: a 500000x1 frame within the byte limit would cost seconds and hundreds of MB to resize

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
# per-pixel channel moves: resizing first gives the same pixels and converts 128x128 instead of the camera frame
_AFTER_RESIZE = {"COLOR_BGR2RGB", "COLOR_RGBA2RGB", "COLOR_BGRA2RGB", "COLOR_GRAY2RGB"}

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # start-of-frame markers


def _buffer(data) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except TypeError:  # a plain sequence (rclpy's array.array works above; lists land here)
        return np.asarray(data, dtype=np.uint8)


def check_image_size(width: int, height: int, nbytes: int) -> None:
    """ValueError for a frame without pixels or beyond MAX_IMAGE_SIDE per side or MAX_IMAGE_BYTES."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image has no pixels ({width}x{height})")
    if height > MAX_IMAGE_SIDE or width > MAX_IMAGE_SIDE:
        raise ValueError(f"image of {width}x{height} exceeds {MAX_IMAGE_SIDE} px per side")
    if nbytes > MAX_IMAGE_BYTES:
        raise ValueError(f"image of {nbytes} bytes exceeds {MAX_IMAGE_BYTES}")


def _raw_pixels(msg, channels: int, dtype) -> np.ndarray:
    """A raw sensor_msgs/Image's pixels as [H, W] or [H, W, channels] of `dtype` (its byte order honoured), after
    the checks that bound its cost and catch a truncated or inconsistent message."""
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    itemsize = np.dtype(dtype).itemsize
    if step < width * channels * itemsize:
        raise ValueError(f"image step {step} < width {width} x {channels} channels x {itemsize} bytes")
    check_image_size(width, height, step * height)
    buf = _buffer(msg.data)
    if buf.size < step * height:
        raise ValueError(f"truncated image data: {buf.size} bytes < step {step} x height {height}")
    rows = buf[: step * height].reshape(height, step)[:, : width * channels * itemsize]
    pixels = np.ascontiguousarray(rows).view(np.dtype(dtype).newbyteorder(">" if msg.is_bigendian else "<"))
    return pixels.reshape(height, width, channels) if channels > 1 else pixels.reshape(height, width)


def _raw_to_rgb(msg, size: tuple[int, int] | None) -> np.ndarray:
    """Raw frame -> RGB; `size` given: resized there where that saves a colour conversion of the full frame."""
    import cv2

    encoding = str(msg.encoding).lower()
    if encoding not in _RAW:
        raise ValueError(f"unsupported image encoding {msg.encoding!r} (supported: {', '.join(RAW_ENCODINGS)})")
    channels, dtype, conversion = _RAW[encoding]
    pixels = _raw_pixels(msg, channels, dtype)
    if pixels.itemsize == 2:  # 16-bit (depth, IR): scale the frame's own range to 8 bit for viewing
        lo, hi = float(pixels.min()), float(pixels.max())
        pixels = ((pixels.astype(np.float32) - lo) * (255.0 / max(hi - lo, 1.0))).astype(np.uint8)
    if conversion in _AFTER_RESIZE and size is not None:
        pixels = resize_rgb(pixels, size)
    return pixels if conversion is None else cv2.cvtColor(pixels, getattr(cv2, conversion))


def _jpeg_size(buf: memoryview) -> tuple[int, int]:
    """(width, height) from the first start-of-frame segment, without decoding."""
    i = 2
    for _ in range(1000):  # a camera JPEG has tens of segments before its frame header; bounded for hostile fill bytes
        if i + 4 > len(buf):
            break
        if buf[i] != 0xFF:
            raise ValueError(f"corrupt JPEG: no marker at byte {i}")
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        if marker == 0xDA:  # start of scan before any frame header
            break
        if marker in _JPEG_SOF:
            if i + 9 > len(buf):
                break
            return (buf[i + 7] << 8) | buf[i + 8], (buf[i + 5] << 8) | buf[i + 6]
        i += 2 + ((buf[i + 2] << 8) | buf[i + 3])
    raise ValueError(f"truncated or corrupt JPEG: no frame header in {len(buf)} bytes")


def _compressed_size(buf: np.ndarray, fmt: str) -> tuple[str, int, int]:
    """('jpeg' | 'png', width, height) read from the header; ValueError for anything else."""
    head = buf[:24].tobytes()
    if head.startswith(_PNG_SIGNATURE):
        if len(head) < 24 or head[12:16] != b"IHDR":
            raise ValueError(f"truncated or corrupt PNG ({buf.size} bytes)")
        return "png", int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if head.startswith(b"\xff\xd8"):
        return ("jpeg", *_jpeg_size(memoryview(buf)))
    raise ValueError(f"could not decode compressed image: format {fmt!r}, {buf.size} bytes, neither JPEG nor PNG data")


def _jpeg_reduction(width: int, height: int, size: tuple[int, int] | None) -> int:
    """Largest libjpeg DCT scale-down (1/2, 1/4, 1/8) that keeps the frame at least `size` (H, W): it decodes
    4-16x fewer pixels (720p to 128x128: ~3x faster, mean difference after INTER_AREA < 1 level)."""
    if size is None:
        return 1
    return next((r for r in (8, 4, 2) if -(-height // r) >= size[0] and -(-width // r) >= size[1]), 1)


def _compressed_to_rgb(msg, size: tuple[int, int] | None) -> np.ndarray:
    import cv2

    buf = _buffer(msg.data)
    if buf.size == 0:
        raise ValueError(f"empty compressed image (format {msg.format!r})")
    if buf.size > MAX_IMAGE_BYTES:
        raise ValueError(f"compressed image of {buf.size} bytes exceeds {MAX_IMAGE_BYTES}")
    kind, width, height = _compressed_size(buf, str(msg.format))
    check_image_size(width, height, width * height * 3)  # the decoded frame: a small PNG can expand to gigabytes
    reduction = _jpeg_reduction(width, height, size) if kind == "jpeg" else 1
    flags = {
        1: cv2.IMREAD_COLOR,
        2: cv2.IMREAD_REDUCED_COLOR_2,
        4: cv2.IMREAD_REDUCED_COLOR_4,
        8: cv2.IMREAD_REDUCED_COLOR_8,
    }[reduction] | cv2.IMREAD_IGNORE_ORIENTATION  # pixels as stored, as raw frames
    bgr = cv2.imdecode(buf, flags)
    if bgr is None:
        raise ValueError(
            f"could not decode compressed image: truncated or corrupt {kind.upper()} "
            f"(format {msg.format!r}, {buf.size} bytes, {width}x{height})"
        )
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    """An RGB uint8 frame as JPEG bytes (OpenCV), as a camera's image_transport publishes and packs store it."""
    import cv2

    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be within 1..100, got {quality}")
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"OpenCV could not encode a {rgb.shape} frame as JPEG")
    return buf.tobytes()


@functools.lru_cache(maxsize=16)
def area_weights(source: tuple[int, int], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's INTER_AREA resize from `source` (H, W) to `size` (h, w) as two float32 matrices, rows (h, H) and
    cols (W, w): `rows @ frame @ cols` per channel is `resize_rgb` of a float frame (to ~3e-5 of a level; OpenCV's
    uint8 path then rounds in fixed point, within one level of rounding this). The area weights are separable,
    so OpenCV computes them itself here, by resizing identity matrices along one axis each: the same rule when
    shrinking and when enlarging, with no copy of it in this code. Cached: a camera keeps its size."""
    import cv2

    (height, width), (h, w) = source, size
    rows = cv2.resize(np.eye(height, dtype=np.float32), (height, h), interpolation=cv2.INTER_AREA)
    cols = cv2.resize(np.eye(width, dtype=np.float32), (w, width), interpolation=cv2.INTER_AREA)
    for matrix in (rows, cols):
        matrix.setflags(write=False)  # shared through the cache
    return rows, cols


def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [h, w, (c)] -> [H, W, (c)] with OpenCV INTER_AREA: area averaging when shrinking; when enlarging
    (a camera smaller than the policy input) it repeats pixels at integer factors and blends neighbours between."""
    import cv2

    h, w = size
    if rgb.shape[:2] == (h, w):
        return rgb
    return cv2.resize(np.ascontiguousarray(rgb), (w, h), interpolation=cv2.INTER_AREA)


def is_compressed(msg) -> bool:
    return hasattr(msg, "format") and not hasattr(msg, "encoding")


def image_to_rgb(msg, size: tuple[int, int] | None = None, resize: bool = True) -> np.ndarray:
    """sensor_msgs/Image or CompressedImage -> uint8 [H, W, 3] RGB (resized to `size` = (H, W)).
    `resize=False`: decoded for a resize to `size` done later (on the GPU): a JPEG at the DCT scale that keeps
    at least `size`, a raw frame at its own size. ValueError says what is wrong with a message that cannot be used."""
    if is_compressed(msg):
        rgb = _compressed_to_rgb(msg, size)  # `size` picks the JPEG's DCT scale, whether resized here or later
    else:
        rgb = _raw_to_rgb(msg, size if resize else None)
    if resize and size is not None:
        rgb = resize_rgb(rgb, size)
    return rgb if rgb.flags.writeable and rgb.flags.c_contiguous else np.array(rgb, order="C")  # own the pixels


def source_size(msg) -> tuple[int, int]:
    """(H, W) of a camera message as recorded, from its header alone."""
    if is_compressed(msg):
        _, width, height = _compressed_size(_buffer(msg.data), str(msg.format))
        return height, width
    return int(msg.height), int(msg.width)


# ---- depth ----------------------------------------------------------------------------------------------------
# Depth travels as uint16 millimetres, 0 where the sensor has no reading: RealSense's and the ROS depth
# convention (REP 118 allows 32FC1 metres too, converted here). Resized with nearest neighbour: averaging
# depth across an object's edge invents a surface between the object and the table behind it.

DEPTH_ENCODINGS: tuple[str, ...] = ("16UC1", "mono16", "32FC1")
MAX_DEPTH_MM = 65535


def _depth_png(msg) -> tuple[np.ndarray, int, int]:
    """(the 16-bit PNG's bytes, width, height) of a compressed depth message, its header checked: the size is
    capped and the PNG's IHDR read before anything is decoded."""
    buf = _buffer(msg.data)
    if buf.size > MAX_IMAGE_BYTES:
        raise ValueError(f"compressed depth of {buf.size} bytes exceeds {MAX_IMAGE_BYTES}")
    fmt = str(msg.format)
    if "compresseddepth" in fmt.lower():
        if "32fc1" in fmt.lower():
            raise ValueError(f"depth format {fmt!r}: 32FC1 compressedDepth (quantised inverse depth) is not "
                             f"supported; record 16UC1 depth (RealSense's), or raw 32FC1")
        buf = buf[12:]
    if not buf[:8].tobytes() == _PNG_SIGNATURE:
        raise ValueError(f"depth format {fmt!r}: expected 16-bit PNG data ({buf.size} bytes)")
    _, width, height = _compressed_size(buf, fmt)
    bit_depth, colour_type = (int(buf[24]), int(buf[25])) if buf.size > 25 else (0, -1)
    if (bit_depth, colour_type) != (16, 0):  # what it would decode to is bounded here
        raise ValueError(f"depth format {fmt!r}: a PNG of {bit_depth}-bit samples, colour type {colour_type}; "
                         f"expected 16-bit greyscale (mm)")
    check_image_size(width, height, width * height * 2)
    return buf, width, height


def _depth_from_png(msg) -> np.ndarray:
    """compressed_depth_image_transport's message: a 12-byte header (format, two floats) before a 16-bit PNG;
    or a plain 16-bit PNG."""
    import cv2

    buf, _, _ = _depth_png(msg)
    depth = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if depth is None or depth.dtype != np.uint16 or depth.ndim != 2:
        got = "nothing" if depth is None else f"{depth.dtype} {depth.shape}"
        raise ValueError(f"depth format {str(msg.format)!r}: the PNG decoded to {got}, expected one 16-bit channel "
                         "(mm)")
    return depth


def depth_source_size(msg) -> tuple[int, int]:
    """(H, W) of a depth message as sent (Image, or compressedDepth from its PNG header), without decoding it."""
    if is_compressed(msg):
        _, width, height = _depth_png(msg)
        return height, width
    return int(msg.height), int(msg.width)


def depth_to_mm(msg, size: tuple[int, int] | None = None) -> np.ndarray:
    """A depth frame (sensor_msgs/Image 16UC1 / mono16 in mm or 32FC1 in m; CompressedImage from
    compressed_depth_image_transport, 16UC1) -> uint16 [H, W] mm, 0 = no reading; resized to `size` (H, W)."""
    if is_compressed(msg):
        depth = _depth_from_png(msg)
    else:
        encoding = str(msg.encoding).lower()
        if encoding not in {e.lower() for e in DEPTH_ENCODINGS}:
            raise ValueError(f"unsupported depth encoding {msg.encoding!r} (supported: {', '.join(DEPTH_ENCODINGS)})")
        dtype = np.float32 if encoding == "32fc1" else np.uint16
        depth = _raw_pixels(msg, 1, dtype)
        if dtype == np.float32:
            depth = metres_to_mm(depth)
    depth = depth.astype(np.uint16, copy=False)
    return resize_depth(depth, size) if size is not None else np.ascontiguousarray(depth)


def metres_to_mm(metres: np.ndarray) -> np.ndarray:
    """float depth in m -> uint16 mm; NaN, Inf, negative and beyond 65.535 m are no reading (0)."""
    metres = np.asarray(metres, dtype=np.float32)
    valid = np.isfinite(metres) & (metres > 0) & (metres * 1000.0 <= MAX_DEPTH_MM)
    return np.where(valid, np.rint(np.where(valid, metres, 0.0) * 1000.0), 0).astype(np.uint16)


def resize_depth(depth: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[H, W] depth -> [h, w], nearest neighbour (see above: no invented surfaces)."""
    import cv2

    h, w = size
    if depth.shape[:2] == (h, w):
        return depth
    # the pixel nearest each output pixel's centre, as INTER_AREA's colour is centred (INTER_NEAREST takes a block's
    # top-left pixel: depth a fraction of an output pixel off its colour)
    return cv2.resize(np.ascontiguousarray(depth), (w, h), interpolation=cv2.INTER_NEAREST_EXACT)


def encode_png16(depth_mm: np.ndarray) -> bytes:
    """A uint16 frame as a lossless 16-bit PNG (OpenCV)."""
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(depth_mm, dtype=np.uint16))
    if not ok:
        raise ValueError(f"OpenCV could not encode a {depth_mm.shape} depth frame as PNG")
    return buf.tobytes()


def depth_message_fields(depth_mm: np.ndarray) -> dict:
    """The sensor_msgs/Image fields (but header) of a uint16 mm frame, 16UC1 little-endian, as a driver sends it."""
    depth_mm = np.ascontiguousarray(depth_mm, dtype="<u2")
    height, width = depth_mm.shape
    return {"height": height, "width": width, "encoding": "16UC1", "is_bigendian": 0, "step": width * 2,
            "data": depth_mm.reshape(-1).view(np.uint8)}
