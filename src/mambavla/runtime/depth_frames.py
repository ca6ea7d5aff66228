"""Which depth frame goes with which colour frame, for a policy that takes depth; without ROS.

An RGB-D camera's aligned depth (realsense-ros `aligned_depth_to_color`) carries the stamp of the colour frame
it was aligned to, but arrives on its own topic, a little before or after it. `DepthFrames` keeps each camera's
last few depth frames; `pair` gives, for the colour frames an observation is made of, the depth frame stamped
nearest to each, or the reason there is none within `max_offset`: then the step waits, as it waits for a
missing camera, since a depth policy fed a stale or no depth would act on a scene that is not there.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

KEPT = 8  # depth frames kept per camera: a colour frame still waiting for its step finds its own among them
# s, max_depth_offset's default (policy_node, replay): aligned depth has its colour frame's stamp (realsense-ros with
# enable_sync), 5 ms allows for stamp rounding and stays far below a 30 Hz frame period, so a neighbour never pairs
MAX_OFFSET = 0.005


@dataclass(frozen=True)
class DepthFrame:
    depth: np.ndarray  # uint16 [H, W] mm, 0 = no reading
    stamp: float  # header stamp, s


class DepthFrames:
    """The recent depth frames of each camera (indexed as the colour frames are), named for the reasons."""

    def __init__(self, names: list[str], topics: list[str], max_offset: float):
        self.names, self.topics, self.max_offset = list(names), list(topics), max_offset
        self._frames: list[deque[DepthFrame]] = [deque(maxlen=KEPT) for _ in names]

    def add(self, camera: int, frame: DepthFrame) -> None:
        kept = self._frames[camera]
        if kept and frame.stamp < kept[-1].stamp:
            kept.clear()  # the clock stepped back (a replayed bag restarted): the older frames no longer pair
        kept.append(frame)

    def pair(self, stamps: tuple[float, ...]) -> tuple[np.ndarray, ...] | str:
        """The depth of each camera for colour frames stamped `stamps` (camera order), or why the step waits."""
        chosen, missing = [], []
        for camera, stamp in enumerate(stamps):
            kept = self._frames[camera]
            if not kept:
                missing.append(f"{self.names[camera]} (none received on {self.topics[camera]})")
                continue
            nearest = min(kept, key=lambda f: abs(f.stamp - stamp))
            offset = nearest.stamp - stamp
            if abs(offset) > self.max_offset:
                missing.append(f"{self.names[camera]} (nearest {offset:+.3f} s from its colour frame)")
                continue
            chosen.append(nearest.depth)
        if missing:
            return (f"waiting for depth within max_depth_offset {self.max_offset} s of the colour frames: "
                    f"{', '.join(missing)}")
        return tuple(chosen)
