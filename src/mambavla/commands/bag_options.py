"""The options that say how bags become training rows, shared by `train` and `dataset stats` (see
`mambavla.data.bags.ReadOptions` and the role finder in `mambavla.data.roles`)."""

from __future__ import annotations

import argparse

from mambavla.data.bags import ACTION_LEAD, ReadOptions


def add_bag_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("reading bags from any cell (docs/own-data.md)")
    g.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="ROLE=TOPIC",
        help="topic of a role: a camera name of the policy (front, wrist ...), joint_states, ee_pose, "
        "instruction, actions or target_pose (a commanded PoseStamped); repeatable (default: found by type and name)",
    )
    g.add_argument(
        "--instruction", default=None, help="instruction for bags that recorded none (no topic, no episode.json)"
    )
    g.add_argument(
        "--cameras",
        nargs="+",
        default=None,
        metavar="NAME",
        help="the policy's cameras, in order (default: the --init checkpoint's, else the bags' own names, "
        "else the preset's)",
    )
    g.add_argument(
        "--image-size",
        nargs=2,
        type=int,
        default=None,
        metavar=("H", "W"),
        help="resize every frame to this as it is read (default: the preset's, or the --init checkpoint's)",
    )
    g.add_argument(
        "--dt",
        type=float,
        default=None,
        metavar="SECONDS",
        help="s between rows, resampled (default: the first camera's recorded interval; with --init the checkpoint's)",
    )
    g.add_argument(
        "--action-lead",
        type=float,
        default=ACTION_LEAD,
        metavar="SECONDS",
        help="where no action topic was recorded: the measured pose this far ahead is a row's target "
        f"(default {ACTION_LEAD})",
    )
    g.add_argument(
        "--split-gap",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="a bag holds several demonstrations: a gap longer than this in the first camera's stream ends one "
        "(default 0: one demonstration per bag)",
    )


def read_options(args: argparse.Namespace, image_size, default_cameras, dt: float | None = None) -> ReadOptions:
    from mambavla.data.roles import parse_maps

    size = tuple(args.image_size) if args.image_size else image_size
    return ReadOptions.make(
        parse_maps(args.map), args.instruction, size, args.dt or dt, args.action_lead, default_cameras, args.split_gap
    )
