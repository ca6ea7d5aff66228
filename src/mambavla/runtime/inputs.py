"""The input checks every step runs: an observation dict -> the host tensors a step takes, or a ValueError
that names the field and what this policy expects there."""

from __future__ import annotations

import time

import numpy as np
import torch

from mambavla.data.images import check_image_size, metres_to_mm, resize_depth, resize_rgb
from mambavla.model.config import MambaVLAConfig
from mambavla.model.vision import depth_channel


def check_observation(config: MambaVLAConfig, observation: dict,
                      keep_size: bool = False) -> tuple[dict[str, torch.Tensor], torch.Tensor, float]:
    """-> host tensors: images {camera: (1, C, h, w)} (uint8 colour; float with depth), proprio (1, P) float32,
    stamp (the observation's, else now).

    A frame of another size is resized to the policy's (h, w) here (OpenCV's INTER_AREA), or kept at its size
    with `keep_size` (for `AreaResize` on the GPU). Images are views of the frames, channels last in memory."""
    if not isinstance(observation, dict):
        raise ValueError(f"observation: expected a dict with 'images' and 'proprio', got "
                         f"{type(observation).__name__}")
    images = observation.get("images")
    if not isinstance(images, dict):
        raise ValueError("images: expected a dict {camera_name: uint8 array [H, W, 3]}")
    expected = set(config.cameras)
    missing, unknown = expected - set(images), set(images) - expected
    if missing:
        raise ValueError(f"images: missing camera(s) {sorted(missing)}; this policy expects {sorted(expected)}")
    if unknown:
        raise ValueError(f"images: unknown camera(s) {sorted(unknown)}; this policy expects {sorted(expected)}")
    h, w = config.image_size
    tensors = {}
    for cam in config.cameras:
        img = images[cam]
        if not isinstance(img, np.ndarray):
            raise ValueError(f"images[{cam!r}]: expected a numpy array, got {type(img).__name__}")
        if img.dtype != np.uint8:
            raise ValueError(f"images[{cam!r}]: expected dtype uint8, got {img.dtype}")
        if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] < 1 or img.shape[1] < 1:
            raise ValueError(f"images[{cam!r}]: expected shape (H, W, 3) RGB (the policy sees ({h}, {w}, 3)), "
                             f"got {img.shape}")
        try:  # the limits camera messages have (data/images.py): a frame's cost is bounded before it is touched
            check_image_size(img.shape[1], img.shape[0], img.nbytes)
        except ValueError as err:
            raise ValueError(f"images[{cam!r}]: {err}") from None
        colour_size = img.shape[:2]
        if img.shape[:2] != (h, w) and not keep_size:
            img = resize_rgb(img, (h, w))
        # uint8, a view (channels last in memory): converted and resized where the step runs
        chw = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
        if config.use_depth:
            chw = torch.cat([chw.float(), _depth_channel(config, observation, cam, colour_size)], dim=0)
        tensors[cam] = chw[None]

    proprio = observation.get("proprio")
    if proprio is None:
        raise ValueError(f"proprio: missing; expected float32 array [{config.proprio_dim}]")
    proprio = np.asarray(proprio)
    if proprio.shape != (config.proprio_dim,):
        raise ValueError(f"proprio: expected shape ({config.proprio_dim},), got {proprio.shape}")
    if not np.issubdtype(proprio.dtype, np.floating):
        raise ValueError(f"proprio: expected a float array, got dtype {proprio.dtype}")
    if not np.isfinite(proprio).all():
        raise ValueError(f"proprio: contains NaN or Inf: {proprio.tolist()}")
    stamp = observation.get("stamp", time.time())
    if not isinstance(stamp, (int, float)) or not np.isfinite(stamp):
        raise ValueError(f"stamp: expected finite seconds, got {stamp!r}")
    return tensors, torch.from_numpy(proprio.astype(np.float32))[None], float(stamp)


def _depth_channel(config: MambaVLAConfig, observation: dict, cam: str, colour_size: tuple[int, int]) -> torch.Tensor:
    h, w = config.image_size
    depth = (observation.get("depth") or {}).get(cam)
    if depth is None:
        raise ValueError(f"depth[{cam!r}]: this policy uses depth; expected uint16 [H, W] mm or float32 [H, W] m, "
                         f"aligned to the colour frame")
    if not isinstance(depth, np.ndarray) or depth.ndim != 2 or min(depth.shape) < 1:
        raise ValueError(f"depth[{cam!r}]: expected a 2-D array (uint16 mm or float m), got "
                         f"{getattr(depth, 'shape', type(depth).__name__)}")
    if depth.shape != colour_size:  # depth of other pixels: aligned depth has the colour frame's size
        raise ValueError(f"depth[{cam!r}]: {depth.shape[1]}x{depth.shape[0]}, its colour frame "
                         f"{colour_size[1]}x{colour_size[0]}: depth must be aligned to the colour frame "
                         f"(realsense-ros: align_depth.enable)")
    try:
        check_image_size(depth.shape[1], depth.shape[0], depth.nbytes)
    except ValueError as err:
        raise ValueError(f"depth[{cam!r}]: {err}") from None
    if depth.dtype == np.uint16:
        mm = depth
    elif np.issubdtype(depth.dtype, np.floating):
        mm = metres_to_mm(depth)  # NaN / Inf / <= 0: no reading, as a sensor's 0
    else:
        raise ValueError(f"depth[{cam!r}]: expected uint16 (mm) or float (m), got dtype {depth.dtype}")
    mm = np.array(resize_depth(mm, (h, w)), order="C")  # its own copy: a frame the caller keeps is read-only
    return depth_channel(torch.from_numpy(mm), config.depth_scale)[None]
