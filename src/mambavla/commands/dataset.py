"""`mambavla dataset`: inspect episode directories and import LIBERO demonstrations."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    from mambavla.commands.bag_options import add_bag_options
    from mambavla.train import settings

    p = subparsers.add_parser("dataset", help="dataset statistics and imports")
    sub = p.add_subparsers(dest="dataset_command", metavar="ACTION", required=True)
    stats = sub.add_parser("stats", help="episodes, frames, tasks, success rate, action ranges of a directory of bags")
    stats.add_argument("dir", help="directory of episode bags")
    stats.add_argument("--chunk", type=int, default=16, help="action chunk length for the norm stats (default 16)")
    stats.add_argument("--action-mode", choices=("absolute", "delta"), default="absolute")
    stats.add_argument("--norm-out", default=None, help="also write the normalisation statistics JSON here")
    stats.add_argument(
        "--preset", default="base", help="preset whose cameras and image size to read for (default base), as train does"
    )
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    add_bag_options(stats)
    stats.set_defaults(func=run_stats)
    pack = sub.add_parser(
        "pack", help="pack episodes for training elsewhere: policy-rate JPEG frames, actions, instruction embeddings"
    )
    pack.add_argument("dirs", nargs="+", help="directories of episode bags")
    pack.add_argument("--out", required=True, help="pack folder to write")
    pack.add_argument(
        "--preset", default="base", help="preset whose policy period and language encoder to use (default base)"
    )
    pack.add_argument(
        "--shards", type=int, default=1, help="number of part-*.npz files (each must fit the link to the GPU machine)"
    )
    pack.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    pack.add_argument("--json", action="store_true", help="print one JSON object")
    add_bag_options(pack)
    pack.set_defaults(func=run_pack)
    lead = sub.add_parser(
        "action-lead",
        help="measure the action lead for kinesthetic demonstrations on teleoperated episodes of the same arm",
        description="Label the rows of episodes that recorded the commanded target (teleoperated, `mambavla record`) "
                    "from their measured trajectory instead, as `record --kinesthetic` episodes are labelled, for "
                    "each lead; report how far those labels are from what was commanded, and the lead that fits "
                    "best (train --action-lead).",
    )
    lead.add_argument("dir", help="directory of episode bags with a recorded action")
    lead.add_argument("--leads", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4],
                      metavar="S", help="leads to try, s (default 0 0.05 0.1 0.15 0.2 0.3 0.4)")
    lead.add_argument("--out", default=None, help="write action_lead.json and action_lead.png here")
    lead.add_argument("--json", action="store_true", help="print one JSON object")
    settings.add_arguments(lead.add_argument_group("reading bags from any cell (docs/own-data.md)"), ("maps",))
    lead.set_defaults(func=run_action_lead)
    imp = sub.add_parser("import-libero", help="convert LIBERO HDF5 demonstrations into episode bags")
    imp.add_argument("files", nargs="+", help="LIBERO *.hdf5 files")
    imp.add_argument("--out", required=True, help="output directory")
    imp.add_argument("--no-flip", action="store_true", help="do not flip LIBERO's upside-down images")
    imp.set_defaults(func=run_import)
    from mambavla.commands import dataset_lerobot  # import-lerobot, export-lerobot

    dataset_lerobot.register(sub)


def run_stats(args: argparse.Namespace) -> int:
    from mambavla.commands.bag_options import read_options
    from mambavla.data import EpisodeDataset, compute_norm_stats
    from mambavla.model.config import preset

    config = preset(args.preset)
    ds = EpisodeDataset(
        args.dir,
        chunk=args.chunk,
        action_mode=args.action_mode,
        verbose=not args.json,
        cameras=args.cameras,
        options=read_options(args, config),
    )
    summary = ds.summary()
    if args.norm_out:
        with open(args.norm_out, "w") as f:
            json.dump(compute_norm_stats(ds), f, indent=2)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(
        f"{args.dir}: {summary['episodes']} episodes, {summary['frames']} frames at dt {summary['dt']} s"
        f" ({len(summary['skipped'])} skipped)"
    )
    print(f"  cameras       {', '.join(summary['cameras'])} {summary['image_size']}")
    print(f"  tasks         {', '.join(f'{k} ({v})' for k, v in summary['tasks'].items())}")
    print(f"  instructions  {summary['instructions']} distinct")
    rate = summary["success_rate"]
    print(f"  success rate  {'unknown' if rate is None else f'{rate:.1%}'}")
    f = summary["episode_frames"]
    print(f"  frames/ep     min {f['min']}  mean {f['mean']}  max {f['max']}")
    print("  action range")
    for name, (lo, hi) in summary["action_range"].items():
        print(f"    {name:<8} {lo:+.4f} .. {hi:+.4f}")
    rates = ", ".join(f"{hz} Hz" for hz in summary["recorded_rate_hz"])
    print(f"  recorded at   {rates}; rows every {summary['dt']:.4f} s")
    print("  roles         (topic: episodes)")
    for role, found in summary["roles"].items():
        sizes = "".join(f"  recorded {w}x{h}" for h, w in found.get("recorded_sizes", []))
        print(f"    {role:<13} {', '.join(f'{t}: {n}' for t, n in found['topics'].items())}{sizes}")
    for how, n in summary["actions_from"].items():
        print(f"  actions       {how} ({n} episodes)")
    for item in summary["warnings"]:
        print(f"  warning {item['path']}: {item['warning']}")
    for item in summary["skipped"]:
        print(f"  skipped {item['path']}: {item['reason']}")
    return 0


LEAD_GRID_S = 0.01  # rows every 10 ms: leads are resolved to this


def run_action_lead(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from mambavla.data.action_lead import best, compare, plot
    from mambavla.data.bags import ACTION_LEAD, EpisodeError, ReadOptions, read_episode
    from mambavla.data.dataset import find_episodes
    from mambavla.train import settings

    maps = settings.given(args, ("maps",)).get("maps", {})
    # one camera is read (tiny): its stream sets the rows, as in training; robot state alone may repeat stamps
    options = ReadOptions.make(maps, dt=LEAD_GRID_S, image_size=(8, 8))
    pairs, used, skipped = [], [], []
    for path in find_episodes(args.dir):
        try:
            episode = read_episode(path, options=options)
        except EpisodeError as err:
            skipped.append({"path": str(path), "reason": str(err)})
            continue
        if not {"actions", "target_pose"} & set(episode.meta["roles"]):  # only derived labels: nothing to compare
            skipped.append({"path": str(path), "reason": f"no commanded action: {episode.meta.get('actions_from')}"})
            continue
        pairs.append((episode.proprio.astype(np.float64), episode.actions.astype(np.float64)))
        used.append(str(path))
    if not pairs:
        raise ValueError(f"{args.dir}: no episode with a recorded action (teleoperated episodes have one; "
                         f"skipped: {[s['reason'] for s in skipped][:3]})")
    results = compare(pairs, LEAD_GRID_S, sorted(set(args.leads)))
    fit = best(results)
    summary = {"dir": str(args.dir), "episodes": len(used), "rows": int(sum(len(p) for p, _ in pairs)),
               "grid_s": LEAD_GRID_S, "default_lead_s": ACTION_LEAD, "best_lead_s": fit.lead,
               "leads": [r.as_dict() for r in results], "skipped": skipped}
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        plot(results, ACTION_LEAD, out / "action_lead.png")
        summary["picture"] = str(out / "action_lead.png")
        (out / "action_lead.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{args.dir}: {len(used)} episodes with a commanded action, {summary['rows']} rows ({len(skipped)} skipped)")
    print("  lead s   position mm (median / p95)   rotation deg (median / p95)   gripper agreeing")
    for r in results:
        mark = "  <- best" if r is fit else ("  (default)" if abs(r.lead - ACTION_LEAD) < 1e-9 else "")
        print(f"  {r.lead:6.2f}   {r.position_mm['median']:8.1f} / {r.position_mm['p95']:<8.1f}"
              f"          {r.rotation_deg['median']:6.2f} / {r.rotation_deg['p95']:<6.2f}"
              f"             {r.gripper_agreement:6.1%}{mark}")
    print(f"  best lead {fit.lead:g} s: train kinesthetic episodes of this arm with --action-lead {fit.lead:g}")
    return 0


def run_pack(args: argparse.Namespace) -> int:
    from mambavla.commands.bag_options import read_options
    from mambavla.data.packed import load_episodes, write_pack
    from mambavla.model.config import preset
    from mambavla.model.language import InstructionEncoder

    if not 1 <= args.quality <= 100 or args.shards < 1:
        raise ValueError("--quality must be 1..100 and --shards at least 1")
    config = preset(args.preset)
    episodes = load_episodes(args.dirs, config.policy_period, not args.json, read_options(args, config), args.cameras)
    summary = write_pack(
        episodes,
        args.out,
        InstructionEncoder(config.language, config.max_instruction_tokens),
        shards=args.shards,
        quality=args.quality,
    )
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(
        f"{args.out}: {summary['episodes']} episodes, {summary['frames']} frames every {summary['policy_period']} s "
        f"({summary['instructions']} instructions), {summary['total_mib']} MiB"
    )
    for name, size in summary["bytes"].items():
        print(f"  {name:<20} {size / 2**20:8.2f} MiB")
    return 0


def run_import(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from mambavla.data import import_libero

    total = 0
    for path in tqdm(args.files, desc="import LIBERO", unit="file"):
        total += len(import_libero(path, args.out, flip_images=not args.no_flip))
    print(f"wrote {total} episodes to {args.out}")
    return 0
