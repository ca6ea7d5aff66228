"""MambaVLA: vision + language tokens fused by a Mamba-2 stack, actions by rectified flow matching.

Sequence per episode: `[instruction tokens | frame 1 tokens | frame 2 tokens | ... | action tokens]`
with frame tokens = per-camera grids (through the connector) + one proprio token. The three levels of
recurrent-state caching this layout allows:
  1. `condition(instruction)` once per instruction -> prefix state;
  2. `condition(frame, state)` once per control step, continuing from the last state (streaming);
  3. `velocity(x_t, t, context_state)` per flow step re-scans only the H action tokens.
Causality makes each level exact: the state after a prefix is all that later tokens can see.

Flow convention (rectified flow): x_t = t * noise + (1 - t) * actions, target velocity
noise - actions, t ~ Beta(a, b) during training; sampling integrates from t = 1 to 0 with Euler steps.
Time enters the action tokens through FiLM in every layer. The instruction is also pooled into a task
vector that is added to every frame's tokens and to the action tokens' FiLM condition: grounding ("the
blue cube", not the nearest one) must not depend on the prefix surviving the state's decay.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import Tensor, nn

from mambavla.model.config import MambaVLAConfig
from mambavla.model.fusion import build_fusion
from mambavla.model.language import InstructionEncoder
from mambavla.model.mamba2 import RMSNorm
from mambavla.model.normalization import Normalizer, placeholder_stats
from mambavla.model.vision import Connector, PretrainedTower, ResNetEncoder

XY = slice(0, 2)  # the action columns x, y (config.grounding_head checks they come first)


def _time_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of flow time t (B,) in [0, 1] -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = 1000.0 * t.float()[:, None] * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def _pixel_stats(config: MambaVLAConfig) -> tuple[list[float], list[float]]:
    if config.vision_path:
        pre = Path(config.vision_path) / "preprocessor_config.json"
        if pre.exists():
            data = json.loads(pre.read_text())
            if "image_mean" in data and "image_std" in data:
                return list(data["image_mean"]), list(data["image_std"])
    if config.vision == "dinov2":
        return [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    return [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]


class MambaVLA(nn.Module):
    def __init__(self, config: MambaVLAConfig, stats: dict | None = None, instruction_encoder=None):
        """`instruction_encoder`: defaults to the config's frozen encoder; a `PrecomputedInstructions`
        table trains where the encoder's weights are not available."""
        super().__init__()
        self.config = config
        d, H, A = config.d_model, config.chunk_size, config.action_dim
        in_channels = 4 if config.use_depth else 3
        if config.vision == "resnet":
            self.vision = nn.ModuleDict({cam: ResNetEncoder(in_channels, config.resnet_widths, config.vision_grid, d,
                                                            film=config.vision_film)
                                         for cam in config.cameras})
        else:
            if config.use_depth:
                raise ValueError("depth input is supported with the resnet encoder only")
            self.vision = nn.ModuleDict({"tower": PretrainedTower(config)})
        mean, std = _pixel_stats(config)
        if config.use_depth:
            mean, std = mean + [0.0], std + [1.0]
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.camera_embed = nn.Parameter(torch.randn(len(config.cameras), d) * 0.02)
        self.connector = Connector(config)

        # frozen and shipped by its own package: a plain attribute, so not in state_dict or .to()
        self.instruction_encoder = instruction_encoder or InstructionEncoder(config.language,
                                                                             config.max_instruction_tokens,
                                                                             config.instruction_cache_size)
        self.instruction_proj = nn.Linear(self.instruction_encoder.width, d)
        # the task vector (pooled instruction) enters every frame and the action head directly: through the
        # recurrent state alone the instruction fades with every frame scanned after it
        self.task_to_frame = nn.Linear(d, d)
        self.task_to_action = nn.Linear(d, d)
        self.proprio_proj = nn.Linear(config.proprio_dim, d)

        self.fusion = build_fusion(config)

        # training only (config.grounding_head): the fusion's output after a frame -> the named cube's start (x, y)
        self.target_head = nn.Sequential(RMSNorm(d), nn.Linear(d, 2)) if config.grounding_head else None

        self.action_in = nn.Linear(A, d)
        self.action_pos = nn.Parameter(torch.randn(H, d) * 0.02)
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.norm_out = RMSNorm(d)
        self.action_out = nn.Linear(d, A)

        self.normalizer = Normalizer(stats if stats is not None else placeholder_stats(config), config)

    # ---- encoders -------------------------------------------------------------------------------

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        self.instruction_encoder.to(self.pixel_mean.device)  # follow the policy across devices
        return out

    def encode_instruction(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """texts -> instruction tokens (B, L, d), mask (B, L)."""
        emb, mask = self.instruction_encoder.encode(texts)
        return self.instruction_proj(emb.to(self.instruction_proj.weight.dtype)), mask

    def task_vector(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """Instruction tokens (B, L, d) and mask (B, L) -> the task vector (B, d): their masked mean."""
        weight = mask.to(tokens.dtype)[..., None]
        return (tokens * weight).sum(1) / weight.sum(1).clamp_min(1.0)

    def encode_frame(self, images: dict[str, Tensor], proprio: Tensor, task: Tensor | None = None) -> Tensor:
        """images {camera: (B, C, H, W) uint8 or float 0..255}, proprio (B, P) in robot units, task (B, d)
        -> frame tokens (B, tokens_per_frame, d)."""
        cameras, dtype = self.config.cameras, self.camera_embed.dtype
        # contiguous NCHW: torch 2.13's CPU conv/GroupNorm backward corrupts memory on channels-last input
        pixels = [((images[cam].to(self.pixel_mean.dtype).contiguous() / 255.0 - self.pixel_mean)
                   / self.pixel_std).to(dtype) for cam in cameras]
        if self.config.vision == "resnet":  # an encoder per camera; a FiLM encoder looks for what the task vector names
            film = task if self.config.vision_film else None
            grids = torch.stack([self.vision[cam](p, film) for cam, p in zip(cameras, pixels)])
        else:  # one shared tower: every camera in one batch (one pass instead of one per camera)
            grids = self.vision["tower"](torch.cat(pixels)).unflatten(0, (len(cameras), -1))
        grids = grids + self.camera_embed[:, None, None]  # (cameras, B, g*g, d)
        # the shared connector over every camera at once (it works on each grid alone), then camera after camera
        tokens = self.connector(grids.flatten(0, 1)).unflatten(0, grids.shape[:2]).transpose(0, 1).flatten(1, 2)
        proprio = self.proprio_proj(self.normalizer.proprio(proprio.float()).to(dtype))[:, None]
        tokens = torch.cat([tokens, proprio], dim=1)
        if task is not None:
            tokens = tokens + self.task_to_frame(task)[:, None]
        return tokens

    # ---- fusion with cached state -----------------------------------------------------------------

    def condition(self, tokens: Tensor, state: list | None = None, mask: Tensor | None = None) -> list:
        """Scan context tokens (instruction or frames) from `state`; returns the new state."""
        _, state = self.fusion(tokens, state, mask=mask)
        return state

    def velocity(self, x_t: Tensor, t: Tensor | None, state: list, task: Tensor | None = None,
                 modulation: list | None = None) -> Tensor:
        """x_t (B, H, A) normalised noisy actions, t (B,), task (B, d) -> velocity (B, H, A). Re-scans only
        the action tokens from the context state (which it does not modify). `modulation`: this flow step's
        FiLM for every layer (`flow_modulations`), computed beforehand from t and task, which it replaces."""
        if modulation is not None:
            tokens, cond = self.action_in(x_t) + self.action_pos, modulation
        elif t is None:
            raise ValueError("velocity needs the flow time t, or a modulation from flow_modulations")
        else:
            tokens, cond = self.action_tokens(x_t, t)
            if task is not None:
                cond = cond + self.task_to_action(task)
        hidden, _ = self.fusion(tokens, state, cond=cond)
        return self.action_out(self.norm_out(hidden))

    def time_condition(self, t: Tensor) -> Tensor:
        """t (N,) fp32 -> the time condition (N, d)."""
        # the sinusoid sees t in fp32: bf16 rounding of t before the x1000 scale would shift phases by ~1 rad
        with torch.autocast(t.device.type, enabled=False):
            embedding = _time_embedding(t.float(), self.config.d_model)
        return self.time_mlp(embedding.to(self.time_mlp[0].weight.dtype))

    def action_tokens(self, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """x_t (B, H, A), t (B,) fp32 -> action tokens (B, H, d) and the time condition (B, d)."""
        return self.action_in(x_t) + self.action_pos, self.time_condition(t)

    def flow_modulations(self, times: Tensor, task: Tensor | None = None) -> list[list[tuple[Tensor, Tensor]]]:
        """times (S, B) fp32, the flow times of S steps for B samples; task (B, d) -> for each step, what
        `velocity` takes as `modulation`: every layer's FiLM (scale, shift), each (B, 1, d). The time MLP, the
        task's term and each layer's FiLM projection run once over all S steps instead of once per step
        (fewer, larger matmuls in a step that is launch-bound on a GPU)."""
        steps, b = times.shape
        cond = self.time_condition(times.reshape(-1))  # (S * B, d), step-major
        if task is not None:
            cond = cond + self.task_to_action(task).repeat(steps, 1)
        layers = self.fusion.modulations(cond)
        return [[(scale[i * b:(i + 1) * b], shift[i * b:(i + 1) * b]) for scale, shift in layers] for i in range(steps)]

    @torch.no_grad()
    def sample_actions(self, state: list, noise: Tensor, steps: int | None = None,
                       task: Tensor | None = None) -> Tensor:
        """Euler integration from noise (t = 1) to actions (t = 0); returns normalised actions (B, H, A)."""
        steps = steps or self.config.flow_steps
        # t_i = 1 - i / steps, as (steps - i) / steps in fp32 (each the fp32 nearest the exact value); made on
        # the device, so a CUDA graph can capture it
        times = (steps - torch.arange(steps, device=noise.device, dtype=torch.float32)) / steps
        modulations = self.flow_modulations(times[:, None].expand(steps, noise.shape[0]), task)
        x = noise
        for modulation in modulations:
            x = x - self.velocity(x, None, state, modulation=modulation) / steps
        return x

    # ---- training -----------------------------------------------------------------------------

    def stream_states(self, prompt: Tensor, mask: Tensor, images: dict[str, Tensor],
                      proprio: Tensor) -> tuple[list, Tensor]:
        """One parallel scan of `[instruction | frame 1 | ... | frame T]` -> per layer, the state after
        every frame, batch (B * T): exactly what the streaming runtime holds after each step; and the
        task vector of each of those B * T contexts.

        prompt (B, Lp, d), mask (B, Lp), images {camera: (B, T, C, H, W)}, proprio (B, T, P)."""
        states, task, _ = self._stream_scan(prompt, mask, images, proprio)
        return states, task

    def _stream_scan(self, prompt: Tensor, mask: Tensor, images: dict[str, Tensor],
                     proprio: Tensor) -> tuple[list, Tensor, Tensor]:
        """stream_states, and the fusion's output at every frame's last token (B, T, d)."""
        b, k = proprio.shape[:2]
        task = self.task_vector(prompt, mask).repeat_interleave(k, dim=0)  # (B * T, d)
        frames = self.encode_frame({c: v.flatten(0, 1) for c, v in images.items()}, proprio.flatten(0, 1), task)
        n = frames.shape[1]
        tokens = torch.cat([prompt, frames.reshape(b, k * n, -1)], dim=1)
        full_mask = torch.cat([mask, torch.ones(b, k * n, dtype=torch.bool, device=mask.device)], dim=1)
        hidden, states = self.fusion(tokens, mask=full_mask, frames=(prompt.shape[1], n))
        frame_ends = hidden[:, prompt.shape[1] + n - 1:: n]  # (B, T, d)
        return [type(s)(*(t.flatten(0, 1) for t in s)) for s in states], task, frame_ends

    def grounding_loss(self, frame_ends: Tensor, target_xy: Tensor | None) -> Tensor | None:
        """Mean squared error of the named cube's start (x, y) predicted from the fusion's output after each
        frame, in the action normalisation ([-1, 1] over the data's x, y range). frame_ends (B, T, d) or
        (B, d); target_xy (B, 2) metres, NaN where unknown. None without a head or a known target."""
        if self.target_head is None or target_xy is None:
            return None
        known = torch.isfinite(target_xy).all(-1)  # (B,)
        if not known.any():
            return None
        target = self.normalizer.actions(target_xy, XY)
        predicted = self.target_head(frame_ends).float()
        if predicted.dim() == 3:  # every frame of a segment predicts its episode's target
            target = target[:, None].expand_as(predicted)
        return (predicted - target).pow(2)[known].mean()

    def flow_loss(self, state: list, actions: Tensor, pad: Tensor | None = None,
                  generator: torch.Generator | None = None,
                  task: Tensor | None = None) -> Tensor:
        """Flow-matching loss of action chunks (B, H, A) in robot units, each from its context state;
        pad (B, H) bool leaves out steps past an episode's end."""
        actions = self.normalizer.actions(actions.float()).to(self.action_in.weight.dtype)
        b = actions.shape[0]
        noise = torch.randn(actions.shape, generator=generator, device=actions.device, dtype=actions.dtype)
        a, c = self.config.time_beta
        beta = torch.distributions.Beta(torch.tensor(a), torch.tensor(c))
        t = beta.sample((b,)).to(actions.device) * 0.999 + 0.001  # (B,) fp32
        x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * actions
        error = (self.velocity(x_t, t, state, task).float() - (noise - actions)).pow(2)  # (B, H, A)
        if pad is None:
            return error.mean()
        keep = (~pad.to(error.device, torch.bool)).to(error.dtype)[..., None]
        return (error * keep).sum() / (keep.sum() * error.shape[-1]).clamp_min(1.0)

    def stream_loss(self, batch: dict, generator: torch.Generator | None = None) -> Tensor:
        """Stream-mode training: episode segments of T frames, every frame's chunk scored from the state
        after that frame. batch: {"instruction": [str] * B, "images": {camera: (B, T, C, H, W)},
        "proprio": (B, T, P), "actions": (B, T, H, A), "action_pad": (B, T, H) bool}."""
        prompt, mask = self.encode_instruction(list(batch["instruction"]))
        state, task, frame_ends = self._stream_scan(prompt, mask, batch["images"], batch["proprio"])
        pad = batch.get("action_pad")
        loss = self.flow_loss(state, batch["actions"].flatten(0, 1), None if pad is None else pad.flatten(0, 1),
                              generator, task)
        return self._with_grounding(loss, frame_ends, batch)

    def _with_grounding(self, loss: Tensor, frame_ends: Tensor, batch: dict) -> Tensor:
        """The flow loss plus `grounding_weight` times the grounding loss, when the batch has targets. With
        "other_instruction" [str] * B and "other_xy" (B, 2) (another cube of the same layout named, where it
        started; NaN where none) the same frames are scanned again under that instruction and the head's loss
        is the mean of both: the same picture must then give different answers for different colour words."""
        weight = batch.get("grounding_weight", 0.0)
        if not weight:
            return loss
        terms = [self.grounding_loss(frame_ends, batch.get("target_xy"))]
        if batch.get("other_instruction") is not None:
            prompt, mask = self.encode_instruction(list(batch["other_instruction"]))
            other_ends = self._context_scan(prompt, mask, batch["images"], batch["proprio"])[2]
            terms.append(self.grounding_loss(other_ends, batch["other_xy"]))
        terms = [t for t in terms if t is not None]
        return loss + weight * sum(terms) / len(terms) if terms else loss

    def _context_scan(self, prompt: Tensor, mask: Tensor, images: dict[str, Tensor],
                      proprio: Tensor) -> tuple[list, Tensor, Tensor]:
        """The config's history mode's scan: `_stream_scan` (output after every frame) or `_window_scan`."""
        scan = self._stream_scan if self.config.history_mode == "stream" else self._window_scan
        return scan(prompt, mask, images, proprio)

    def loss(self, batch: dict, generator: torch.Generator | None = None) -> Tensor:
        """Flow-matching loss on a batch: {"instruction": [str] * B, "images": {camera: (B, C, H, W)},
        "proprio": (B, P), "actions": (B, H, A) in robot units}, optionally "action_pad" (B, H) bool to
        leave out steps past an episode's end. For history training, images (B, K, C, H, W) and
        proprio (B, K, P) with K frames in time order."""
        prompt, mask = self.encode_instruction(list(batch["instruction"]))
        state, task, last = self._window_scan(prompt, mask, batch["images"], batch["proprio"])
        loss = self.flow_loss(state, batch["actions"], batch.get("action_pad"), generator, task)
        return self._with_grounding(loss, last, batch)

    def _window_scan(self, prompt: Tensor, mask: Tensor, images: dict[str, Tensor],
                     proprio: Tensor) -> tuple[list, Tensor, Tensor]:
        """`[instruction | K frames]` of each sample in one scan -> the state after it, the task vector and
        the fusion's output at the last token (B, d). images (B, [K,] C, H, W), proprio (B, [K,] P)."""
        if proprio.dim() == 2:  # one frame: K = 1
            images, proprio = {c: v[:, None] for c, v in images.items()}, proprio[:, None]
        b, k = proprio.shape[:2]
        task = self.task_vector(prompt, mask)
        # every frame of every window through the encoders in one batch, then back to time order
        frames = self.encode_frame({c: v.flatten(0, 1) for c, v in images.items()}, proprio.flatten(0, 1),
                                   task.repeat_interleave(k, dim=0))
        frames = frames.reshape(b, k * frames.shape[1], frames.shape[2])
        tokens = torch.cat([prompt, frames], dim=1)
        full_mask = torch.cat([mask, torch.ones(frames.shape[:2], dtype=torch.bool, device=mask.device)], dim=1)
        hidden, state = self.fusion(tokens, mask=full_mask)
        return state, task, hidden[:, -1]

    @torch.no_grad()
    def predict_target(self, batch: dict) -> Tensor:
        """The grounding head's estimate of where the named cube started, metres: (B, T, 2) after every frame
        of stream segments, (B, 2) for windows. Training diagnostics; the runtime never calls it."""
        if self.target_head is None:
            raise ValueError("predict_target: this policy has no grounding head (config.grounding_head)")
        prompt, mask = self.encode_instruction(list(batch["instruction"]))
        ends = self._context_scan(prompt, mask, batch["images"], batch["proprio"])[2]
        return self.normalizer.unnormalize_actions(self.target_head(ends).float(), XY)

    def forward(self, batch: dict, generator: torch.Generator | None = None) -> Tensor:
        """The training objective for the config's history mode (so DDP can wrap the policy)."""
        if self.config.history_mode == "stream":
            return self.stream_loss(batch, generator)
        return self.loss(batch, generator)

    # ---- introspection ------------------------------------------------------------------------

    def parameter_counts(self) -> dict[str, int]:
        def count(*modules) -> int:
            return sum(p.numel() for m in modules for p in (m.parameters() if isinstance(m, nn.Module) else [m]))

        counts = {
            "vision": count(self.vision, self.camera_embed),
            "connector": count(self.connector),
            "language_encoder (frozen, shipped separately)": self.instruction_encoder.parameter_count(),
            "language_projection": count(self.instruction_proj, self.task_to_frame, self.task_to_action),
            "proprio": count(self.proprio_proj),
            f"fusion ({self.config.fusion})": count(self.fusion),
            "action_head": count(self.action_in, self.action_pos, self.time_mlp, self.norm_out, self.action_out),
        }
        if self.target_head is not None:
            counts["grounding_head (training only)"] = count(self.target_head)
        counts["policy_total (checkpoint)"] = count(self)
        counts["trainable"] = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return counts
