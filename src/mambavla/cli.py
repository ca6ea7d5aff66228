"""`mambavla` command line: one entry point, one module per subcommand in `mambavla.commands`.

Each command module has `register(subparsers)`, which adds its parser and sets `func(args) -> int`.
Modules import heavy dependencies (torch, rclpy, mujoco) inside `func`, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = (
    "info",
    "bench", "export",
    "train",
    "collect", "dataset", "eval-sim",
    "instruct", "demo", "bench-ros", "record", "bench-record",
    "replay",
    "doctor",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mambavla", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"mambavla.commands.{name.replace('-', '_')}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        print(f"mambavla {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
