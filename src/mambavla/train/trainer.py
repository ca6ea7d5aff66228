"""Train a MambaVLA policy into a run folder.

    RUN/run.json           settings, preset, overrides, data sources: all that --resume and evaluation need
    RUN/last/              checkpoint (EMA weights) + trainer_state.pt (weights, EMA, optimiser, schedule, RNGs)
    RUN/best/              checkpoint with the lowest validation loss (EMA weights)
    RUN/tb/                TensorBoard scalars (train/val loss, learning rate, gradient norm, throughput)
    RUN/train_summary.json, RUN/loss.png

History modes: `stream` trains episode segments of T policy frames in one parallel scan and scores every
frame's chunk from the state after that frame (the checkpoint then runs one frame in, state continued);
`window` trains on the last K frames up to a sample (the checkpoint re-scans K frames per step).
On CUDA: bf16 autocast, mamba-ssm's Triton scan when installed, several GPUs with `torchrun` (DDP over
NCCL; with `--device cpu`, processes over gloo).
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch

from mambavla.data.packed import TrainingEpisodes, load_episodes
from mambavla.model.checkpoint import STATS, load_config, save_checkpoint
from mambavla.model.config import MambaVLAConfig, preset
from mambavla.model.modeling_mambavla import MambaVLA
from mambavla.model.normalization import merge_stats
from mambavla.model.vision import depth_channel
from mambavla.runtime.instruction_gate import GATE_FILE, InstructionGate
from mambavla.sim.tasks import named_cube_starts, other_cube_instructions, other_cube_starts
from mambavla.train.augment import augment
from mambavla.train.loop import make_optimizer
from mambavla.train.settings import FINE_TUNE_LR, TrainSettings, default_warmup  # noqa: F401 (importable here)

RUN_FILE, STATE_FILE = "run.json", "trainer_state.pt"


# Trainer.validate's scores -> (run history key, TensorBoard tag)
VALIDATION_SCORES = {
    "loss": ("val", "val/loss"),
    "other_cube": ("val_other_cube", "val/loss_other_cube"),
    "grounding_m": ("val_grounding_m", "val/grounding_error_m"),
    "grounding_first_frame_m": ("val_grounding_first_frame_m", "val/grounding_error_first_frame_m"),
}


def instruction_gate(instructions: list[str], init: str | None) -> InstructionGate | None:
    """What the runtime's gate of the trained checkpoint accepts: the data's instructions, and when fine-tuning
    those of the --init checkpoint, at its threshold. A checkpoint fine-tuned from an ungated one stays ungated:
    gating it on the new data alone would refuse the tasks it was first trained for."""
    if not init:
        return InstructionGate(tuple(sorted(set(instructions))))
    base = InstructionGate.load(init)
    if base is None:
        print(f"warning: --init {init} has no {GATE_FILE}: the fine-tuned checkpoint will not refuse any "
              "instruction either", file=sys.stderr)
        return None
    return InstructionGate(tuple(sorted(set(instructions) | set(base.texts))), base.min_similarity)


def config_for_data(base: MambaVLAConfig, episodes: TrainingEpisodes, settings: TrainSettings) -> MambaVLAConfig:
    """The preset, adapted to the episodes (cameras, image size, rates) and to how it is trained."""
    return base.replace(
        cameras=episodes.cameras,
        image_size=episodes.image_size,
        dt=episodes.dt,
        policy_period=episodes.policy_period,
        action_mode=settings.action_mode,
        history_mode=settings.history,
        history_frames=settings.history_frames,
    )


class Trainer:
    def __init__(
        self,
        run: str | Path,
        data: list[str],
        preset_name: str = "base",
        settings: TrainSettings | None = None,
        overrides: dict | None = None,
        progress: bool = True,
        stats: dict | None = None,
        config: MambaVLAConfig | None = None,
    ):
        """`config`: the run's own (--resume), else the --init checkpoint's, else the preset's, with `overrides`."""
        self.run, self.data, self.preset_name = Path(run), [str(d) for d in data], preset_name
        self.settings, self.overrides = settings or TrainSettings(), dict(overrides or {})
        s = self.settings
        self.rank, self.world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        self.main = self.rank == 0
        self.progress = progress and self.main
        if self.world > 1 and torch.device(s.device).type == "cuda":  # torchrun: one GPU per process, NCCL
            torch.distributed.init_process_group("nccl")
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(self.device)
        else:  # torchrun with --device cpu: gloo, one process per core (how the CPU tests check DDP)
            if self.world > 1:
                torch.distributed.init_process_group("gloo")
            self.device = torch.device(s.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but CUDA is not available")
        self.autocast = self.device.type == "cuda" and s.bf16

        fine_tuning = bool(s.init) and config is None  # (a resumed fine-tuning run has its own config)
        base = (config or (load_config(s.init) if fine_tuning else preset(preset_name))).replace(**self.overrides)
        if s.depth and not base.use_depth:
            base = base.replace(use_depth=True)
        cameras = s.cameras or (
            base.cameras if s.init else None
        )  # fine-tuning: the checkpoint's cameras, found by name
        self.episodes = load_episodes(
            self.data, base.policy_period, self.progress, s.read_options(base, bool(s.init)), cameras
        )
        if fine_tuning and (self.episodes.cameras, self.episodes.image_size) != (base.cameras, base.image_size):
            raise ValueError(
                f"--init {s.init}: the data's cameras {list(self.episodes.cameras)} at {self.episodes.image_size} "
                f"are not the checkpoint's {list(base.cameras)} at {base.image_size}"
            )
        self.config = config_for_data(base, self.episodes, s)
        self.gate = instruction_gate(self.episodes.instructions, s.init)
        self.train_ids, self.val_ids = self.episodes.split(s.val_fraction)
        self.train_ids = self.episodes.first_per_task(self.train_ids, s.episodes_per_task)
        # where the named cube started, per episode (NaN where unknown): the grounding head's targets. No head
        # when it would get no gradient (no targets, or weight 0): DDP requires every parameter to be used
        self.targets = (
            named_cube_starts(self.episodes.meta, self.episodes.instructions) if self.config.grounding_head else None
        )
        if self.targets is not None and (s.grounding_weight == 0 or not np.isfinite(self.targets).all(1).any()):
            self.config, self.targets = self.config.replace(grounding_head=False), None
        # and for each episode the other cubes of its layout, named: the same frames with another answer
        self.other_targets = (
            other_cube_starts(self.episodes.meta, self.episodes.instructions) if self.targets is not None else None
        )
        if (
            self.other_targets is not None and self.episodes.embeddings is not None
        ):  # a pack embeds only what it was built with
            self.other_targets = [
                [(t, xy) for t, xy in others if t in self.episodes.embeddings] for others in self.other_targets
            ]
        # `stats` given (--resume: RUN/last's): weights and statistics come from the run, not from --init
        init = _init_checkpoint(s.init, self.config) if s.init and stats is None else None
        if stats is None:
            stats = self.episodes.norm_stats(self.config.chunk_size, s.action_mode)
            if init and s.init_stats == "checkpoint":
                stats = init[1]
            elif init and s.init_stats == "merge":
                stats = merge_stats(init[1], stats)
        encoder = None
        if self.episodes.embeddings is not None:
            from mambavla.model.language import PrecomputedInstructions

            encoder = PrecomputedInstructions(self.episodes.embeddings, self.config.max_instruction_tokens)
        torch.manual_seed(s.seed)
        self.model = MambaVLA(self.config, stats, instruction_encoder=encoder).to(self.device)
        if init:
            self.model.load_state_dict(init[0])  # strict: the same architecture, or an error naming the keys
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.optimizer, self.schedule = make_optimizer(self.model, s.lr, s.weight_decay, s.warmup, s.steps)
        self.trained = self.model
        if self.world > 1:
            self.trained = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.frames = {
            c: torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for c, v in self.episodes.frames.items()
        }
        if self.config.use_depth:
            missing = [c for c in self.config.cameras if c not in self.episodes.depth]
            if missing:
                raise ValueError(f"this policy takes depth, and the data has none for camera(s) {missing}: train "
                                 f"on bags read with --depth, or a pack made with --depth")
            # int16 (torch indexes it; uint16 it barely supports): depth beyond 32.767 m is past any depth_scale
            self.depth = {c: torch.from_numpy(np.minimum(self.episodes.depth[c], 32767).astype(np.int16))
                          .to(self.device) for c in self.config.cameras}
        self.rng = np.random.default_rng([s.seed, self.rank])
        self.generator = torch.Generator(device=self.device).manual_seed(s.seed * 1000 + self.rank)
        self.step, self.best_val = 0, math.inf
        self.history: dict[str, list] = {"loss": [], **{history: [] for history, _ in VALIDATION_SCORES.values()}}

    # ---- run folder ----------------------------------------------------------------------------

    def describe(self) -> dict:
        return {
            "data": self.data,
            "preset": self.preset_name,
            "overrides": self.overrides,
            "settings": asdict(self.settings),
            "config": self.config.to_dict(),
            "data_summary": self.episodes.summary(),
            "validation_episodes": len(self.val_ids),
            "world_size": self.world,
        }

    @classmethod
    def resume(
        cls, run: str | Path, steps: int | None = None, progress: bool = True, max_seconds: float | None = None
    ) -> Trainer:
        run = Path(run)
        if not (run / RUN_FILE).is_file() or not (run / "last" / STATE_FILE).is_file():
            raise FileNotFoundError(f"{run}: not a run folder to resume (needs {RUN_FILE} and last/{STATE_FILE})")
        info = json.loads((run / RUN_FILE).read_text())
        known = {f.name for f in fields(TrainSettings)}
        settings = TrainSettings(**{k: v for k, v in info["settings"].items() if k in known})
        if steps is not None:
            settings.steps = steps
        if max_seconds is not None:
            settings.max_seconds = max_seconds
        stats = json.loads((run / "last" / STATS).read_text())
        trainer = cls(
            run,
            info["data"],
            info["preset"],
            settings,
            info["overrides"],
            progress,
            stats=stats,
            config=MambaVLAConfig.from_dict(info["config"]),
        )
        state = torch.load(run / "last" / STATE_FILE, map_location=trainer.device, weights_only=False)
        trainer.model.load_state_dict(state["model"])
        trainer.ema.load_state_dict(state["ema"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.schedule.load_state_dict(state["schedule"])
        trainer.step, trainer.best_val, trainer.history = (
            state["step"],
            state["best_val"],
            {**trainer.history, **state["history"]},
        )
        trainer.rng.bit_generator.state = state["numpy_rng"]
        trainer.generator.set_state(state["torch_generator"].cpu())
        return trainer

    def _checkpoint(self, name: str, meta: dict) -> Path:
        """The EMA weights as RUN/<name>, with the instructions the runtime's gate accepts."""
        folder = save_checkpoint(self.ema, self.run / name, meta=meta)
        if self.gate is not None:
            self.gate.save(folder)
        return folder

    def save(self, final: bool = False) -> None:
        if not self.main:
            return
        meta = {
            "steps_done": self.step,
            "partial": not final,
            "ema_decay": self.settings.ema_decay,
            "run": str(self.run),
        }
        last = self._checkpoint("last", meta)
        torch.save(
            {
                "model": self.model.state_dict(),
                "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(),
                "step": self.step,
                "best_val": self.best_val,
                "history": self.history,
                "numpy_rng": self.rng.bit_generator.state,
                "torch_generator": self.generator.get_state(),
            },
            last / STATE_FILE,
        )

    # ---- one step ------------------------------------------------------------------------------

    def batch(self, episodes: np.ndarray, rng: np.random.Generator, train: bool) -> dict:
        s, c = self.settings, self.config
        if s.history == "stream":
            # each step: vectorised, ~0.07 ms for 480 ids on this CPU against a training step of 0.5-1 s
            weights = self.episodes.task_balanced_weights(episodes) if train and s.balance_tasks else None
            raw = self.episodes.segments(
                rng, s.batch_size, s.segment_frames, c.chunk_size, episodes, s.action_mode, weights
            )
        else:
            raw = self.episodes.windows(rng, s.batch_size, s.history_frames, c.chunk_size, episodes, s.action_mode)
        index = torch.from_numpy(raw["frame_index"]).to(self.device)  # (B, T)
        images = {cam: self.frames[cam][index].permute(0, 1, 4, 2, 3).float() for cam in self.frames}  # (B, T, 3, H, W)
        if c.use_depth:  # the fourth channel, as the runtime builds it
            images = {cam: torch.cat([v, depth_channel(self.depth[cam][index], c.depth_scale)[:, :, None]], dim=2)
                      for cam, v in images.items()}
        if train and s.augment:
            images = {cam: augment(v, self.generator, shift=s.shift_px) for cam, v in images.items()}
        tensor = lambda key: torch.from_numpy(np.ascontiguousarray(raw[key])).to(self.device)  # noqa: E731
        out = {
            "instruction": raw["instruction"],
            "images": images,
            "proprio": tensor("proprio"),
            "actions": tensor("actions"),
            "action_pad": tensor("action_pad"),
        }
        if self.targets is not None:  # validation leaves them out of its loss, which stays the flow loss
            out["target_xy"] = torch.from_numpy(self.targets[raw["episode"]]).to(self.device)
            out["grounding_weight"] = s.grounding_weight if train else 0.0
            if train and s.other_cube_grounding:
                texts, xys = [], []
                for e, text in zip(raw["episode"], raw["instruction"]):
                    others = self.other_targets[e]  # none: the true instruction again, with no target
                    text, xy = others[rng.integers(len(others))] if others else (text, np.full(2, np.nan, np.float32))
                    texts.append(text)
                    xys.append(xy)
                out["other_instruction"], out["other_xy"] = texts, torch.from_numpy(np.stack(xys)).to(self.device)
        return out

    def train_step(self) -> tuple[float, float]:
        self.trained.train()
        batch = self.batch(self.train_ids, self.rng, train=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            loss = self.trained(batch, self.generator)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {self.step}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.clip)
        self.optimizer.step()
        self.schedule.step()
        with torch.no_grad():  # EMA, warmed up so early weights do not linger
            decay = min(self.settings.ema_decay, (1 + self.step) / (10 + self.step))
            ema, live = list(self.ema.parameters()), list(self.model.parameters())
            torch._foreach_lerp_(ema, live, 1.0 - decay)
        self.step += 1
        return loss.item(), grad_norm.item()

    @torch.no_grad()
    def validate(self, batches: int = 4) -> dict | None:
        """Loss of the EMA weights on held-out episodes, with fixed segments and noise (comparable across
        steps) -> {"loss": ..., "other_cube": ..., "grounding_m": ...}. "other_cube" is the same loss, same
        noise, with each instruction naming another cube (None when no instruction names one): a policy that
        scores both alike is not reading which cube it was told, whatever its loss. "grounding_m": how far
        the grounding head's estimate of the named cube's start is from it (mean over frames; None without
        a head or targets); "grounding_first_frame_m": the same at each stream segment's first frame (the
        episode's start when the episode fits the segment), where the arm has not moved yet and only the
        instruction can say which cube: the sharpest test of grounding."""
        if not len(self.val_ids):
            return None
        rng = np.random.default_rng(12345)
        devices = [self.device] if self.device.type == "cuda" else []
        losses, other_losses, misses, first_misses = [], [], [], []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(12345)
            generator = torch.Generator(device=self.device).manual_seed(12345)
            for _ in range(batches):
                batch = self.batch(self.val_ids, rng, train=False)
                other = [self._other_cube(text) for text in batch["instruction"]]
                if self.ema.target_head is not None and torch.isfinite(batch["target_xy"]).any():
                    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                        predicted = self.ema.predict_target(batch)
                    target = (
                        batch["target_xy"] if predicted.dim() == 2 else batch["target_xy"][:, None].expand_as(predicted)
                    )
                    miss = (predicted - target).norm(dim=-1)  # NaN where the episode has no target
                    misses.append(float(miss[torch.isfinite(miss)].mean()))
                    if miss.dim() == 2:  # stream: a segment's first frame, where only the instruction tells the cube
                        first_misses.append(float(miss[:, 0][torch.isfinite(miss[:, 0])].mean()))
                noise_state, time_state = generator.get_state(), torch.get_rng_state()  # noise; flow times (Beta, CPU)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                    losses.append(float(self.ema(batch, generator)))
                    if any(o is not None for o in other):
                        generator.set_state(noise_state)  # the same noise and flow times: a paired comparison
                        torch.set_rng_state(time_state)
                        swapped = [o or text for o, text in zip(other, batch["instruction"])]
                        other_losses.append(float(self.ema({**batch, "instruction": swapped}, generator)))
        return {
            "loss": float(np.mean(losses)),
            "other_cube": float(np.mean(other_losses)) if other_losses else None,
            "grounding_m": float(np.mean(misses)) if misses else None,
            "grounding_first_frame_m": float(np.mean(first_misses)) if first_misses else None,
        }

    def _other_cube(self, text: str) -> str | None:
        """`text` naming another cube, one the instruction encoder can embed (a pack embeds only its own)."""
        known = self.episodes.embeddings
        return next((o for o in other_cube_instructions(text) if known is None or o in known), None)

    # ---- the loop ------------------------------------------------------------------------------

    def _time_up(self, started: float) -> bool:
        """--max-seconds reached. Under DDP rank 0's clock decides for every rank: each rank reads its own
        clock at a different moment (rank 0 validates while the others wait in the next step's gradient
        all-reduce), and a rank that stopped alone would leave the others waiting there for good."""
        up = bool(self.settings.max_seconds) and time.time() - started > self.settings.max_seconds
        if self.world > 1 and self.settings.max_seconds:
            flag = torch.tensor([float(up)], device=self.device)
            torch.distributed.broadcast(flag, src=0)
            up = bool(flag.item())
        return up

    def fit(self) -> dict:
        from tqdm import tqdm

        s = self.settings
        writer = _tensorboard(self.run / "tb") if self.main else None
        if self.main:
            self.run.mkdir(parents=True, exist_ok=True)
            (self.run / RUN_FILE).write_text(json.dumps(self.describe(), indent=2))
        frames_per_batch = s.batch_size * (s.segment_frames if s.history == "stream" else s.history_frames) * self.world
        started, start_step = time.time(), self.step
        bar = tqdm(total=s.steps, initial=self.step, desc="train", disable=not self.progress, dynamic_ncols=True)
        while self.step < s.steps:
            if self._time_up(started):
                self.save()  # time box reached: --resume continues from here on the same schedule
                break
            t0 = time.perf_counter()
            loss, grad_norm = self.train_step()
            rate = frames_per_batch / max(time.perf_counter() - t0, 1e-9)
            self.history["loss"].append(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.schedule.get_last_lr()[0]:.1e}", frames_s=f"{rate:.0f}")
            if writer:
                writer.add_scalar("train/loss", loss, self.step)
                writer.add_scalar("train/grad_norm", grad_norm, self.step)
                writer.add_scalar("train/lr", self.schedule.get_last_lr()[0], self.step)
                writer.add_scalar("perf/frames_per_second", rate, self.step)
            if self.main and (self.step % s.val_every == 0 or self.step == s.steps):
                scores = self.validate()
                if scores is not None:
                    val = scores["loss"]
                    for key, (history, tag) in VALIDATION_SCORES.items():
                        if scores[key] is not None:
                            self.history[history].append([self.step, scores[key]])
                            if writer:
                                writer.add_scalar(tag, scores[key], self.step)
                    if val < self.best_val:
                        self.best_val = val
                        self._checkpoint("best", {"steps_done": self.step, "val_loss": val})
            if self.step % s.save_every == 0 or self.step == s.steps:
                self.save(final=self.step == s.steps)
        bar.close()
        seconds = time.time() - started
        if not self.main:
            torch.distributed.destroy_process_group()
            return {}
        if len(self.val_ids) == 0:  # nothing held out: the last weights are the best we know
            self._checkpoint("best", {"steps_done": self.step, "val_loss": None})
        window = max(1, min(100, len(self.history["loss"]) // 10))
        summary = {
            "run": str(self.run),
            "preset": self.preset_name,
            "fusion": self.config.fusion,
            "history": s.history,
            "episodes": len(self.episodes),
            "train_episodes": len(self.train_ids),
            "validation_episodes": len(self.val_ids),
            "frames": int(self.episodes.frame_start[-1]),
            "policy_period": self.config.policy_period,
            "action_mode": s.action_mode,
            "steps": self.step,
            "steps_planned": s.steps,
            "steps_this_session": self.step - start_step,
            "batch_size": s.batch_size,
            "world_size": self.world,
            "device": str(self.device),
            "bf16": self.autocast,
            "seconds": round(seconds, 1),
            "steps_per_second": round((self.step - start_step) / max(seconds, 1e-9), 2),
            "loss_first": float(np.mean(self.history["loss"][:window])),
            "loss_last": float(np.mean(self.history["loss"][-window:])),
            "loss_window_steps": window,
            "val_loss_best": None if math.isinf(self.best_val) else self.best_val,
            "val_loss_last": self.history["val"][-1][1] if self.history["val"] else None,
            # the last validation's loss with every instruction naming another cube, minus the true one's
            "val_other_cube_gap_last": (
                self.history["val_other_cube"][-1][1] - self.history["val"][-1][1]
                if self.history["val_other_cube"]
                else None
            ),
            "val_grounding_error_m_last": self.history["val_grounding_m"][-1][1]
            if self.history["val_grounding_m"]
            else None,
            "val_grounding_error_first_frame_m_last": (
                self.history["val_grounding_first_frame_m"][-1][1]
                if self.history["val_grounding_first_frame_m"]
                else None
            ),
            "episodes_with_grounding_target": None
            if self.targets is None
            else int(np.isfinite(self.targets).all(1).sum()),
            "parameters": self.model.parameter_counts(),
        }
        (self.run / "train_summary.json").write_text(json.dumps({**summary, **self.history}, indent=2))
        _plot_losses(self.history, self.run / "loss.png")
        if writer:
            writer.close()
        if self.world > 1:
            torch.distributed.destroy_process_group()
        return summary


def _init_checkpoint(path: str, config: MambaVLAConfig) -> tuple[dict, dict]:
    """Weights and statistics of checkpoint `path`, refused unless its architecture is the one being trained
    (the fields that only say how it runs or is trained may differ). A grounding head the data cannot supervise
    (no cube targets: any cell but the simulated one) is dropped from the weights, as it is from the config."""
    from safetensors.torch import load_file

    from mambavla.model.checkpoint import WEIGHTS

    theirs, ours = load_config(path).to_dict(), config.to_dict()
    how_it_runs = {"history_mode", "history_frames", "instruction_cache_size", "grounding_head"}
    rgb_to_depth = ours["use_depth"] and not theirs.get("use_depth")
    if rgb_to_depth:  # an RGB checkpoint becomes an RGB-D one: see below
        how_it_runs |= {"use_depth", "depth_scale"}
    differ = sorted(k for k in ours.keys() | theirs.keys() if k not in how_it_runs and ours.get(k) != theirs.get(k))
    if differ:
        raise ValueError(
            f"--init {path}: its config differs from the one being trained in {differ} "
            f"(e.g. {differ[0]}: {theirs.get(differ[0])!r} against {ours.get(differ[0])!r})"
        )
    if config.grounding_head and not theirs.get("grounding_head"):
        raise ValueError(f"--init {path}: it has no grounding head to fine-tune; train with --grounding-weight 0")
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(Path(path) / WEIGHTS)).items()}
    if not config.grounding_head:
        state = {k: v for k, v in state.items() if not k.startswith("target_head.")}
    if rgb_to_depth:
        stems = [k for k in state if k.startswith("vision.") and k.endswith(".stem.0.weight")]
        if not stems:
            raise ValueError(f"--init {path}: depth needs the resnet encoder; this checkpoint's vision is "
                             f"{theirs.get('vision')!r}")
        # the depth channel's first-layer weights start at zero: the fine-tuned policy starts as the RGB one
        for k in stems:
            state[k] = torch.cat([state[k], torch.zeros_like(state[k][:, :1])], dim=1)
    return state, json.loads((Path(path) / STATS).read_text())


def train(
    data: list[str],
    out: str | Path,
    preset_name: str = "base",
    settings: TrainSettings | None = None,
    overrides: dict | None = None,
    progress: bool = True,
) -> dict:
    return Trainer(out, data, preset_name, settings, overrides, progress).fit()


def _tensorboard(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # a bare GPU box: training goes on, the scalars are in train_summary.json
        print("warning: tensorboard is not installed; no TensorBoard scalars", file=sys.stderr)
        return None
    return SummaryWriter(str(folder))


def _plot_losses(history: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("warning: matplotlib is not installed; no loss.png", file=sys.stderr)
        return
    losses = np.asarray(history["loss"])
    window = max(1, len(losses) // 100)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(np.arange(len(losses)) + 1, losses, color="0.8", lw=0.6, label="train (per step)")
    if len(losses) >= window:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(len(smooth)) + window, smooth, color="C0", label=f"train (mean of {window})")
    if history["val"]:
        steps, val = zip(*history["val"])
        ax.plot(steps, val, "o-", color="C3", label="validation (EMA weights)")
    if history.get("val_other_cube"):
        steps, val = zip(*history["val_other_cube"])
        ax.plot(steps, val, "s--", color="C1", label="validation, instruction naming another cube")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
