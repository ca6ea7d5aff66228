"""Checkpoint folder: `model.safetensors` (policy weights), `config.json`, `stats.json`
(normalisation statistics) and optional `meta.json` (how it was trained)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mambavla.model.config import MambaVLAConfig
from mambavla.model.modeling_mambavla import MambaVLA

WEIGHTS, CONFIG, STATS, META = "model.safetensors", "config.json", "stats.json", "meta.json"
INSTRUCTIONS = "instructions.json"  # optional: the runtime's instruction gate (runtime/instruction_gate.py)
SHIPPED_POLICY = "base_sim"  # trained on the simulated workcell's expert demonstrations (README: how, and how well)


def shipped_checkpoint(name: str = SHIPPED_POLICY) -> Path:
    """The folder of a policy shipped inside the package (`mambavla/policies/<name>`)."""
    path = Path(__file__).resolve().parent.parent / "policies" / name
    if not (path / CONFIG).is_file():
        raise FileNotFoundError(f"no shipped policy {name!r} at {path}")
    return path


def save_checkpoint(
    model: MambaVLA, path: str | Path, meta: dict | None = None, dtype: torch.dtype | None = None
) -> Path:
    """`dtype` (e.g. torch.bfloat16) stores the floating-point weights smaller; loading casts them back to
    the model's dtype."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, str(path / WEIGHTS))
    (path / CONFIG).write_text(json.dumps(model.config.to_dict(), indent=2))
    (path / STATS).write_text(json.dumps(model.normalizer.stats, indent=2))
    if meta is not None:
        (path / META).write_text(json.dumps(meta, indent=2))
    return path


def convert_checkpoint(source: str | Path, dest: str | Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """A copy of checkpoint `source` with its floating-point weights stored as `dtype`, file to file: no model
    is built, so it needs neither the language encoder nor a GPU (a training machine can ship its best/)."""
    source, dest = Path(source), Path(dest)
    state = load_file(str(_require(source, WEIGHTS)))
    dest.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}, str(dest / WEIGHTS))
    for name in (CONFIG, STATS):
        (dest / name).write_bytes(_require(source, name).read_bytes())
    if (source / INSTRUCTIONS).is_file():
        (dest / INSTRUCTIONS).write_bytes((source / INSTRUCTIONS).read_bytes())
    else:  # an ungated source must not leave dest gated by an older copy
        (dest / INSTRUCTIONS).unlink(missing_ok=True)
    meta = json.loads((source / META).read_text()) if (source / META).is_file() else {}
    (dest / META).write_text(
        json.dumps({**meta, "weights_dtype": f"{str(dtype).removeprefix('torch.')} (loaded as float32)"}, indent=2)
    )
    return dest


def _require(path: Path, name: str) -> Path:
    file = path / name
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint {path} has no {name} (expected {WEIGHTS}, {CONFIG}, {STATS})")
    return file


def load_config(path: str | Path) -> MambaVLAConfig:
    return MambaVLAConfig.from_dict(json.loads(_require(Path(path), CONFIG).read_text()))


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> MambaVLA:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint folder not found: {path}")
    config = load_config(path)
    stats = json.loads(_require(path, STATS).read_text())
    model = MambaVLA(config, stats)
    missing, unexpected = model.load_state_dict(load_file(str(_require(path, WEIGHTS))), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model.to(device).eval()
