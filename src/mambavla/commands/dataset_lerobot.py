"""`mambavla dataset import-lerobot` and `export-lerobot`: LeRobotDataset v3 <-> episode bags (docs/lerobot.md)."""

from __future__ import annotations

import argparse
import json


def _size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HEIGHTxWIDTH, e.g. 224x224") from None
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: both sides must be positive")
    return height, width


def register(sub: argparse._SubParsersAction) -> None:
    from mambavla.data.lerobot import ACTION_TYPES, CODECS, GRIPPER_CONVENTIONS

    imp = sub.add_parser("import-lerobot", help="convert a LeRobotDataset v3 folder into episode bags")
    imp.add_argument("dir", help="LeRobotDataset v3 root (meta/info.json, data/, videos/)")
    imp.add_argument("--out", required=True, help="folder for the episode bags")
    imp.add_argument("--episodes", nargs="+", metavar="SPEC",
                     help="episode indices and ranges, e.g. 0,3,5-9 (default all)")
    imp.add_argument("--map", action="append", default=[], metavar="ROLE=FEATURE",
                     help="CAMERA=observation.images.KEY (only mapped cameras are imported; default every camera under "
                          "its own name), state=FEATURE (repeatable), action=FEATURE")
    imp.add_argument("--gripper", choices=GRIPPER_CONVENTIONS, default="auto",
                     help="the action's gripper: open-is-1 (CRISP) or closed-is-1 (ours); auto: from "
                          "meta/mambavla.json, a name with open/close, else the episodes' first frames "
                          "(they start open)")
    imp.add_argument("--gripper-state", choices=GRIPPER_CONVENTIONS, default="auto",
                     help="a normalised gripper value in the state, as --gripper (finger joints and widths need none)")
    imp.add_argument("--actions", choices=ACTION_TYPES, default="auto",
                     help="absolute targets or per-step deltas (integrated from the first measured state); auto: "
                          "whichever lies closer, the measured state or zero")
    imp.add_argument("--image-format", choices=("jpeg", "raw"), default="jpeg",
                     help="camera frames in the bags: JPEG CompressedImage (default, small) or raw rgb8 Image")
    imp.add_argument("--image-size", type=_size, default=None, metavar="HxW",
                     help="resize frames (INTER_AREA) before writing, e.g. 224x224 (default: the dataset's size)")
    imp.add_argument("--json", action="store_true", help="print one JSON object")
    imp.set_defaults(func=run_import)

    exp = sub.add_parser("export-lerobot", help="write episode bags as a LeRobotDataset v3 folder")
    exp.add_argument("bags", nargs="+", help="episode bags or directories of them")
    exp.add_argument("--out", required=True, help="new (or empty) folder for the dataset")
    exp.add_argument("--codec", choices=tuple(CODECS), default="av1",
                     help="video codec: av1 (SVT-AV1, LeRobot's default), h264 (libx264) or mpeg4")
    exp.add_argument("--crf", type=int, default=None, help="quality for av1/h264 (lower is better; default 30 / 18)")
    exp.add_argument("--json", action="store_true", help="print one JSON object")
    exp.set_defaults(func=run_export)


def run_import(args: argparse.Namespace) -> int:
    from mambavla.data.lerobot import import_lerobot

    summary = import_lerobot(args.dir, args.out, episodes=args.episodes, mapping=args.map, gripper=args.gripper,
                             gripper_state=args.gripper_state, actions=args.actions, image_format=args.image_format,
                             image_size=args.image_size, progress=not args.json)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{args.out}: {summary['episodes']} episodes, {summary['frames']} frames at {summary['fps']} fps "
          f"(dt {summary['dt']:.4f} s)")
    print(f"  cameras   {', '.join(f'{c} <- {k}' for c, k in summary['cameras'].items()) or 'none'}")
    print(f"  state     {summary['state']}")
    print(f"  action    {summary['action']}; gripper {summary['gripper']}")
    for what, reason in summary["conventions"].items():
        print(f"  {what:<9} from {reason}")
    if summary["ignored_features"]:
        print(f"  ignored   {', '.join(summary['ignored_features'])}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from mambavla.data.lerobot import export_lerobot

    summary = export_lerobot(args.bags, args.out, codec=args.codec, crf=args.crf, progress=not args.json)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{summary['out']}: {summary['episodes']} episodes, {summary['frames']} frames at {summary['fps']} fps, "
          f"{summary['tasks']} tasks; cameras {', '.join(summary['cameras']) or 'none'} {summary['image_size'] or ''}, "
          f"{summary['codec']} in {summary['video_files']} video files")
    return 0
