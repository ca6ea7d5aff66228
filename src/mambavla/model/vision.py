"""Per-camera vision encoders (spatial tokens) and VL-Mamba's MultiModal Connector."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mambavla.model.config import MambaVLAConfig
from mambavla.model.mamba2 import Mamba2Mixer, RMSNorm


def depth_channel(depth_mm: Tensor, scale: float) -> Tensor:
    """uint16 depth in mm (any shape) -> float32 0..255, `scale` metres at 255 and beyond: the fourth input channel
    of a depth policy, on the colour channels' scale (training and the runtime both build it here). No reading
    (0) reads as touching the lens: a sensor's hole, which training data has too."""
    return (depth_mm.float() * (255.0 / (1000.0 * scale))).clamp(0.0, 255.0)


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels // 4) or 1, channels)


class _ResidualBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.norm1 = _group_norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.norm2 = _group_norm(c_out)
        self.skip = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), _group_norm(c_out))

    def forward(self, x: Tensor) -> Tensor:
        h = F.silu(self.norm1(self.conv1(x)))
        return F.silu(self.norm2(self.conv2(h)) + self.skip(x))


class ResNetEncoder(nn.Module):
    """Small ResNet with GroupNorm (batch-size independent), trained from scratch as in MambaVLA. With
    `film`, a condition vector (the task vector, width `d_model`) modulates every stage's output,
    x * (1 + gamma) + beta (FiLM). The FiLM layers start at zero, so training starts from the plain
    encoder and learns how much the instruction should steer what the encoder picks out."""

    def __init__(self, in_channels: int, widths: tuple[int, ...], grid: int, d_model: int, film: bool = False):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 2, 1, bias=False), _group_norm(widths[0]),
                                  nn.SiLU())
        stages, c = [], widths[0]
        for w in widths:
            stages.append(_ResidualBlock(c, w, stride=2))
            c = w
        self.stages = nn.ModuleList(stages)
        self.film = nn.ModuleList(nn.Linear(d_model, 2 * w) for w in widths) if film else None
        if self.film is not None:
            for layer in self.film:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.proj = nn.Linear(c, d_model)

    def forward(self, images: Tensor, condition: Tensor | None = None) -> Tensor:
        """images (B, C, H, W) normalised, condition (B, d_model) for a FiLM encoder -> tokens (B, grid*grid,
        d_model), row-major."""
        if (self.film is None) != (condition is None):
            raise ValueError("ResNetEncoder: a FiLM encoder needs a condition (the task vector), a plain one takes "
                             "none")
        x = self.stem(images)
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if self.film is not None:
                gamma, beta = self.film[i](condition.to(x.dtype))[:, :, None, None].chunk(2, dim=1)
                x = x * (1 + gamma) + beta
        feats = self.pool(x)  # (B, c, g, g)
        return self.proj(feats.flatten(2).transpose(1, 2))


class PretrainedTower(nn.Module):
    """A transformers vision tower (SigLIP, DINOv2, Eagle2's SigLIP …) giving a patch grid, pooled to
    `grid` x `grid` tokens. `vision_path` loads local weights; without it the architecture's defaults
    are built with random weights (sizing and benchmarks)."""

    def __init__(self, config: MambaVLAConfig):
        super().__init__()
        from transformers import AutoConfig, AutoModel

        if config.vision_path:
            model = AutoModel.from_pretrained(config.vision_path)
        elif config.vision == "siglip":
            from transformers import SiglipVisionConfig, SiglipVisionModel

            model = SiglipVisionModel(SiglipVisionConfig(image_size=config.image_size[0]))
        elif config.vision == "dinov2":
            model = AutoModel.from_config(AutoConfig.for_model("dinov2", image_size=config.image_size[0]))
        else:
            raise ValueError(f"vision {config.vision!r} needs vision_path")
        self.tower = getattr(model, "vision_model", model)  # CLIP/SigLIP full models keep the tower here
        tower_cfg = getattr(self.tower, "config", model.config)
        tower_cfg = getattr(tower_cfg, "vision_config", tower_cfg)
        self.patch = int(tower_cfg.patch_size)
        self.width = int(tower_cfg.hidden_size)
        if config.freeze_vision:
            self.tower.requires_grad_(False)
        self.pool = nn.AdaptiveAvgPool2d(config.vision_grid)
        self.proj = nn.Linear(self.width, config.d_model)

    def forward(self, images: Tensor) -> Tensor:
        h, w = images.shape[-2:]
        gh, gw = h // self.patch, w // self.patch
        hidden = self.tower(pixel_values=images).last_hidden_state  # (B, [cls, registers,] gh*gw, width)
        patches = hidden[:, -gh * gw:]  # drop CLS / register tokens where the tower has them
        grid = patches.transpose(1, 2).reshape(images.shape[0], self.width, gh, gw)
        return self.proj(self.pool(grid).flatten(2).transpose(1, 2))


class SelectiveScan2D(nn.Module):
    """VL-Mamba's 2D selective scan over a token grid: `bsm` scans row-major forwards and backwards,
    `csm` adds column-major forwards and backwards. One Mamba-2 mixer per direction, outputs summed."""

    def __init__(self, d_model: int, grid: int, scan: str, d_state: int, headdim: int):
        super().__init__()
        rows = torch.arange(grid * grid)
        cols = rows.view(grid, grid).t().reshape(-1)
        orders = [rows, rows.flip(0)] + ([cols, cols.flip(0)] if scan == "csm" else [])
        self.register_buffer("orders", torch.stack(orders), persistent=False)  # (n_dir, g*g)
        self.register_buffer("inverse", torch.argsort(self.orders, dim=-1), persistent=False)
        self.norm = RMSNorm(d_model)
        self.scans = nn.ModuleList(
            Mamba2Mixer(d_model, d_state=d_state, expand=1, headdim=min(headdim, d_model), chunk_len=grid * grid)
            for _ in orders
        )

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens (B, g*g, d) in row-major order -> same shape."""
        h = self.norm(tokens)
        out = torch.zeros_like(tokens)
        for order, inverse, scan in zip(self.orders, self.inverse, self.scans):
            y, _ = scan(h[:, order])
            out = out + y[:, inverse]
        return tokens + out


class Connector(nn.Module):
    """`mlp`: two-layer MLP. `vss_mlp`: 2D selective scan, then the MLP. `vss_l2`: 2D selective scan,
    then two linear layers."""

    def __init__(self, config: MambaVLAConfig):
        super().__init__()
        d = config.d_model
        self.vss = None
        if config.connector != "mlp":
            self.vss = SelectiveScan2D(d, config.vision_grid, config.scan, d_state=min(16, config.d_state),
                                       headdim=config.headdim)
        if config.connector == "vss_l2":
            self.proj = nn.Sequential(nn.Linear(d, d), nn.Linear(d, d))
        else:
            self.proj = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))

    def forward(self, tokens: Tensor) -> Tensor:
        if self.vss is not None:
            tokens = self.vss(tokens)
        return self.proj(tokens)
