import pytest
import torch

from mambavla.model import mamba2
from mambavla.model.mamba2 import Mamba2Mixer, causal_depthwise_conv, ssd_kernels


def _mixer(**kw) -> Mamba2Mixer:
    torch.manual_seed(0)
    return Mamba2Mixer(64, d_state=16, headdim=32, chunk_len=16, **kw)


def test_chunked_scan_from_state_matches_full_scan():
    mixer = _mixer()
    u = torch.randn(2, 75, 64)
    with torch.no_grad():
        full, full_state = mixer(u)
        pieces, state = [], None
        for lo, hi in ((0, 17), (17, 50), (50, 51), (51, 75)):  # chunk boundaries and a single token
            y, state = mixer(u[:, lo:hi], state)
            pieces.append(y)
    assert (torch.cat(pieces, 1) - full).abs().max().item() <= 1e-4
    assert (state.ssm - full_state.ssm).abs().max().item() <= 1e-4
    assert torch.equal(state.conv, full_state.conv)


def test_the_conv_as_taps_is_the_conv(monkeypatch):
    # the form torch.compile gets (shifted multiply-adds, fused by Inductor) computes the eager conv1d
    torch.manual_seed(0)
    window, weight, bias = torch.randn(2, 12, 3 + 9), torch.randn(12, 1, 4), torch.randn(12)
    conv = causal_depthwise_conv(window, weight, bias)
    assert conv.shape == (2, 12, 9)
    assert (causal_depthwise_conv(window, weight, bias, taps=True) - conv).abs().max().item() <= 1e-6
    mixer, u = _mixer(), torch.randn(2, 20, 64)
    used = []
    monkeypatch.setattr(
        mamba2, "causal_depthwise_conv", lambda *a, taps: used.append(taps) or causal_depthwise_conv(*a, taps=taps)
    )
    with torch.no_grad():
        eager, _ = mixer(u)
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
        compiling, _ = mixer(u)
    assert used == [False, True]
    assert (compiling - eager).abs().max().item() <= 1e-5


@pytest.mark.parametrize("groups", [1, 2])  # one group: B and C broadcast over the heads; two: repeated per head
def test_token_by_token_recurrence_matches_chunked_scan(groups):
    mixer = _mixer(ngroups=groups)
    u = torch.randn(2, 40, 64)  # 40 tokens: two chunks of 16 and one padded
    with torch.no_grad():
        full, _ = mixer(u)
        state, ys = None, []
        for i in range(u.shape[1]):
            y, state = mixer(u[:, i : i + 1], state)
            ys.append(y)
    assert (torch.cat(ys, 1) - full).abs().max().item() <= 1e-4


def test_masked_left_padding_leaves_state_as_if_absent():
    mixer = _mixer()
    u = torch.randn(2, 20, 64)
    padded = torch.cat([torch.randn(2, 6, 64), u], 1)
    mask = torch.ones(2, 26, dtype=torch.bool)
    mask[:, :6] = False
    with torch.no_grad():
        y_ref, s_ref = mixer(u)
        y_pad, s_pad = mixer(padded, mask=mask)
    assert (s_pad.ssm - s_ref.ssm).abs().max().item() <= 1e-5
    assert (y_pad[:, 6:] - y_ref).abs().max().item() <= 1e-5


def test_state_decays_without_input():
    mixer = _mixer()
    with torch.no_grad():
        _, state = mixer(torch.randn(1, 10, 64))
    assert state.ssm.abs().sum() > 0
    assert state.ssm.dtype == torch.float32


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or ssd_kernels() is None, reason="needs CUDA and mamba-ssm")
def test_cuda_kernel_path_matches_cpu_reference():
    mixer = _mixer()
    u = torch.randn(2, 75, 64)
    with torch.no_grad():
        ref = [mixer(u[:, :40]), None]
        ref[1] = mixer(u[:, 40:], ref[0][1])
        ref_one = mixer(u[:, 40:41], ref[0][1])
        ref_long = mixer(u, ref[0][1])
        gpu = mixer.cuda()
        ucu = u.cuda()
        first = gpu(ucu[:, :40])
        second = gpu(ucu[:, 40:], first[1])
        one = gpu(ucu[:, 40:41], first[1])  # one token (short_scan.py's kernel)
        long = gpu(ucu, first[1])  # 75 tokens: mamba-ssm's chunked scan
    assert (first[0].cpu() - ref[0][0]).abs().max().item() <= 1e-3
    assert (second[0].cpu() - ref[1][0]).abs().max().item() <= 1e-3
    assert (second[1].ssm.cpu() - ref[1][1].ssm).abs().max().item() <= 1e-3
    assert (one[0].cpu() - ref_one[0]).abs().max().item() <= 1e-3
    assert (long[0].cpu() - ref_long[0]).abs().max().item() <= 1e-3
    assert (long[1].ssm.cpu() - ref_long[1].ssm).abs().max().item() <= 1e-3
    assert (first[1].ssm.cpu() - ref[0][1].ssm).abs().max().item() <= 1e-3  # the kernel did not touch the cached state


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (Triton)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("groups", [1, 2])
def test_short_scan_kernel_matches_the_reference(dtype, groups):
    from mambavla.model.mamba2 import ssd_scan_reference
    from mambavla.model.short_scan import MAX_TOKENS, fits, short_scan

    torch.manual_seed(0)
    b, h, p, n = 2, 8, 64, 64
    for length in (1, 5, 16, 33, MAX_TOKENS):
        x = torch.randn(b, length, h, p, device="cuda").to(dtype)
        B, C = torch.randn(2, b, length, groups, n, device="cuda").to(dtype).unbind(0)
        xBC = torch.cat([x.flatten(2), B.flatten(2), C.flatten(2)], dim=-1)  # the conv's output, [x | B | C]
        dt_raw = (torch.randn(b, length, h, device="cuda") * 3.0).to(
            dtype
        )  # some past softplus's threshold (20 after bias)
        dt_bias = torch.randn(h, device="cuda") - 2.0
        dt_bias[0] = 25.0
        A_log = torch.rand(h, device="cuda") * 2.0
        D = torch.randn(h, device="cuda")
        state = torch.randn(b, h, p, n, device="cuda")
        dt = torch.nn.functional.softplus(dt_raw.float() + dt_bias)
        ref_y, ref_state = ssd_scan_reference(x.float(), dt, -torch.exp(A_log), B.float(), C.float(), D, state, 64)
        with torch.no_grad():
            assert fits(xBC, p, n)
            y, final = short_scan(xBC, dt_raw, dt_bias, A_log, D, state, h, groups)
        assert y.shape == (b, length, h * p) and y.dtype == dtype and final.dtype == torch.float32
        # fp32: exact matmuls (ieee); bf16: the matmul inputs rounded to bf16, as in mamba-ssm's kernels
        tol = 1e-3 if dtype == torch.float32 else 3e-2
        ref_y = ref_y.flatten(2)
        assert (y.float() - ref_y).abs().max().item() <= tol * max(1.0, ref_y.abs().max().item()), length
        assert (final - ref_state).abs().max().item() <= tol * max(1.0, ref_state.abs().max().item()), length
    assert not fits(torch.zeros(1, MAX_TOKENS + 1, h * p + 2 * n, device="cuda"), p, n)  # mamba-ssm's scan
    assert not fits(torch.zeros(1, 8, 8 * 24 + 2 * 24, device="cuda"), 24, 24)
