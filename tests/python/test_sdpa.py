"""flashsdpa.scaled_dot_product_attention against PyTorch's math SDPA in fp64:
odd sizes, every mask kind, broadcasting, GQA, scale, fully masked rows,
non-contiguous inputs, fp32/fp16/bf16, forward and gradients."""
from __future__ import annotations

import pytest
import torch

import flashsdpa
from conftest import LOWP, assert_close_rule, run_with_grads, torch_math_sdpa

# (B, Hq, Hk, Sq, Sk, D, Dv)
SHAPES = [
    (2, 4, 2, 113, 203, 59, 59),  # odd sizes, GQA, Sq < Sk
    (1, 3, 3, 203, 113, 64, 40),  # Sq > Sk, Dv != D
]
MASKS = ["none", "causal", "bool4d", "bool2d", "float4d", "float_bcast_heads", "key_padding"]


def make_mask(kind, b, hq, sq, sk, dtype, device, gen):
    if kind in ("none", "causal"):
        return None
    if kind == "bool4d":
        return torch.rand(b, hq, sq, sk, generator=gen) > 0.3
    if kind == "bool2d":
        return torch.rand(sq, sk, generator=gen) > 0.5
    if kind == "float4d":
        return torch.randn(b, hq, sq, sk, generator=gen).to(dtype)
    if kind == "float_bcast_heads":  # (B, 1, Sq, Sk) additive, with -inf holes
        m = torch.randn(b, 1, sq, sk, generator=gen)
        m[torch.rand(b, 1, sq, sk, generator=gen) > 0.8] = float("-inf")
        m[..., 0] = 0.0  # every row keeps a key
        return m.to(dtype)
    if kind == "key_padding":  # (B, 1, 1, Sk): the last keys of batch 0 are padding
        m = torch.ones(b, 1, 1, sk, dtype=torch.bool)
        m[0, ..., sk - 17:] = False
        return m
    raise AssertionError(kind)


def check_sdpa(q, k, v, dtype, device, **kw):
    """Runs ours (on device, dtype), PyTorch math (same dtype) and fp64, and
    applies the tolerance rule to out, dq, dk, dv."""
    gen = torch.Generator().manual_seed(1)
    mask = kw.pop("attn_mask", None)
    dout = torch.randn(q.shape[:-1] + (v.shape[-1],), generator=gen)
    lp = [t.to(device, dtype) for t in (q, k, v)]
    m_lp = None if mask is None else mask.to(device)
    m_64 = None if mask is None else (mask if mask.dtype == torch.bool else mask.double())
    ours = run_with_grads(flashsdpa.scaled_dot_product_attention, lp, dout.to(device),
                          attn_mask=m_lp, **kw)
    pt = run_with_grads(torch_math_sdpa, lp, dout.to(device), attn_mask=m_lp, **kw)
    ref = run_with_grads(torch_math_sdpa, [t.double() for t in (q, k, v)], dout.double(),
                         attn_mask=m_64, **kw)
    for name, a, b, c in zip(["out", "dq", "dk", "dv"], ours, pt, ref):
        assert a.dtype == dtype and a.device.type == device
        assert_close_rule(name, a, b, c, dtype)
    return ours, ref


@pytest.mark.parametrize("dtype", LOWP, ids=str)
@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_sdpa_matches_math_fp64(shape, mask_kind, dtype, device):
    b, hq, hk, sq, sk, d, dv = shape
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(b, hq, sq, d, generator=gen)
    k = torch.randn(b, hk, sk, d, generator=gen)
    v = torch.randn(b, hk, sk, dv, generator=gen)
    mask = make_mask(mask_kind, b, hq, sq, sk, dtype, device, gen)
    check_sdpa(q, k, v, dtype, device, attn_mask=mask, is_causal=mask_kind == "causal",
               enable_gqa=hq != hk)


@pytest.mark.parametrize("mask_shape", [(1, 1, 37, 45), (2, 1, 37, 45), (1, 3, 37, 45),
                                        (3, 37, 45), (37, 1), (1, 45), (45,), (2, 3, 1, 45)])
@pytest.mark.parametrize("mask_dtype", ["bool", "float"])
def test_broadcast_masks(mask_shape, mask_dtype, device):
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 3, s, 24, generator=gen) for s in (37, 45, 45))
    if mask_dtype == "bool":
        mask = torch.rand(mask_shape, generator=gen) > 0.4
        mask[..., :1] = True
    else:
        mask = torch.randn(mask_shape, generator=gen)
    check_sdpa(q, k, v, torch.float32, device, attn_mask=mask)


def test_3d_inputs(device):
    """(N, L, E) inputs, as PyTorch allows, with a 3-D mask."""
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(3, s, 16, generator=gen) for s in (21, 30, 30))
    mask = torch.rand(3, 21, 30, generator=gen) > 0.3
    check_sdpa(q, k, v, torch.float32, device, attn_mask=mask)
    check_sdpa(q, k, v, torch.float32, device, is_causal=True)


@pytest.mark.parametrize("scale", [0.05, 1.0, 0.37])
def test_scale(scale, device):
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 2, s, 32, generator=gen) for s in (50, 70, 70))
    check_sdpa(q, k, v, torch.float32, device, scale=scale, is_causal=True)
    # the scale really is used: a different scale gives a different result
    a = flashsdpa.scaled_dot_product_attention(q.to(device), k.to(device), v.to(device), scale=scale)
    b = flashsdpa.scaled_dot_product_attention(q.to(device), k.to(device), v.to(device))
    assert (a - b).abs().max() > 1e-3


@pytest.mark.parametrize("dtype", LOWP, ids=str)
def test_fully_masked_rows_give_zero(dtype, device):
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 2, s, 16, generator=gen) for s in (19, 23, 23))
    bmask = torch.rand(2, 2, 19, 23, generator=gen) > 0.5
    bmask[0, 1, 3] = False
    bmask[1, :, 10:12] = False
    fmask = torch.zeros(2, 2, 19, 23).masked_fill(~bmask, float("-inf")).to(dtype)
    for mask in (bmask, fmask):
        ours, _ = check_sdpa(q, k, v, dtype, device, attn_mask=mask)
        out, dq = ours[0], ours[1]
        assert (out[0, 1, 3] == 0).all() and (out[1, :, 10:12] == 0).all()
        assert (dq[0, 1, 3] == 0).all()
        assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in ours[1:])


def test_non_contiguous_inputs(device):
    """Transposed (B, S, H, D) storage, strided last dim, expanded batch: used
    in place (strides passed through DLPack) and still exact."""
    gen = torch.Generator().manual_seed(6)
    base_q = torch.randn(2, 41, 3, 2 * 20, generator=gen)
    q = base_q.transpose(1, 2)[..., ::2]  # stride 2 in the feature dim
    k = torch.randn(1, 3, 29, 20, generator=gen).expand(2, 3, 29, 20)  # batch stride 0
    v = torch.randn(2, 29, 3, 20, generator=gen).permute(0, 2, 1, 3)
    assert not q.is_contiguous() and not v.is_contiguous() and k.stride(0) == 0
    mask = (torch.rand(41, 29, generator=gen) > 0.3).t().contiguous().t()  # column-major
    for dev_q in [t.to(device) for t in (q,)]:
        assert not dev_q.is_contiguous()
    check_sdpa(q, k, v, torch.float32, device, attn_mask=mask)
    # the direct call on the very tensors (no .to() copies on CPU)
    if device == "cpu":
        out = flashsdpa.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        ref = torch_math_sdpa(q.double(), k.double(), v.double(), attn_mask=mask)
        assert (out.double() - ref).abs().max() < 1e-5


@pytest.mark.parametrize("hq,hk", [(8, 1), (6, 2), (4, 4)])
def test_gqa_grads_reduced(hq, hk, device):
    gen = torch.Generator().manual_seed(7)
    q = torch.randn(1, hq, 33, 16, generator=gen)
    k, v = (torch.randn(1, hk, 47, 16, generator=gen) for _ in range(2))
    ours, _ = check_sdpa(q, k, v, torch.float32, device, enable_gqa=True, is_causal=True)
    assert ours[2].shape == k.shape and ours[3].shape == v.shape


def test_output_layout_and_dtype(device):
    q = torch.randn(2, 4, 16, 8, device=device, dtype=torch.bfloat16)
    out = flashsdpa.scaled_dot_product_attention(q, q, q)
    assert out.shape == (2, 4, 16, 8) and out.dtype == torch.bfloat16 and out.device == q.device
    # like PyTorch's flash kernels, the output is (B, S, H, D) in memory
    assert out.transpose(1, 2).is_contiguous()


def test_zero_length_sequences(device):
    q = torch.randn(1, 2, 0, 8, device=device)
    k = torch.randn(1, 2, 5, 8, device=device)
    assert flashsdpa.scaled_dot_product_attention(q, k, k).shape == (1, 2, 0, 8)
