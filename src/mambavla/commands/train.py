"""`mambavla train`: fit a policy on recorded episodes (bags or a pack) into a run folder; `--resume RUN` goes on."""

from __future__ import annotations

import argparse
import json

from mambavla.commands import metaworld


def register(subparsers: argparse._SubParsersAction) -> None:
    from mambavla.commands.bag_options import add_bag_options
    from mambavla.train.trainer import FINE_TUNE_LR, TrainSettings

    d = TrainSettings()
    p = subparsers.add_parser(
        "train",
        help="train a policy on episode bags or a pack; writes a run folder (last/, best/ checkpoints)",
        description="Single GPU or CPU: mambavla train ...; "
        "several GPUs: torchrun --nproc-per-node N -m mambavla.cli train ...",
    )
    p.add_argument(
        "--data",
        nargs="+",
        help="directories of rosbag2 recordings (any cell: `mambavla record`, `collect`, "
        "`ros2 bag record`, LIBERO import), or one pack folder (`mambavla dataset pack`)",
    )
    p.add_argument("--out", help="run folder to write")
    p.add_argument(
        "--resume", metavar="RUN", help="continue the run in RUN from RUN/last (its run.json holds data and settings)"
    )
    p.add_argument("--preset", default="base", help="model preset (default: base)")
    p.add_argument(
        "--init",
        metavar="CHECKPOINT",
        default="",
        help="fine-tune: start from this checkpoint (its architecture, cameras found by name, image size, dt and "
        "weights; e.g. src/mambavla/policies/base_sim on demonstrations from your cell). A grounding head "
        "the data cannot supervise is dropped",
    )
    p.add_argument(
        "--init-stats",
        choices=("merge", "data", "checkpoint"),
        default=d.init_stats,
        help="fine-tuning's normalisation statistics: merge (the checkpoint's ranges widened to cover the new data; "
        "default), data (the new data's alone) or checkpoint (unchanged)",
    )
    p.add_argument("--fusion", choices=("mamba", "transformer"), help="override the preset's fusion")
    p.add_argument(
        "--no-vision-film",
        action="store_true",
        help="vision encoder without the instruction's FiLM (the presets have it; for the comparison)",
    )
    p.add_argument(
        "--history",
        choices=("stream", "window"),
        default=d.history,
        help="stream: segments of frames in one scan, the checkpoint continues its state (default); "
        "window: the last K frames per sample",
    )
    p.add_argument(
        "--segment-frames",
        type=int,
        default=d.segment_frames,
        help=f"policy frames per stream segment (default {d.segment_frames})",
    )
    p.add_argument(
        "--history-frames", type=int, default=d.history_frames, help="frames per sample in window mode (default 1)"
    )
    p.add_argument("--action-mode", choices=("absolute", "delta"), default=d.action_mode)
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"total optimiser steps (default {d.steps}; with --resume: extend to this many)",
    )
    p.add_argument(
        "--batch-size", type=int, default=d.batch_size, help="segments (stream) or samples (window) per step and GPU"
    )
    p.add_argument(
        "--lr", type=float, default=None, help=f"peak learning rate (default {d.lr}; with --init {FINE_TUNE_LR})"
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="warmup steps (default: min(200, steps / 10); with --init min(500, steps / 5))",
    )
    p.add_argument(
        "--ema", type=float, default=d.ema_decay, help=f"EMA decay of the saved weights (default {d.ema_decay})"
    )
    p.add_argument(
        "--grounding-weight",
        type=float,
        default=d.grounding_weight,
        help="weight of the grounding head's loss: where the named cube started, from the episode's seed "
        f"(default {d.grounding_weight}; 0: off)",
    )
    p.add_argument(
        "--no-other-cube-grounding",
        action="store_true",
        help="the grounding head answers only for the named cube (by default it also answers, on the same frames, "
        "for another cube of the layout named instead, so the picture alone cannot give the answer)",
    )
    p.add_argument(
        "--val-fraction", type=float, default=d.val_fraction, help="episodes held out for the validation loss"
    )
    p.add_argument(
        "--episodes-per-task",
        type=int,
        default=0,
        metavar="N",
        help="train on the first N episodes of each task, validate on the same held-out ones (default 0: all)",
    )
    p.add_argument("--val-every", type=int, default=d.val_every)
    p.add_argument("--save-every", type=int, default=d.save_every, help="write RUN/last every N steps")
    p.add_argument("--no-augment", action="store_true", help="no random shift / colour jitter")
    p.add_argument(
        "--balance-tasks",
        action="store_true",
        help="stream mode: each task gets the same share of every batch, however many episodes it has",
    )
    p.add_argument(
        "--shift-px",
        type=int,
        default=d.shift_px,
        metavar="PX",
        help=f"reach of the random image shift in pixels (default {d.shift_px}; 0: colour jitter only)",
    )
    p.add_argument("--no-bf16", action="store_true", help="fp32 on CUDA (bf16 autocast by default)")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="stop after this much wall time, saving RUN/last (--resume goes on)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (torchrun picks one GPU per process)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_bag_options(p)
    metaworld.add_train_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mambavla.data.roles import parse_maps
    from mambavla.train.trainer import FINE_TUNE_LR, Trainer, TrainSettings, default_warmup

    if args.resume:
        trainer = Trainer.resume(args.resume, steps=args.steps, progress=not args.json, max_seconds=args.max_seconds)
    else:
        if not args.data or not args.out:
            raise ValueError("--data and --out are required (or --resume RUN)")
        steps = args.steps or TrainSettings().steps
        settings = TrainSettings(
            steps=steps,
            batch_size=args.batch_size,
            history=args.history,
            segment_frames=args.segment_frames,
            history_frames=args.history_frames,
            action_mode=args.action_mode,
            lr=args.lr or (FINE_TUNE_LR if args.init else TrainSettings.lr),
            warmup=args.warmup if args.warmup is not None else default_warmup(steps, bool(args.init)),
            ema_decay=args.ema,
            grounding_weight=args.grounding_weight,
            other_cube_grounding=not args.no_other_cube_grounding,
            val_fraction=args.val_fraction,
            episodes_per_task=args.episodes_per_task,
            val_every=args.val_every,
            save_every=args.save_every,
            augment=not args.no_augment,
            shift_px=args.shift_px,
            balance_tasks=args.balance_tasks,
            bf16=not args.no_bf16,
            seed=args.seed,
            device=args.device,
            max_seconds=args.max_seconds or 0.0,
            init=args.init,
            init_stats=args.init_stats,
            maps=parse_maps(args.map),
            instruction=args.instruction or "",
            cameras=tuple(args.cameras or ()),
            image_size=tuple(args.image_size or ()),
            dt=args.dt or 0.0,
            action_lead=args.action_lead,
            split_gap=args.split_gap,
        )
        overrides = {"fusion": args.fusion} if args.fusion else {}
        overrides.update(metaworld.train_overrides(args))
        if args.no_vision_film:
            overrides["vision_film"] = False
        trainer = Trainer(args.out, args.data, args.preset, settings, overrides, progress=not args.json)
    summary = trainer.fit()
    if not summary:  # a DDP worker other than rank 0
        return 0
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"trained to step {summary['steps']} in {summary['seconds']} s on {summary['train_episodes']} episodes "
            f"(+{summary['validation_episodes']} held out): "
            f"loss {summary['loss_first']:.4f} -> {summary['loss_last']:.4f}, "
            f"best validation {summary['val_loss_best']}"
        )
        print(
            f"run: {summary['run']} (checkpoints last/ and best/, loss.png, "
            f"TensorBoard: tensorboard --logdir {summary['run']}/tb)"
        )
    return 0
