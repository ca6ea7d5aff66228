"""`mambavla info`: parameter counts per part of a preset or a checkpoint."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("info", help="parameter counts per part of a preset or checkpoint")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", help="model preset name (tiny, base, large)")
    src.add_argument("checkpoint", nargs="?", help="checkpoint folder")
    p.add_argument("--fusion", choices=("mamba", "transformer"), default=None, help="override the preset's fusion")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mambavla.model.checkpoint import load_config
    from mambavla.model.config import preset
    from mambavla.model.modeling_mambavla import MambaVLA

    config = load_config(args.checkpoint) if args.checkpoint else preset(args.preset)
    if args.fusion:
        config = config.replace(fusion=args.fusion)
    model = MambaVLA(config)
    counts = model.parameter_counts()
    if args.json:
        print(json.dumps({"name": config.name, "fusion": config.fusion, "parameters": counts}, indent=2))
        return 0
    print(f"{config.name} ({config.fusion} fusion)")
    width = max(len(k) for k in counts)
    for part, n in counts.items():
        print(f"  {part:<{width}}  {n:>13,}")
    return 0
