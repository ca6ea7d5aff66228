"""Mamba-2 (SSD) mixer with explicit recurrent state in and out.

`Mamba2Mixer.forward(u, state) -> (y, new_state)` continues a scan from any `(conv, ssm)` state over
any number of tokens; that is what lets the policy cache the instruction prefix, stream observations
and re-scan only the action tokens per flow step. Library modules cannot do this (mamba-ssm's
`Mamba2.forward` never passes `initial_states`; transformers' decode path takes one token).

Three scan paths, one module: the chunked SSD reference in plain PyTorch (CPU, and anywhere the
kernels are missing), mamba-ssm's Triton kernels on CUDA (`mamba_chunk_scan_combined` with
`initial_states`, `selective_state_update` for one token), and, for inference scans of at most 64 tokens
on CUDA (a policy step's), one Triton kernel of our own (`short_scan.py`). `test_model_mamba2.py` checks
they agree.
The causal depthwise conv carries its last `d_conv - 1` inputs as state (no causal-conv1d needed).
"""

from __future__ import annotations

import importlib.util
import math
import sys
import types
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mambavla.model import short_scan


class Mamba2State(NamedTuple):
    conv: Tensor  # (B, conv_dim, d_conv - 1): the last pre-conv inputs
    ssm: Tensor  # (B, nheads, headdim, d_state), fp32


_KERNELS: tuple | None = None


def _import_ssd_ops():
    try:
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except ImportError:
        # mamba_ssm/__init__ imports Mamba-1's compiled CUDA scan (and Mamba-3), which the SSD Triton
        # kernels never use; without that build, load the kernels with the package's __init__ skipped.
        spec = importlib.util.find_spec("mamba_ssm")
        for name in [n for n in sys.modules if n == "mamba_ssm" or n.startswith("mamba_ssm.")]:
            del sys.modules[name]
        package = types.ModuleType("mamba_ssm")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["mamba_ssm"] = package
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    return mamba_chunk_scan_combined, selective_state_update


def ssd_kernels() -> tuple | None:
    """(mamba_chunk_scan_combined, selective_state_update) from mamba-ssm, or None without CUDA or mamba-ssm."""
    global _KERNELS
    if _KERNELS is None:
        _KERNELS = ()
        if torch.cuda.is_available() and importlib.util.find_spec("mamba_ssm") is not None:
            _KERNELS = _import_ssd_ops()
    return _KERNELS or None


def _segsum_exp(a_cum: Tensor) -> Tensor:
    """a_cum (..., T), the running sum of a -> (..., T, T) with out[i, j] = exp(a[j+1] + ... + a[i]) =
    exp(a_cum[i] - a_cum[j]) for i >= j, else 0, as mamba-ssm's chunk kernels compute it (a chunk holds at most
    `chunk_len` tokens, so the running sums stay short)."""
    T = a_cum.size(-1)
    lower = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a_cum.device))
    return torch.exp((a_cum[..., :, None] - a_cum[..., None, :]).masked_fill(~lower, -math.inf))


def _pad_time(t: Tensor, pad: int) -> Tensor:
    """t (b, l, ...) with `pad` zeros appended along l; t itself when there are none (no copy, no ONNX Pad)."""
    return F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) if pad else t


def _heads_first(t: Tensor, c: int, chunk_len: int) -> Tensor:
    """t (b, c * chunk_len, heads, k) -> (b, heads, c, chunk_len, k). One head (one group's B or C) is a view:
    no transpose, and the matmuls that read it take it as it is (ONNX Runtime then fuses their transposes)."""
    b, _, heads, k = t.shape
    if heads == 1:
        return t.reshape(b, 1, c, chunk_len, k)
    return t.reshape(b, c, chunk_len, heads, k).permute(0, 3, 1, 2, 4)


def ssd_scan_reference(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, state: Tensor,
                       chunk_len: int) -> tuple[Tensor, Tensor]:
    """Chunked SSD in PyTorch, continuing from `state`.

    x (b, l, h, p), dt (b, l, h) after softplus, A (h,) negative, B and C (b, l, g, n), D (h,),
    state (b, h, p, n). Returns y (b, l, h, p) and the final state (b, h, p, n). Computed in fp32.
    """
    b, l, h, p = x.shape  # noqa: E741 (l: sequence length, as in the shape comments)
    dtype = x.dtype
    x, dt, B, C, state = x.float(), dt.float(), B.float(), C.float(), state.float()
    if l == 1 or B.shape[2] > 1:  # several groups: each head reads its group's B and C
        B = B.repeat_interleave(h // B.shape[2], dim=2)  # (b, l, h, n)
        C = C.repeat_interleave(h // C.shape[2], dim=2)
    # (with one group, B and C keep a head axis of 1 and every matmul below broadcasts it: no copy per head,
    # and one C B^T for all heads)
    if l == 1:  # one token: the recurrence itself
        decay = torch.exp(dt[:, 0] * A)  # (b, h)
        state = state * decay[..., None, None] + (dt[:, 0, :, None] * x[:, 0])[..., None] * B[:, 0, :, None, :]
        y = torch.einsum("bhpn,bhn->bhp", state, C[:, 0]) + D[:, None] * x[:, 0]
        return y[:, None].to(dtype), state

    chunk_len = min(chunk_len, l)  # a short scan (a frame, the action tokens) is one chunk of its own length
    pad = (-l) % chunk_len  # zero padding at the end: no input and no decay, so the state is unchanged
    c = (l + pad) // chunk_len
    # head-major chunks, so that every contraction below is one batched matmul (fast in torch and ONNX Runtime)
    xdt = _heads_first(_pad_time(x * dt[..., None], pad), c, chunk_len)  # (b, h, c, T, p)
    Bp = _heads_first(_pad_time(B, pad), c, chunk_len)  # (b, h or 1, c, T, n)
    Cp = _heads_first(_pad_time(C, pad), c, chunk_len)
    Adt = _pad_time(dt * A, pad).view(b, c, chunk_len, h).permute(0, 3, 1, 2)  # (b, h, c, T)
    A_cum = torch.cumsum(Adt, dim=-1)  # (b, h, c, T)

    # within each chunk: quadratic (attention-like) form
    scores = (Cp @ Bp.transpose(-1, -2)) * _segsum_exp(A_cum)  # (b, h, c, T, T)
    y = scores @ xdt  # (b, h, c, T, p)

    # what each chunk adds to the state at its end, then the recurrence across chunks
    decay_to_end = torch.exp(A_cum[..., -1:] - A_cum)  # (b, h, c, T)
    chunk_states = (xdt * decay_to_end[..., None]).transpose(-1, -2) @ Bp  # (b, h, c, p, n)
    chunk_decay = torch.exp(A_cum[..., -1])  # (b, h, c)
    entering = []
    for i in range(c):
        entering.append(state)
        state = state * chunk_decay[:, :, i, None, None] + chunk_states[:, :, i]
    entering = torch.stack(entering, dim=2) if c > 1 else entering[0][:, :, None]  # (b, h, c, p, n)

    # the state entering each chunk, read out through C with the decay so far
    y = y + (Cp @ entering.transpose(-1, -2)) * torch.exp(A_cum)[..., None]  # (b, h, c, T, p)
    y = y.permute(0, 2, 3, 1, 4).reshape(b, c * chunk_len, h, p)[:, :l] + D[:, None] * x
    return y.to(dtype), state


def frame_states(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, state: Tensor, start: int, n: int) -> Tensor:
    """SSM state after `start` tokens plus each whole block of n tokens after them, continuing from `state`.

    x (b, l, h, p), dt (b, l, h) after softplus, A (h,), B (b, l, g, n_state), state (b, h, p, n_state)
    -> (b, T, h, p, n_state) in fp32, T = (l - start) // n. The recurrence h' = exp(dt A) h + dt x B^T,
    summed in closed form inside each block and carried across blocks (T small steps)."""
    b, l, h, p = x.shape  # noqa: E741 (l: sequence length, as in the shape comments)
    T = (l - start) // n
    x, dt, state = x.float(), dt.float(), state.float()
    B = B.float().repeat_interleave(h // B.shape[2], dim=2)  # (b, l, h, N)
    xdt = x * dt[..., None]  # (b, l, h, p)
    Adt = dt * A  # (b, l, h)

    def block_sum(Adt_blk: Tensor, xdt_blk: Tensor, B_blk: Tensor) -> tuple[Tensor, Tensor]:
        """(..., s, h) blocks -> what each block adds to the state (..., h, p, N) and its total decay (..., h)."""
        cum = torch.cumsum(Adt_blk, dim=-2)
        total = cum[..., -1, :]
        to_end = torch.exp(total[..., None, :] - cum)  # decay from after token s to the block's end
        added = torch.einsum("...sh,...shp,...shn->...hpn", to_end, xdt_blk, B_blk)
        return added, total

    if start > 0:
        added, total = block_sum(Adt[:, :start], xdt[:, :start], B[:, :start])
        state = state * torch.exp(total)[..., None, None] + added
    span = slice(start, start + T * n)
    added, total = block_sum(Adt[:, span].reshape(b, T, n, h), xdt[:, span].reshape(b, T, n, h, p),
                             B[:, span].reshape(b, T, n, h, -1))  # (b, T, h, p, N), (b, T, h)
    states = []
    for t in range(T):
        state = state * torch.exp(total[:, t])[..., None, None] + added[:, t]
        states.append(state)
    return torch.stack(states, dim=1)


def causal_depthwise_conv(window: Tensor, weight: Tensor, bias: Tensor, taps: bool = False) -> Tensor:
    """Depthwise conv over `window` (B, C, K - 1 + L), weight (C, 1, K), bias (C,) -> (B, C, L), no padding.

    `taps`: as K shifted multiply-adds instead of `F.conv1d`. The same sum; under torch.compile Inductor fuses
    it with the window's concatenation and the SiLU after it into one kernel, where it keeps a convolution as
    an aten call with kernels of its own around it (docs/runtime.md, compiled step). Eager, one conv1d kernel
    is the cheaper."""
    if not taps:
        return F.conv1d(window, weight, bias, groups=weight.shape[0])
    k, length = weight.shape[-1], window.shape[-1] - weight.shape[-1] + 1
    out = bias[:, None] + weight[:, 0, 0, None] * window[..., :length]
    for i in range(1, k):
        out = out + weight[:, 0, i, None] * window[..., i:i + length]
    return out


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: Tensor, gate: Tensor | None = None) -> Tensor:
        if gate is not None:  # Mamba-2's gated norm: norm(x * silu(z))
            x = x * F.silu(gate)
        return F.rms_norm(x, self.weight.shape, self.weight.to(x.dtype), self.eps)  # one fused kernel on CUDA


class Mamba2Mixer(nn.Module):
    def __init__(self, d_model: int, d_state: int = 64, d_conv: int = 4, expand: int = 2, headdim: int = 64,
                 ngroups: int = 1, chunk_len: int = 64, dt_range: tuple[float, float] = (1e-3, 1e-1)):
        super().__init__()
        self.d_model, self.d_state, self.d_conv, self.headdim, self.ngroups = d_model, d_state, d_conv, headdim, ngroups
        self.d_inner = expand * d_model
        self.nheads = self.d_inner // headdim
        self.conv_dim = self.d_inner + 2 * ngroups * d_state
        self.chunk_len = chunk_len
        self.use_kernels = True  # take the Triton path on CUDA when mamba-ssm is importable

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner + 2 * ngroups * d_state + self.nheads, bias=False)
        self.conv_weight = nn.Parameter(torch.empty(self.conv_dim, 1, d_conv))
        self.conv_bias = nn.Parameter(torch.zeros(self.conv_dim))
        nn.init.kaiming_uniform_(self.conv_weight, a=math.sqrt(5))
        log_lo, log_hi = math.log(dt_range[0]), math.log(dt_range[1])
        dt = torch.exp(torch.rand(self.nheads) * (log_hi - log_lo) + log_lo)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.A_log = nn.Parameter(torch.log(torch.empty(self.nheads).uniform_(1.0, 16.0)))
        self.D = nn.Parameter(torch.ones(self.nheads))
        self.norm = RMSNorm(self.d_inner)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def empty_state(self, batch: int, device: torch.device | None = None,
                    dtype: torch.dtype | None = None) -> Mamba2State:
        device = device or self.in_proj.weight.device
        dtype = dtype or self.in_proj.weight.dtype
        return Mamba2State(
            torch.zeros(batch, self.conv_dim, self.d_conv - 1, device=device, dtype=dtype),
            torch.zeros(batch, self.nheads, self.headdim, self.d_state, device=device, dtype=torch.float32),
        )

    def forward(self, u: Tensor, state: Mamba2State | None = None, mask: Tensor | None = None,
                frames: tuple[int, int] | None = None) -> tuple[Tensor, Mamba2State]:
        """u (B, L, d_model); mask (B, L) bool, False marks padding that must leave the state untouched.

        `frames=(start, n)`: also return the state after each of the T = (L - start) // n blocks of n
        tokens that follow `start` (the state the streaming runtime holds after each frame), as a
        `Mamba2State` with a frame axis: conv (B, T, conv_dim, d_conv - 1), ssm (B, T, H, P, N).
        Used by stream-mode training to score every frame's action chunk from one parallel scan."""
        batch, length, _ = u.shape
        if state is None:
            state = self.empty_state(batch, u.device, u.dtype)
        zxbcdt = self.in_proj(u)  # (B, L, d_in_proj)
        z, xBC, dt = torch.split(zxbcdt, [self.d_inner, self.conv_dim, self.nheads], dim=-1)
        if mask is not None:
            xBC = xBC * mask[..., None].to(xBC.dtype)

        # causal depthwise conv continuing from the carried inputs
        window = torch.cat([state.conv.to(xBC.dtype), xBC.transpose(1, 2)], dim=-1)  # (B, conv_dim, d_conv - 1 + L)
        conv_state = window[..., -(self.d_conv - 1):]
        xBC = F.silu(causal_depthwise_conv(window, self.conv_weight.to(xBC.dtype), self.conv_bias.to(xBC.dtype),
                                           taps=torch.compiler.is_compiling()))
        xBC = xBC.transpose(1, 2)  # (B, L, conv_dim)
        if mask is None and frames is None and self.use_kernels and short_scan.fits(xBC, self.headdim, self.d_state):
            # a step's few tokens: one kernel (x, B, C read from the conv's output; softplus(dt) and A inside)
            # instead of mamba-ssm's five and the ones that prepare their inputs
            y, ssm_state = short_scan.short_scan(xBC, dt, self.dt_bias, self.A_log, self.D, state.ssm, self.nheads,
                                                 self.ngroups)
            return self.out_proj(self.norm(y, gate=z)), Mamba2State(conv_state, ssm_state)

        x, B, C = torch.split(xBC, [self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        x = x.reshape(batch, length, self.nheads, self.headdim)  # (B, L, H, P)
        B = B.reshape(batch, length, self.ngroups, self.d_state)  # (B, L, G, N)
        C = C.reshape(batch, length, self.ngroups, self.d_state)
        dt = F.softplus(dt.float() + self.dt_bias.float())  # (B, L, H)
        if mask is not None:
            dt = dt * mask[..., None]
        A = -torch.exp(self.A_log.float())  # (H,)

        y, ssm_state = self._scan(x, dt, A, B, C, state.ssm)
        y = self.norm(y.reshape(batch, length, self.d_inner), gate=z)
        if frames is not None:
            start, n = frames
            ends = start + n * torch.arange(1, (length - start) // n + 1, device=u.device)  # (T,) tokens seen
            conv_at = window.unfold(-1, self.d_conv - 1, 1)[:, :, ends]  # (B, conv_dim, T, d_conv - 1)
            ssm_at = frame_states(x, dt, A, B, state.ssm, start, n)
            return self.out_proj(y), Mamba2State(conv_at.transpose(1, 2), ssm_at)
        return self.out_proj(y), Mamba2State(conv_state, ssm_state)

    def _scan(self, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, ssm_state: Tensor) -> tuple[Tensor, Tensor]:
        kernels = ssd_kernels() if (self.use_kernels and x.is_cuda) else None
        if kernels is None:
            return ssd_scan_reference(x, dt, A, B, C, self.D.float(), ssm_state, self.chunk_len)
        chunk_scan, state_update = kernels
        if x.shape[1] == 1:  # decode: the kernel updates the state in place, so hand it a copy
            state = ssm_state.clone()
            h, p, n = self.nheads, self.headdim, self.d_state
            # dt is already softplus'd (and masked); a zero bias with stride-0 head dims takes the
            # kernel's tied-head fast path (mamba-ssm 2.3.2 also needs a non-None dt_bias there)
            y = state_update(
                state, x[:, 0], dt[:, 0, :, None].expand(-1, h, p), A[:, None, None].expand(h, p, n), B[:, 0], C[:, 0],
                D=self.D[:, None].expand(h, p), dt_bias=dt.new_zeros(h)[:, None].expand(h, p),
            )
            return y[:, None], state
        y, state = chunk_scan(
            x, dt.to(x.dtype), A, B, C, chunk_size=self.chunk_len, D=self.D.to(x.dtype),
            initial_states=ssm_state, return_final_states=True,
        )
        return y, state.float()
