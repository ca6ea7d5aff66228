"""Checked host inputs -> the GPU: page-locked upload buffers (`PinnedUpload`) and OpenCV's INTER_AREA resize
as two matmuls on the device (`AreaResize`), put together for the eager step by `DeviceInputs`."""

from __future__ import annotations

import torch

from mambavla.data.images import area_weights


class AreaResize:
    """uint8 frames (B, C, H, W) on the GPU -> (B, C, h, w) uint8 of the policy's `size`, as OpenCV's
    INTER_AREA resizes them on the host (`resize_rgb`, which made the training frames): two fp32 matmuls
    with OpenCV's own area weights (`area_weights`), rounded to whole levels (within one level of OpenCV's
    fixed-point uint8 result). A camera frame then crosses to the GPU whole (0.9 MB for 640x480) instead of
    being resized on the node's CPU, which costs more than the copy. Frames already at `size` pass through
    unchanged."""

    def __init__(self, size: tuple[int, int]):
        self.size = tuple(size)
        self._weights: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # (H, W, device) -> (rows, cols)

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        source = tuple(frames.shape[-2:])
        if source == self.size:
            return frames
        key = (*source, frames.device)
        if key not in self._weights:
            self._weights[key] = tuple(torch.tensor(m, device=frames.device) for m in area_weights(source, self.size))
        rows, cols = self._weights[key]
        out = rows @ (frames.float() @ cols)  # fp32: PyTorch keeps TF32 off for float32 matmuls unless told
        return out.round_().clamp_(0, 255).to(torch.uint8)


class PinnedUpload:
    """Host inputs -> the GPU through page-locked host buffers, one per input name, made on first use and
    reused every step. A frame is copied once into pinned memory, in its own memory order (an HWC frame's
    CHW view stays channels last: a plain memcpy rather than a permuting copy on the CPU), and leaves it with
    a non-blocking copy to a device tensor of the same layout: a DMA the GPU queues behind the step's launch,
    instead of a synchronous pageable cudaMemcpy through a driver staging buffer. The device op that reads it
    (`AreaResize`, a copy into a static buffer) does the reordering.

    A pinned buffer is written again only once the copies out of it have finished: `stage` waits on the
    event `issued` recorded after them (already passed when the last step ended by reading its actions back,
    so it costs nothing then; it matters when a step failed between its upload and that read)."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self._buffers: dict[str, torch.Tensor] = {}
        self._done = torch.cuda.Event()  # never recorded: synchronize() returns at once

    def stage(self, images: dict[str, torch.Tensor],
              proprio: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Copy the host inputs into their pinned buffers -> (images, proprio), pinned."""
        self._done.synchronize()
        staged = {}
        for name, value in [*((f"image/{c}", v) for c, v in images.items()), ("proprio", proprio)]:
            if not (value.is_contiguous() or value.is_contiguous(memory_format=torch.channels_last)):
                value = value.contiguous()  # not a layout a buffer can share (the input checks never give one)
            buffer = self._buffers.get(name)
            if (buffer is None or buffer.shape != value.shape or buffer.stride() != value.stride()
                    or buffer.dtype != value.dtype):
                buffer = self._buffers[name] = torch.empty_strided(value.shape, value.stride(), dtype=value.dtype,
                                                                   pin_memory=True)
            staged[name] = buffer.copy_(value)
        return {c: staged[f"image/{c}"] for c in images}, staged["proprio"]

    def issued(self) -> None:
        """Mark the copies out of the staged buffers as queued on `device`'s current stream (where they go,
        also when another GPU is the current device)."""
        self._done.record(torch.cuda.current_stream(self.device))

    def to_device(self, images: dict[str, torch.Tensor],
                  proprio: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """stage(), then non-blocking copies into new tensors on `device` -> (images, proprio) there."""
        images, proprio = self.stage(images, proprio)
        images = {c: v.to(self.device, non_blocking=True) for c, v in images.items()}
        proprio = proprio.to(self.device, non_blocking=True)
        self.issued()
        return images, proprio


class DeviceInputs:
    """Checked host inputs -> tensors on `device` at the policy's `image_size`: on CUDA through pinned buffers
    (`PinnedUpload`, made on first use) and the GPU resize (`AreaResize`); on the CPU as they are (the input
    checks resized them there)."""

    def __init__(self, device: torch.device, image_size: tuple[int, int]):
        self.device = torch.device(device)
        self.upload = PinnedUpload(self.device) if self.device.type == "cuda" else None
        self.resize = AreaResize(image_size)

    def __call__(self, images: dict[str, torch.Tensor],
                 proprio: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        if self.upload is None:
            return images, proprio
        images, proprio = self.upload.to_device(images, proprio)
        return {c: self.resize(v) for c, v in images.items()}, proprio
