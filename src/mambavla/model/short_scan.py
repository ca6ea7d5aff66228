"""One Triton kernel for a short SSD scan from a given state: what every captured policy step runs.

A step scans a handful of tokens per layer from the cached state: a frame's tokens in the context scan, the
action tokens in every flow step, a camera's grid in the connector. mamba-ssm's `mamba_chunk_scan_combined`
serves any length in five kernels (chunk cumsum, chunk state, state passing, C·Bᵀ, chunk scan); at these
lengths their launches, not their work, set the cost. Here a scan of at most `MAX_TOKENS` tokens (one SSD
chunk) is one program per (sequence, head) that does all of it in registers:

    y_t = C_t · (e^{a_1+…+a_t} h_0) + Σ_{s≤t} (C_t · B_s) e^{a_{s+1}+…+a_t} dt_s x_s + D x_t,   a_s = dt_s A
    h_L = e^{a_1+…+a_L} h_0 + Σ_s e^{a_{s+1}+…+a_L} dt_s x_s B_sᵀ

with the precision mamba-ssm's kernels use: fp32 decays, sums and state; the matmul inputs in the
activations' dtype (C·Bᵀ weighted, then cast to it, times x; C times the state cast to it).
`ssd_scan_reference` (mamba2.py) is the definition both are tested against. Inference only (no backward).
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

_HAS_TRITON = importlib.util.find_spec("triton") is not None  # without it: mamba2.py's other paths
MAX_TOKENS = 64  # one program holds the (T, T) decay matrix and (T, P), (T, N), (P, N) tiles
_KERNEL = None


def _kernel():
    global _KERNEL
    if _KERNEL is not None:
        return _KERNEL
    import triton
    import triton.language as tl

    @triton.jit
    def short_scan_kernel(xbc_ptr, dt_ptr, bias_ptr, alog_ptr, d_ptr, h0_ptr, y_ptr, h1_ptr, length, heads,
                          heads_per_group, b_offset, c_offset,
                          sxb, sxl, sxc, sdb, sdl, sdh, shb, shh, shp, shn, syb, syl, syc, sob, soh, sop, son,
                          BLOCK_T: tl.constexpr, P: tl.constexpr, N: tl.constexpr, PRECISION: tl.constexpr):
        pid = tl.program_id(0)
        b, h = pid // heads, pid % heads
        g = h // heads_per_group
        t = tl.arange(0, BLOCK_T)
        p = tl.arange(0, P)
        n = tl.arange(0, N)
        valid = t < length
        raw = (tl.load(dt_ptr + b * sdb + t * sdl + h * sdh, mask=valid, other=0.0).to(tl.float32)
               + tl.load(bias_ptr + h).to(tl.float32))
        dt = tl.where(valid, tl.where(raw > 20.0, raw, tl.log(1.0 + tl.exp(raw))), 0.0)  # softplus, as F.softplus
        a = dt * -tl.exp(tl.load(alog_ptr + h).to(tl.float32))
        cum = tl.cumsum(a, axis=0)  # a_1 + ... + a_t (padding adds 0)
        total = tl.sum(a, axis=0)
        rows = xbc_ptr + b * sxb + t[:, None] * sxl
        x = tl.load(rows + (h * P + p[None, :]) * sxc, mask=valid[:, None], other=0.0)  # (T, P)
        bm = tl.load(rows + (b_offset + g * N + n[None, :]) * sxc, mask=valid[:, None], other=0.0)  # (T, N)
        cm = tl.load(rows + (c_offset + g * N + n[None, :]) * sxc, mask=valid[:, None], other=0.0)
        h0 = tl.load(h0_ptr + b * shb + h * shh + p[:, None] * shp + n[None, :] * shn)  # (P, N) fp32

        causal = t[:, None] >= t[None, :]
        decay = tl.exp(tl.where(causal, cum[:, None] - cum[None, :], float("-inf")))  # (T, T), 0 above the diagonal
        weights = tl.dot(cm, tl.trans(bm), input_precision=PRECISION) * decay * dt[None, :]
        y = tl.dot(weights.to(x.dtype), x, input_precision=PRECISION)  # (T, P) fp32
        y += tl.dot(cm, tl.trans(h0.to(cm.dtype)), input_precision=PRECISION) * tl.exp(cum)[:, None]
        y += x.to(tl.float32) * tl.load(d_ptr + h).to(tl.float32)
        tl.store(y_ptr + b * syb + t[:, None] * syl + (h * P + p[None, :]) * syc, y.to(y_ptr.dtype.element_ty),
                 mask=valid[:, None])

        to_end = tl.exp(total - cum) * dt  # (T,) decay from after token s to the end, times dt_s
        # (P, N)
        added = tl.dot(tl.trans(x), (bm.to(tl.float32) * to_end[:, None]).to(x.dtype), input_precision=PRECISION)
        h1 = h0 * tl.exp(total) + added
        tl.store(h1_ptr + b * sob + h * soh + p[:, None] * sop + n[None, :] * son, h1)

    _KERNEL = short_scan_kernel
    return _KERNEL


def fits(xBC: Tensor, headdim: int, d_state: int) -> bool:
    """Whether `short_scan` takes the scan of xBC (B, L, channels): CUDA, no autograd, at most MAX_TOKENS
    tokens, and head and state sizes its matmuls take (powers of two, at least 16)."""
    return (xBC.is_cuda and not torch.is_grad_enabled() and 1 <= xBC.shape[1] <= MAX_TOKENS
            and all(v >= 16 and v & (v - 1) == 0 for v in (headdim, d_state)) and _HAS_TRITON)


@torch.library.custom_op("mambavla::short_scan", mutates_args=())
def short_scan(xBC: Tensor, dt: Tensor, dt_bias: Tensor, A_log: Tensor, D: Tensor, state: Tensor,
               heads: int, groups: int) -> tuple[Tensor, Tensor]:
    """The mixer's scan from its conv output and raw dt: xBC (b, l, h*p + 2*g*n) as [x | B | C], dt (b, l, h)
    before dt_bias and softplus, dt_bias, A_log, D (h,), state (b, h, p, n) -> y (b, l, h*p) in xBC's dtype and
    the final state (b, h, p, n) fp32, as `ssd_scan_reference` with dt = softplus(dt + dt_bias) and
    A = -exp(A_log). It reads x, B and C where the conv wrote them and computes dt and A itself: a custom op's
    inputs are buffers Inductor must materialise, so each one computed outside would cost a kernel. `fits` first.
    A custom op, so torch.compile keeps it as the one kernel it is and a CUDA graph captures it."""
    batch, length, channels = xBC.shape
    n = state.shape[-1]
    p = state.shape[2]
    state = state.float()
    y = xBC.new_empty(batch, length, heads * p)
    final = torch.empty_like(state)
    block = max(16, 1 << (length - 1).bit_length())
    _kernel()[(batch * heads,)](
        xBC, dt, dt_bias, A_log, D, state, y, final, length, heads, heads // groups, heads * p, heads * p + groups * n,
        *xBC.stride(), *dt.stride(), *state.stride(), *y.stride(), *final.stride(),
        BLOCK_T=block, P=p, N=n, PRECISION="ieee" if xBC.dtype == torch.float32 else "tf32", num_warps=4)
    return y, final


@short_scan.register_fake
def _(xBC, dt, dt_bias, A_log, D, state, heads, groups):
    y = xBC.new_empty(xBC.shape[0], xBC.shape[1], heads * state.shape[2])
    return y, torch.empty_like(state, dtype=torch.float32)
