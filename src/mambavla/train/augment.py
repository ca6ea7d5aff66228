"""Image augmentation for training, on whatever device the images are: a random shift (replicate-pad,
then crop back, as DrQ does) and colour jitter. Each segment gets one draw per camera that holds for all
its frames: a camera that moved a little or a room with other light, not flicker from frame to frame.
A fourth channel (depth) shifts with the colour, so it stays aligned, and no light changes it: the jitter
touches the first three channels only."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mambavla.train.settings import SHIFT_PX

JITTER = 0.15  # brightness, contrast and saturation factors in [1 - JITTER, 1 + JITTER]


def augment(
    images: Tensor, generator: torch.Generator | None = None, shift: int = SHIFT_PX, jitter: float = JITTER
) -> Tensor:
    """images (B, T, C, H, W) float 0..255, C = 3 (RGB) or 4 (RGB-D) -> same shape, shifted and colour-jittered
    per segment."""
    b, t, c, h, w = images.shape
    dev = images.device
    pad = max(0, min(shift, h // 8, w // 8))  # small images (tests, tiny) get a proportionally small shift
    if pad:
        padded = F.pad(images.reshape(b, t * c, h, w), (pad, pad, pad, pad), mode="replicate")
        dy, dx = (torch.randint(0, 2 * pad + 1, (2, b), generator=generator, device=dev)).unbind(0)
        rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None].expand(b, t * c, h, w)
        cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :].expand(b, t * c, h, w)
        batch, channel = torch.arange(b, device=dev)[:, None, None, None], torch.arange(t * c, device=dev)
        images = padded[batch, channel[None, :, None, None], rows, cols]
        images = images.reshape(b, t, c, h, w)
    if jitter > 0:
        images, rest = images[:, :, :3], images[:, :, 3:]
        factors = 1 + jitter * (2 * torch.rand(3, b, 1, 1, 1, 1, generator=generator, device=dev) - 1)
        brightness, contrast, saturation = factors.to(images.dtype)
        images = images * brightness
        mean = images.mean(dim=(2, 3, 4), keepdim=True)
        images = (images - mean) * contrast + mean
        gray = images.mean(dim=2, keepdim=True)
        images = torch.cat([(images - gray) * saturation + gray, rest], dim=2)
    return images.clamp(0.0, 255.0)
