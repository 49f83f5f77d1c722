"""Dropout: drop-rate statistics, the kernel's mask equals the library's
dropout_mask for the same seed, the backward regenerates the forward's mask,
and torch.manual_seed makes runs reproducible."""
from __future__ import annotations

import math

import pytest
import torch

import flashsdpa
from flashsdpa import _C, _ops
from conftest import LOWP, assert_close_rule, c_reference, run_with_grads


def revealed_keep(device, p, b=2, h=3, sq=64, sk=128, seed_rng=None):
    """Runs dropout attention with q = 0 (uniform probabilities 1/sk) and v =
    identity, so out[b, h, i, j] = keep_ij / (sk * (1 - p)) exposes the mask."""
    q = torch.zeros(b, h, sq, 16, device=device)
    k = torch.randn(b, h, sk, 16, device=device)
    v = torch.eye(sk, device=device).expand(b, h, sk, sk)
    if seed_rng is None:
        out = flashsdpa.scaled_dot_product_attention(q, k, v, dropout_p=p)
    else:
        out, _ = _ops.fwd(q, k, v, None, None, None, None, 0, 0, None, False, False, -1, -1, 0.0,
                          p, seed_rng, False, True, True)
    scaled = out.double().cpu() * sk * (1 - p)
    keep = scaled.round()
    assert ((keep == 0) | (keep == 1)).all() and (scaled - keep).abs().max() < 1e-4
    return keep.bool(), q, k


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_drop_rate(p, device):
    torch.manual_seed(int(p * 100))
    keep, _, _ = revealed_keep(device, p)
    n = keep.numel()
    rate = 1.0 - keep.double().mean().item()
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(rate - p) < 5 * sigma, f"drop rate {rate:.4f} vs p={p} (5 sigma = {5 * sigma:.4f})"
    # not degenerate: rows and columns differ
    assert not (keep[..., 0, :] == keep[..., 1, :]).all()
    assert not (keep[0, 0] == keep[0, 1]).all()


def test_kernel_mask_equals_dropout_mask(device):
    rng = torch.tensor([123456789, 42], dtype=torch.int64)
    keep, q, k = revealed_keep(device, 0.3, seed_rng=rng)
    p = _C.Params()
    p.dropout_p, p.seed, p.offset = 0.3, 123456789, 42
    expect = torch.empty(keep.shape, dtype=torch.bool)
    _C.dropout_mask(p, q.cpu(), k.cpu(), expect)
    assert torch.equal(keep, expect)


def test_manual_seed_reproducible_and_calls_differ(device):
    torch.manual_seed(7)
    a, _, _ = revealed_keep(device, 0.4)
    b, _, _ = revealed_keep(device, 0.4)
    torch.manual_seed(7)
    c, _, _ = revealed_keep(device, 0.4)
    assert torch.equal(a, c)
    assert not torch.equal(a, b)


def test_no_rng_consumed_without_dropout(device):
    torch.manual_seed(3)
    x = torch.randn(1, 2, 8, 8, device=device)
    flashsdpa.scaled_dot_product_attention(x, x, x, dropout_p=0.0)
    after = torch.rand(1).item()
    torch.manual_seed(3)
    torch.randn(1, 2, 8, 8, device=device)
    assert torch.rand(1).item() == after


@pytest.mark.parametrize("dtype", LOWP, ids=str)
@pytest.mark.parametrize("api", ["sdpa", "flash"])
def test_dropout_forward_and_backward_match_reference_mask(api, dtype, device):
    """Forward and gradients with dropout equal the fp64 reference using the
    same seed/offset: the backward used exactly the forward's mask."""
    gen = torch.Generator().manual_seed(20)
    b, hq, hk, sq, sk, d = 2, 4, 2, 45, 67, 24
    q = torch.randn(b, hq, sq, d, generator=gen)
    k = torch.randn(b, hk, sk, d, generator=gen)
    v = torch.randn(b, hk, sk, d, generator=gen)
    dout = torch.randn(b, hq, sq, d, generator=gen)
    pdrop = 0.25
    causal = api == "flash"
    torch.manual_seed(99)
    if api == "sdpa":
        ours = run_with_grads(flashsdpa.scaled_dot_product_attention,
                              [t.to(device, dtype) for t in (q, k, v)], dout.to(device),
                              dropout_p=pdrop, enable_gqa=True)
    else:
        o = run_with_grads(flashsdpa.flash_attn_func,
                           [t.transpose(1, 2).to(device, dtype) for t in (q, k, v)],
                           dout.transpose(1, 2).to(device), dropout_p=pdrop, causal=True)
        ours = [t.transpose(1, 2) for t in o]
    # the seed/offset the call drew from the default generator
    torch.manual_seed(99)
    seed, offset = _ops.new_rng(pdrop).tolist()
    opts = dict(dropout_p=pdrop, seed=seed, offset=offset, causal=causal,
                align=_C.ALIGN_BOTTOM_RIGHT if causal else _C.ALIGN_TOP_LEFT)
    ref = c_reference(q, k, v, dout, **opts)
    # same-precision baseline: the reference on inputs rounded to dtype
    rounded = [t.to(dtype) for t in (q, k, v, dout)]
    pt = [t.to(dtype) for t in c_reference(*rounded[:3], rounded[3], **opts)]
    for name, a, bb, c in zip(["out", "dq", "dk", "dv"], ours, pt, ref):
        assert_close_rule(name, a, bb, c, dtype, factor=2.0 if dtype != torch.float32 else 4.0)
    # and without dropout the result is clearly different (dropout was applied)
    plain = c_reference(q, k, v)
    assert (ours[0].cpu().double() - plain).abs().max() > 0.05


def test_dropout_gradcheck_fp64_reference_consistency():
    """Finite differences of the fp64 reference with a fixed dropout mask equal
    the reference backward: the oracle's gradients are themselves right."""
    gen = torch.Generator().manual_seed(21)
    q, k, v = (torch.randn(1, 2, s, 6, generator=gen, dtype=torch.float64) for s in (5, 7, 7))
    dout = torch.randn(1, 2, 5, 6, generator=gen, dtype=torch.float64)
    opts = dict(dropout_p=0.3, seed=5, offset=9)
    _, dq, dk, dv = c_reference(q, k, v, dout, **opts)
    eps = 1e-6
    for t, g in ((q, dq), (k, dk), (v, dv)):
        idx = (0, 1, 2, 3)
        t_plus, t_minus = t.clone(), t.clone()
        t_plus[idx] += eps
        t_minus[idx] -= eps
        args_p = [t_plus if x is t else x for x in (q, k, v)]
        args_m = [t_minus if x is t else x for x in (q, k, v)]
        fd = ((c_reference(*args_p, **opts) - c_reference(*args_m, **opts)) * dout).sum() / (2 * eps)
        assert abs(fd.item() - g[idx].item()) < 1e-6
