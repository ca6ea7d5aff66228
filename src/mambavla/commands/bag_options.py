"""The options that say how bags become training rows, shared by `train` and `dataset` (see
`mambavla.data.bags.ReadOptions` and the role finder in `mambavla.data.roles`). Declared once, as
`TrainSettings` fields (`mambavla.train.settings.BAG_FIELDS`)."""

from __future__ import annotations

import argparse

from mambavla.data.bags import ReadOptions
from mambavla.train import settings


def add_bag_options(p: argparse.ArgumentParser) -> None:
    settings.add_arguments(p.add_argument_group("reading bags from any cell (docs/own-data.md)"), settings.BAG_FIELDS)


def read_options(args: argparse.Namespace, image_size, default_cameras, dt: float | None = None) -> ReadOptions:
    """The command line's bag options; `image_size` and `dt` where it gives none."""
    chosen = {**settings.defaults(), **settings.given(args, settings.BAG_FIELDS)}
    size = tuple(chosen["image_size"]) or image_size
    return ReadOptions.make(chosen["maps"], chosen["instruction"] or None, size, chosen["dt"] or dt,
                            chosen["action_lead"], default_cameras, chosen["split_gap"])
