"""The options that say how bags become training rows, shared by `train` and `dataset` (see
`mambavla.data.bags.ReadOptions` and the role finder in `mambavla.data.roles`). Declared once, as
`TrainSettings` fields (`mambavla.train.settings.BAG_FIELDS`)."""

from __future__ import annotations

import argparse

from mambavla.data.bags import ReadOptions
from mambavla.train import settings


def add_bag_options(p: argparse.ArgumentParser) -> None:
    settings.add_arguments(p.add_argument_group("reading bags from any cell (docs/own-data.md)"), settings.BAG_FIELDS)


def read_options(args: argparse.Namespace, config) -> ReadOptions:
    """The command line's bag options, read for `config`'s (a MambaVLAConfig) cameras and image size as `train` does."""
    return settings.TrainSettings(**settings.given(args, settings.BAG_FIELDS)).read_options(config, fine_tuning=False)
