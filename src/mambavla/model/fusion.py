"""Fusion stacks over `[instruction | observations ... | actions]` with one interface:

    hidden, new_state = fusion(x, state=None, cond=None, mask=None, cond_start=0)

`state` is what the stack needs to continue the sequence: per-layer `Mamba2State` (constant size)
for Mamba blocks, per-layer KV caches (growing with the sequence) for transformer blocks, the
side-by-side baseline. `cond` (B, d) is the flow-matching time embedding, applied by FiLM to the tokens
from `cond_start` on (the action tokens: all of them when they are scanned from a cached state), or, as
`modulations(cond)` returns it, every layer's FiLM (scale, shift) already projected;
`mask` (B, L) marks padding to ignore (left-padded prompts).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mambavla.model.config import MambaVLAConfig
from mambavla.model.mamba2 import Mamba2Mixer, Mamba2State, RMSNorm


class FiLM(nn.Module):
    """adaLN-style modulation of a normalised input by the flow time; zero-init so it starts as identity."""

    def __init__(self, d: int):
        super().__init__()
        self.proj = nn.Linear(d, 2 * d)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def modulation(self, cond: Tensor) -> tuple[Tensor, Tensor]:
        """cond (B, d) -> (scale, shift), each (B, 1, d)."""
        scale, shift = self.proj(cond)[:, None].chunk(2, dim=-1)
        return scale, shift

    def forward(self, h: Tensor, cond: Tensor | tuple[Tensor, Tensor] | None, start: int = 0) -> Tensor:
        """cond: the condition (B, d), or its `modulation` computed beforehand."""
        if cond is None:
            return h
        scale, shift = cond if isinstance(cond, tuple) else self.modulation(cond)
        if start == 0:
            return h * (1 + scale) + shift
        return torch.cat([h[:, :start], h[:, start:] * (1 + scale) + shift], dim=1)


class MambaBlock(nn.Module):
    def __init__(self, config: MambaVLAConfig):
        super().__init__()
        self.norm = RMSNorm(config.d_model)
        self.film = FiLM(config.d_model)
        self.mixer = Mamba2Mixer(config.d_model, config.d_state, config.d_conv, config.expand, config.headdim,
                                 config.ngroups, config.chunk_len)

    def forward(self, x: Tensor, state: Mamba2State | None, cond: Tensor | None, mask: Tensor | None,
                cond_start: int = 0, frames: tuple[int, int] | None = None) -> tuple[Tensor, Mamba2State]:
        y, state = self.mixer(self.film(self.norm(x), cond, cond_start), state, mask, frames=frames)
        return x + y, state


class FusionStack(nn.Module):
    """Blocks applied in order, each continuing from its own entry of `state`."""

    def __init__(self, blocks):
        super().__init__()
        self.layers = nn.ModuleList(blocks)

    def modulations(self, cond: Tensor) -> list[tuple[Tensor, Tensor]]:
        """cond (B, d) -> every layer's FiLM (scale, shift), each (B, 1, d): what `forward` takes as `cond`."""
        return [layer.film.modulation(cond) for layer in self.layers]

    def forward(self, x: Tensor, state: list | None = None, cond: Tensor | list | None = None,
                mask: Tensor | None = None, cond_start: int = 0,
                frames: tuple[int, int] | None = None) -> tuple[Tensor, list]:
        """`cond`: (B, d), or `modulations(cond)`. `frames=(start, n)` (Mamba blocks only): the returned state is,
        per layer, the state after every block of n tokens following `start`, with a frame axis after the batch
        axis."""
        state = [None] * len(self.layers) if state is None else state
        conds = cond if isinstance(cond, list) else [cond] * len(self.layers)  # a list: each layer's modulation
        new_state = []
        for layer, s, c in zip(self.layers, state, conds):
            if frames is None:
                x, s = layer(x, s, c, mask, cond_start)
            elif isinstance(layer, MambaBlock):
                x, s = layer(x, s, c, mask, cond_start, frames=frames)
            else:
                raise ValueError("states after every frame (stream-mode training) need the mamba fusion; "
                                 "train the transformer fusion in window mode")
            new_state.append(s)
        return x, new_state


class KVCache(NamedTuple):
    """Preallocated keys/values of one layer; the first `length` positions are the cached context.

    Buffers grow by doubling, so a streaming step copies nothing but its own tokens. Continuing a
    cache writes past `length` into shared buffers: it never changes the cached context, but two
    continuations of one cache that are both kept overwrite each other (a caller keeps one)."""

    k: Tensor  # (B, heads, capacity, head_dim), rotary already applied
    v: Tensor  # (B, heads, capacity, head_dim)
    valid: Tensor  # (B, capacity) bool: False for padding
    length: int


class StaticKVCache(NamedTuple):
    """A KV cache of fixed capacity whose length is a device tensor, so that a step's shapes and its
    host-side code never change: a CUDA graph can capture the Transformer's step as it does the Mamba
    step. Each step attends over the whole capacity (masked), so its cost is set by the capacity, not by
    the history. Writing past the capacity is out of bounds: the caller bounds the history (PolicyRuntime
    checks it on the host before every step). Same sharing rule as `KVCache`."""

    k: Tensor  # (B, heads, capacity, head_dim)
    v: Tensor
    valid: Tensor  # (B, capacity) bool
    length: Tensor  # (1,) int64: positions in use

    @classmethod
    def empty_like(cls, cache: KVCache, capacity: int) -> StaticKVCache:
        b, h, _, hd = cache.k.shape
        return cls(cache.k.new_zeros(b, h, capacity, hd), cache.v.new_zeros(b, h, capacity, hd),
                   torch.zeros(b, capacity, dtype=torch.bool, device=cache.k.device),
                   torch.zeros(1, dtype=torch.long, device=cache.k.device))

    def load(self, cache: KVCache) -> None:
        """Copy a dynamic cache's context into these buffers (eager, e.g. on a new instruction)."""
        n = cache.length
        if n > self.k.shape[2]:
            raise ValueError(f"KV cache: {n} positions do not fit the static capacity {self.k.shape[2]}")
        self.k[:, :, :n].copy_(cache.k[:, :, :n])
        self.v[:, :, :n].copy_(cache.v[:, :, :n])
        self.valid.zero_()
        self.valid[:, :n].copy_(cache.valid[:, :n])
        self.length.fill_(n)


def _rotary(x: Tensor, positions: Tensor) -> Tensor:
    """Rotary position embedding; x (B, heads, L, hd), positions (L,)."""
    hd = x.shape[-1]
    freqs = 1.0 / (10000 ** (torch.arange(0, hd, 2, device=x.device, dtype=torch.float32) / hd))
    angles = positions.float()[:, None] * freqs  # (L, hd/2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


class TransformerBlock(nn.Module):
    def __init__(self, config: MambaVLAConfig, mlp_hidden: int):
        super().__init__()
        d = config.d_model
        self.heads = config.n_heads_attn
        self.norm1, self.norm2 = RMSNorm(d), RMSNorm(d)
        self.film = FiLM(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)
        self.mlp = nn.Sequential(nn.Linear(d, mlp_hidden, bias=False), nn.GELU(), nn.Linear(mlp_hidden, d, bias=False))

    def forward(self, x: Tensor, cache: KVCache | StaticKVCache | None, cond: Tensor | None, mask: Tensor | None,
                cond_start: int = 0) -> tuple[Tensor, KVCache | StaticKVCache]:
        batch, length, d = x.shape
        qkv = self.qkv(self.film(self.norm1(x), cond, cond_start))
        q, k, v = qkv.view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        step_valid = torch.ones(batch, length, dtype=torch.bool, device=x.device) if mask is None else mask.bool()
        if isinstance(cache, StaticKVCache):  # positions from the device-side length: no host value in the step
            if torch.is_grad_enabled():
                raise ValueError("StaticKVCache is for inference (torch.no_grad)")
            positions = cache.length + torch.arange(length, device=x.device)
            q, k = _rotary(q, positions), _rotary(k, positions)
            cache.k.index_copy_(2, positions, k)
            cache.v.index_copy_(2, positions, v)
            cache.valid.index_copy_(1, positions, step_valid)
            out = self._attend(x, q, cache.k, cache.v, cache.valid, positions)
            return out, cache._replace(length=cache.length + length)
        past = 0 if cache is None else cache.length
        total = past + length
        positions = torch.arange(past, total, device=x.device)
        q, k = _rotary(q, positions), _rotary(k, positions)
        if torch.is_grad_enabled():  # training: new tensors (writing into the buffers would change ones autograd saved)
            if cache is not None:
                k = torch.cat([cache.k[:, :, :past], k], dim=2)
                v = torch.cat([cache.v[:, :, :past], v], dim=2)
                step_valid = torch.cat([cache.valid[:, :past], step_valid], dim=1)
            cache = KVCache(k, v, step_valid, past)
            keys, values, valid = k, v, step_valid
        else:
            cache = self._reserve(cache, batch, total, k)
            cache.k[:, :, past:total] = k
            cache.v[:, :, past:total] = v
            cache.valid[:, past:total] = step_valid
            keys, values, valid = cache.k[:, :, :total], cache.v[:, :, :total], cache.valid[:, :total]
        return self._attend(x, q, keys, values, valid, positions), cache._replace(length=total)

    def _attend(self, x: Tensor, q: Tensor, keys: Tensor, values: Tensor, valid: Tensor, positions: Tensor) -> Tensor:
        """Attention of the new tokens (absolute `positions`) over the cached keys, then the MLP."""
        batch, length, d = x.shape
        # query i sees valid keys up to its own position, and always itself (no empty rows)
        key_pos = torch.arange(keys.shape[2], device=x.device)
        causal = key_pos[None, :] <= positions[:, None]  # (L, S)
        allowed = (causal[None] & valid[:, None, :]) | (key_pos[None, None, :] == positions[None, :, None])
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed[:, None])  # (B, heads, L, hd)
        x = x + self.out(y.transpose(1, 2).reshape(batch, length, d))
        return x + self.mlp(self.norm2(x))

    @staticmethod
    def _reserve(cache: KVCache | None, batch: int, total: int, like: Tensor) -> KVCache:
        """A cache with room for `total` positions: the given one, or a doubled copy of it."""
        if cache is not None and cache.k.shape[2] >= total:
            return cache
        capacity = max(256, 2 * total)
        shape = (batch, like.shape[1], capacity, like.shape[3])
        grown = KVCache(like.new_zeros(shape), like.new_zeros(shape),
                        torch.zeros(batch, capacity, dtype=torch.bool, device=like.device),
                        0 if cache is None else cache.length)
        if cache is not None:
            n = cache.length
            grown.k[:, :, :n], grown.v[:, :, :n] = cache.k[:, :, :n], cache.v[:, :, :n]
            grown.valid[:, :n] = cache.valid[:, :n]
        return grown


def matched_mlp_hidden(config: MambaVLAConfig) -> int:
    """MLP width that gives a transformer block the parameter count of a Mamba block."""
    d = config.d_model
    mamba = sum(p.numel() for p in MambaBlock(config).parameters())
    rest = d + d + 2 * d * d + 2 * d + 4 * d * d  # two norms, FiLM, qkv + out
    return max(8, round((mamba - rest) / (2 * d) / 8) * 8)


def build_fusion(config: MambaVLAConfig) -> FusionStack:
    """Mamba-2 blocks (state: per-layer Mamba2State) or, for comparison, transformer blocks with the
    same parameter count (state: per-layer KVCache)."""
    if config.fusion == "mamba":
        return FusionStack(MambaBlock(config) for _ in range(config.n_layers))
    hidden = matched_mlp_hidden(config)
    return FusionStack(TransformerBlock(config, hidden) for _ in range(config.n_layers))
