"""Pictures of episodes without an imaging library: a PNG writer (zlib) and a contact sheet."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from mambavla.data.bags import EpisodeError, read_episode


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Write uint8[H, W, 3] as an RGB PNG."""
    img = np.ascontiguousarray(image, dtype=np.uint8)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got {img.shape}")
    h, w, _ = img.shape
    raw = b"".join(b"\x00" + img[row].tobytes() for row in range(h))  # filter type 0 per scanline

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    Path(path).write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    )
    return Path(path)


def contact_sheet(episodes: Sequence[str | Path], frames_per_episode: int = 4) -> np.ndarray:
    """One row per episode: evenly spaced frames, every camera side by side (unreadable bags are left out)."""
    rows = []
    for path in episodes:
        try:
            ep = read_episode(path)
        except EpisodeError:
            continue
        if not ep.images:
            continue
        picks = np.linspace(0, len(ep) - 1, frames_per_episode).round().astype(int)
        rows.append(
            np.concatenate([np.concatenate([ep.images[c][i] for c in ep.images], axis=1) for i in picks], axis=1)
        )
    if not rows:
        raise EpisodeError("no episode with images to draw")
    width = max(r.shape[1] for r in rows)
    return np.concatenate([np.pad(r, ((0, 2), (0, width - r.shape[1]), (0, 0))) for r in rows], axis=0)
