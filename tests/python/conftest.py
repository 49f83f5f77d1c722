"""Shared helpers of the Python tests.

Accuracy rule (FlashAttention's): for every output and gradient,
    max|ours - fp64| <= 2 * max|pytorch_same_precision - fp64| + floor
where the fp64 truth is PyTorch's math SDPA in float64 (or, for features
PyTorch's SDPA lacks, a plain PyTorch implementation of flash_attn semantics
run in float64 and cross-checked against flashsdpa's own C++ fp64 reference),
and floor is 2 units in the last place (16 for fp32) at the largest
reference magnitude.
"""
from __future__ import annotations

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import flashsdpa
from flashsdpa import _C, _ops

DEVICES = ["cpu"]
if torch.cuda.is_available() and _ops.device_available("cuda"):
    DEVICES.append("cuda")
LOWP = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(autouse=True)
def _clean_state():
    flashsdpa.disable()
    flashsdpa.reset_stats()
    yield
    flashsdpa.disable()


# fp32 errors (~1e-6) are at the level of summation-order noise, where the
# factor 2 alone is a coin flip; 16 ulp there, 2 ulp for fp16/bf16.
FLOOR_ULPS = {torch.float32: 16, torch.float16: 2, torch.bfloat16: 2}


def floor(dtype: torch.dtype, ref: torch.Tensor) -> float:
    return FLOOR_ULPS[dtype] * torch.finfo(dtype).eps * max(1.0, ref.abs().max().item())


def assert_close_rule(name, ours, pt, ref, dtype, factor=2.0):
    """FlashAttention's tolerance rule; `pt` is the same-precision PyTorch result."""
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    ours64 = ours.detach().to("cpu", torch.float64)
    pt64 = pt.detach().to("cpu", torch.float64)
    ref = ref.detach().to("cpu", torch.float64)
    assert torch.isfinite(ours64).all(), f"{name}: non-finite values"
    err = (ours64 - ref).abs().max().item() if ref.numel() else 0.0
    err_pt = (pt64 - ref).abs().max().item() if ref.numel() else 0.0
    bound = factor * err_pt + floor(dtype, ref)
    assert err <= bound, f"{name}: error {err:.3e} > {factor}*{err_pt:.3e} + floor (bound {bound:.3e})"


def run_with_grads(fn, tensors, grad_out, **kw):
    """Returns [out, *grads of tensors] of fn(*tensors, **kw) against grad_out."""
    ts = [t.detach().clone().requires_grad_(True) for t in tensors]
    out = fn(*ts, **kw)
    if isinstance(out, tuple):
        out = out[0]
    grads = torch.autograd.grad(out, ts, grad_out.to(out.dtype))
    return [out.detach()] + [g.detach() for g in grads]


def _sdpa_has_enable_gqa() -> bool:
    t = torch.zeros(1, 1, 1, 1)
    try:
        F.scaled_dot_product_attention(t, t, t, enable_gqa=False)
    except TypeError:
        return False
    return True


# PyTorch's SDPA takes enable_gqa since 2.5; before, models repeated K/V heads.
SDPA_HAS_ENABLE_GQA = _sdpa_has_enable_gqa()


def repeat_kv_heads(q, k, v):
    """k, v with their heads repeated to q's (GQA the pre-2.5 way)."""
    g = q.shape[-3] // k.shape[-3]
    return k.repeat_interleave(g, -3), v.repeat_interleave(g, -3)


def _math_sdpa_zeroes_masked_rows() -> bool:
    t = torch.ones(1, 1, 1, 1)
    with sdpa_kernel(SDPBackend.MATH):
        out = F.scaled_dot_product_attention(t, t, t, attn_mask=torch.zeros(1, 1, dtype=torch.bool))
    return not out.isnan().any().item()


# A query row that sees no key gives 0 in PyTorch's math SDPA since 2.5
# (flashsdpa's semantics); before, NaN.
MATH_SDPA_ZEROES_MASKED_ROWS = _math_sdpa_zeroes_masked_rows()


def flash_first(device):
    """PyTorch's SDPA priority with its flash backend first, on CUDA. Recent
    PyTorch puts cuDNN first on Hopper and Blackwell (cuDNN > 9.15), and then
    F.scaled_dot_product_attention never reaches aten's flash operators,
    which is what the registry overrides (README: the routes table)."""
    if torch.device(device).type != "cuda":
        return contextlib.nullcontext()
    order = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH,
             SDPBackend.CUDNN_ATTENTION]
    return sdpa_kernel(order, set_priority=True)


def torch_math_sdpa(q, k, v, attn_mask=None, *args, enable_gqa=False, **kw):
    """PyTorch's math SDPA with the semantics of PyTorch >= 2.5 on older
    versions: enable_gqa emulated by repeating K/V heads, and rows that see
    no key give 0 (computed unmasked, then zeroed: no NaN reaches the
    gradients)."""
    if enable_gqa and not SDPA_HAS_ENABLE_GQA:
        k, v = repeat_kv_heads(q, k, v)
        enable_gqa = False
    gqa = {"enable_gqa": True} if enable_gqa else {}
    dead = None
    if attn_mask is not None and not MATH_SDPA_ZEROES_MASKED_ROWS:
        blocked = ~attn_mask if attn_mask.dtype == torch.bool else attn_mask == float("-inf")
        dead = blocked.all(-1, keepdim=True)
        attn_mask = attn_mask.masked_fill(dead, True if attn_mask.dtype == torch.bool else 0.0)
    with sdpa_kernel(SDPBackend.MATH):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask, *args, **kw, **gqa)
    return out if dead is None else out.masked_fill(dead, 0.0)


def attention_ref(q, k, v, causal=False, window=(-1, -1), softcap=0.0, alibi=None, scale=None,
                  bottom_right=True, keep=None, dropout_p=0.0):
    """Plain PyTorch attention with flash_attn semantics, (B, H, S, D) layout,
    computed in the inputs' dtype (upcast the inputs for the fp64 truth).
    keep: the dropout keep mask [B, Hq, Sq, Sk] (bool) or None."""
    b, hq, sq, d = q.shape
    hk, sk = k.shape[1], k.shape[2]
    if hq != hk:
        k = k.repeat_interleave(hq // hk, dim=1)
        v = v.repeat_interleave(hq // hk, dim=1)
    s = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(d) if scale is None else scale)
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    i = torch.arange(sq).view(-1, 1)
    j = torch.arange(sk).view(1, -1)
    off = (sk - sq) if bottom_right else 0
    if alibi is not None:
        slopes = alibi.to(s.device, s.dtype).view(b if alibi.dim() == 2 else 1, hq, 1, 1)
        s = s - slopes * (i + off - j).abs().to(s.device, s.dtype)
    wl, wr = window
    if causal:
        wr = 0
    allowed = torch.ones(sq, sk, dtype=torch.bool)
    if wl >= 0:
        allowed &= j >= i + off - wl
    if wr >= 0:
        allowed &= j <= i + off + wr
    s = s.masked_fill(~allowed.to(s.device), float("-inf"))
    p = torch.softmax(s, dim=-1)
    p = torch.nan_to_num(p, nan=0.0)  # rows with no visible key
    if keep is not None:
        p = p * keep.to(p.device, p.dtype) / (1.0 - dropout_p)
    return p @ v


def c_reference(q, k, v, dout=None, **opts):
    """flashsdpa's own fp64 oracle (C++), padded (B, H, S, D) CPU tensors."""
    p = _C.Params()
    mask = opts.pop("mask", None)
    alibi = opts.pop("alibi_slopes", None)
    for key_, val in opts.items():
        setattr(p, key_, val)
    q, k, v = (t.detach().cpu().double() for t in (q, k, v))
    out = torch.empty(q.shape[:-1] + (v.shape[-1],), dtype=torch.float64)
    _C.reference_forward(p, q, k, v, out, None, mask, alibi)
    if dout is None:
        return out
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    _C.reference_backward(p, dout.detach().cpu().double(), q, k, v, dq, dk, dv, mask, alibi)
    return out, dq, dk, dv
