"""The command line's contract (cli.py): command modules import heavy dependencies inside `func`, so building
the parser and printing any command's help loads none of them."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "rclpy", "mujoco", "franky", "cv2", "matplotlib", "transformers", "onnxruntime")

PROBE = """
import argparse, json, sys
from mambavla.cli import COMMANDS, build_parser
parser = build_parser()
commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
helps = {name: commands[name].format_help() for name in COMMANDS}
print(json.dumps({"commands": sorted(helps), "loaded": [m for m in HEAVY if m in sys.modules]}))
"""


def test_building_the_parser_and_every_commands_help_imports_no_heavy_dependency():
    code = f"HEAVY = {HEAVY!r}\n{PROBE}"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    result = json.loads(out.splitlines()[-1])
    from mambavla.cli import COMMANDS

    assert result["commands"] == sorted(COMMANDS)
    assert result["loaded"] == []


def test_train_flags_are_derived_from_the_settings_with_the_old_names_kept():
    from mambavla.cli import build_parser
    from mambavla.train.settings import TrainSettings, defaults, given

    args = build_parser().parse_args(["train", "--data", "d", "--out", "o", "--ema", "0.9", "--no-bf16",
                                      "--no-augment", "--balance-tasks", "--map", "front=/cam", "--image-size", "32",
                                      "48", "--steps", "50", "--init", "ckpt"])
    chosen = given(args)
    assert chosen == {"ema_decay": 0.9, "bf16": False, "augment": False, "balance_tasks": True,
                      "maps": {"front": "/cam"}, "image_size": [32, 48], "steps": 50, "init": "ckpt"}
    settings = TrainSettings(**chosen)
    assert (settings.lr, settings.warmup, settings.image_size) == (1e-4, 10, (32, 48))  # fine-tuning's defaults
    plain = TrainSettings(**given(build_parser().parse_args(["train", "--data", "d", "--out", "o"])))
    assert plain == TrainSettings() and plain.lr == 3e-4 and plain.warmup == 200
    assert {k: getattr(plain, k) for k in ("steps", "ema_decay", "shift_px")} == {
        k: defaults()[k] for k in ("steps", "ema_decay", "shift_px")}
    assert build_parser().parse_args(["train", "--ema-decay", "0.5"]).ema_decay == 0.5
    assert given(build_parser().parse_args(["train", "--resume", "run", "--steps", "5"])) == {"steps": 5}


def test_settings_are_checked_without_loading_torch_and_init_stats_is_a_choice():
    code = (
        "import sys\nfrom mambavla.train.settings import TrainSettings\n"
        "TrainSettings(init='ckpt', init_stats='data')\nprint('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "False"
    import pytest

    from mambavla.cli import build_parser
    from mambavla.train.settings import TrainSettings

    with pytest.raises(ValueError, match="init_stats must be one of"):
        TrainSettings(init_stats="both")
    with pytest.raises(SystemExit):  # argparse names the choices
        build_parser().parse_args(["train", "--init-stats", "both"])
