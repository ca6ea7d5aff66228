"""`mambavla train`: fit a policy on recorded episodes; writes a checkpoint folder."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a policy on episode bags; writes a checkpoint folder")
    p.add_argument("--data", nargs="+", required=True, help="episode directories (from `mambavla collect` or LIBERO import)")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--preset", default="base", help="model preset (default: base)")
    p.add_argument("--fusion", choices=("mamba", "transformer"), help="override the preset's fusion")
    p.add_argument("--action-mode", choices=("absolute", "delta"), default="absolute")
    p.add_argument("--history-frames", type=int, default=1,
                   help="frames of history per sample; the checkpoint then runs in window mode with this many (default 1)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=500, help="write the checkpoint every N steps (0: only at the end)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mambavla.train.trainer import TrainSettings, train

    if args.steps < 1 or args.batch_size < 1 or args.history_frames < 1:
        raise ValueError("--steps, --batch-size and --history-frames must be positive")
    settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=min(100, args.steps // 10),
                             seed=args.seed, device=args.device, save_every=args.save_every)
    summary = train(args.data, args.out, args.preset, args.action_mode, settings,
                    overrides={"fusion": args.fusion} if args.fusion else None, progress=not args.json,
                    history_frames=args.history_frames)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"trained {summary['steps']} steps in {summary['seconds']} s on {summary['episodes']} episodes "
              f"({summary['samples']} samples): loss {summary['loss_first']:.4f} -> {summary['loss_last']:.4f} (mean of {summary['loss_window_steps']} steps)")
        print(f"checkpoint: {summary['checkpoint']} (loss curve: {summary['checkpoint']}/loss.png)")
    return 0
