"""Camera message -> policy pixels: time per frame of `mambavla.data.images.image_to_rgb`, the conversion
policy_node runs on its inference worker (and the bag reader and replay share), for raw rgb8/bgr8 and
JPEG/PNG frames of common camera sizes. Run with `mambavla bench-ros --images`; prints JSON."""

from __future__ import annotations

import json
import platform
import time

import numpy as np

SIZES = ((480, 640), (720, 1280))
FORMATS = ("rgb8", "bgr8", "jpeg", "png")


def _scene(height: int, width: int) -> np.ndarray:
    """Smooth shading with edges: JPEG/PNG sizes close to a camera's (noise would be their worst case)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([128 + 100 * np.sin(x / 37.0), 128 + 100 * np.cos(y / 23.0), (x + y) % 256], axis=2)
    return rgb.astype(np.uint8)


def _message(rgb: np.ndarray, fmt: str):
    import cv2
    from sensor_msgs.msg import CompressedImage, Image

    h, w = rgb.shape[:2]
    if fmt in ("rgb8", "bgr8"):
        pixels = rgb if fmt == "rgb8" else rgb[..., ::-1]
        return Image(height=h, width=w, encoding=fmt, step=3 * w, data=np.ascontiguousarray(pixels).tobytes())
    data = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", np.ascontiguousarray(rgb[..., ::-1]))[1].tobytes()
    return CompressedImage(format=f"rgb8; {fmt} compressed bgr8", data=data)


def bench_images(size: tuple[int, int] = (128, 128), frames: int = 200, warmup: int = 10) -> dict:
    import cv2

    from mambavla.data.images import image_to_rgb

    rows = []
    for h, w in SIZES:
        rgb = _scene(h, w)
        for fmt in FORMATS:
            msg = _message(rgb, fmt)
            times = []
            for k in range(warmup + frames):
                t0 = time.perf_counter()
                image_to_rgb(msg, size)
                if k >= warmup:
                    times.append((time.perf_counter() - t0) * 1e3)
            times = np.array(times)
            rows.append({"camera": f"{w}x{h}", "format": fmt, "message_bytes": len(msg.data),
                         "p50_ms": round(float(np.percentile(times, 50)), 3),
                         "p90_ms": round(float(np.percentile(times, 90)), 3)})
    return {"benchmark": "image_to_rgb", "to": list(size), "frames": frames, "opencv": cv2.__version__,
            "opencv_threads": cv2.getNumThreads(), "cpu": platform.processor() or platform.machine(), "results": rows}


def run() -> int:
    print(json.dumps(bench_images(), indent=2))
    return 0
