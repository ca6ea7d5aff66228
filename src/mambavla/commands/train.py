"""`mambavla train`: fit a policy on recorded episodes (bags or a pack) into a run folder; `--resume RUN` goes on."""

from __future__ import annotations

import argparse
import json

from mambavla.commands import metaworld


def register(subparsers: argparse._SubParsersAction) -> None:
    from mambavla.commands.bag_options import add_bag_options
    from mambavla.train import settings

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
        "--resume",
        metavar="RUN",
        help="continue the run in RUN from RUN/last (its run.json holds data and settings; --steps and "
        "--max-seconds apply)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    model = p.add_argument_group("the model")
    model.add_argument("--preset", default="base", help="model preset (default: base)")
    model.add_argument("--fusion", choices=("mamba", "transformer"), help="override the preset's fusion")
    model.add_argument(
        "--no-vision-film",
        action="store_true",
        help="vision encoder without the instruction's FiLM (the presets have it; for the comparison)",
    )
    metaworld.add_train_arguments(model)
    training = p.add_argument_group("training (mambavla.train.settings.TrainSettings)")
    settings.add_arguments(training, tuple(n for n in settings.defaults() if n not in settings.BAG_FIELDS))
    add_bag_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mambavla.train.settings import given
    from mambavla.train.trainer import Trainer, TrainSettings

    chosen = given(args)
    if args.resume:
        trainer = Trainer.resume(
            args.resume, steps=chosen.get("steps"), progress=not args.json, max_seconds=chosen.get("max_seconds")
        )
    else:
        if not args.data or not args.out:
            raise ValueError("--data and --out are required (or --resume RUN)")
        overrides = {"fusion": args.fusion} if args.fusion else {}
        overrides.update(metaworld.train_overrides(args))
        if args.no_vision_film:
            overrides["vision_film"] = False
        trainer = Trainer(args.out, args.data, args.preset, TrainSettings(**chosen), overrides, progress=not args.json)
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
