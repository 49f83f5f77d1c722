"""flash_attn_func / flash_attn_varlen_func: (B, S, H, D) layout, bottom-right
causal, sliding windows, softcap, ALiBi, GQA, lse, determinism, varlen.
The fp64 truth is a plain PyTorch implementation (conftest.attention_ref),
itself checked against flashsdpa's C++ fp64 reference here."""
from __future__ import annotations

import math

import pytest
import torch

import flashsdpa
from conftest import LOWP, assert_close_rule, attention_ref, c_reference, run_with_grads

CASES = {
    # name: kwargs of flash_attn_func
    "plain": {},
    "causal": {"causal": True},
    "window": {"window_size": (17, 5)},
    "causal_window": {"causal": True, "window_size": (23, -1)},
    "softcap": {"softcap": 2.5},
    "alibi": {"alibi": True},
    "alibi_causal_softcap": {"alibi": True, "causal": True, "softcap": 8.0},
    "scale": {"softmax_scale": 0.21},
}


def _alibi_slopes(h):
    return torch.tensor([2.0 ** (-8.0 * (i + 1) / h) for i in range(h)], dtype=torch.float32)


def _ref_kwargs(kw, h):
    r = {"causal": kw.get("causal", False), "window": kw.get("window_size", (-1, -1)),
         "softcap": kw.get("softcap", 0.0), "scale": kw.get("softmax_scale")}
    if kw.get("alibi"):
        r["alibi"] = _alibi_slopes(h)
    return r


def _ours_kwargs(kw, h, device):
    o = {k: v for k, v in kw.items() if k != "alibi"}
    if kw.get("alibi"):
        o["alibi_slopes"] = _alibi_slopes(h).to(device)
    return o


def bshd_ref(q, k, v, **kw):
    """attention_ref on (B, S, H, D) tensors."""
    out = attention_ref(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), **kw)
    return out.transpose(1, 2)


@pytest.mark.parametrize("dtype", LOWP, ids=str)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("sq,sk", [(113, 203), (203, 113)])
def test_flash_attn_func(sq, sk, case, dtype, device):
    b, hq, hk, d = 2, 4, 2, 59
    gen = torch.Generator().manual_seed(10)
    q = torch.randn(b, sq, hq, d, generator=gen)
    k = torch.randn(b, sk, hk, d, generator=gen)
    v = torch.randn(b, sk, hk, d, generator=gen)
    dout = torch.randn(b, sq, hq, d, generator=gen)
    kw = CASES[case]
    lp = [t.to(device, dtype) for t in (q, k, v)]
    ours = run_with_grads(flashsdpa.flash_attn_func, lp, dout.to(device), **_ours_kwargs(kw, hq, device))
    rk = _ref_kwargs(kw, hq)
    pt = run_with_grads(bshd_ref, [t.to(dtype) for t in (q, k, v)], dout, **rk)
    ref = run_with_grads(bshd_ref, [t.double() for t in (q, k, v)], dout.double(), **rk)
    for name, a, bb, c in zip(["out", "dq", "dk", "dv"], ours, pt, ref):
        assert a.dtype == dtype
        assert_close_rule(name, a, bb, c, dtype)
    assert ours[0].is_contiguous()  # (B, S, H, D) contiguous, like flash_attn


@pytest.mark.parametrize("case", ["causal_window", "alibi_causal_softcap", "window"])
def test_torch_reference_agrees_with_c_reference(case):
    """The PyTorch fp64 reference of these tests and the library's C++ fp64
    oracle implement the same semantics (to fp64 round-off)."""
    gen = torch.Generator().manual_seed(11)
    q = torch.randn(1, 4, 37, 16, generator=gen, dtype=torch.float64)
    k = torch.randn(1, 2, 53, 16, generator=gen, dtype=torch.float64)
    v = torch.randn(1, 2, 53, 16, generator=gen, dtype=torch.float64)
    dout = torch.randn(1, 4, 37, 16, generator=gen, dtype=torch.float64)
    kw = CASES[case]
    rk = _ref_kwargs(kw, 4)
    ref = run_with_grads(attention_ref, [q, k, v], dout, **rk)
    opts = {"causal": rk["causal"], "align": flashsdpa._C.ALIGN_BOTTOM_RIGHT,
            "window_left": rk["window"][0], "window_right": rk["window"][1],
            "softcap": rk["softcap"]}
    if "alibi" in rk:
        opts["alibi_slopes"] = rk["alibi"]
    cref = c_reference(q, k, v, dout, **opts)
    for a, b in zip(ref, cref):
        assert (a - b).abs().max() < 1e-10


def test_bottom_right_causal_differs_from_top_left(device):
    q = torch.randn(1, 5, 2, 8, device=device)
    k = torch.randn(1, 9, 2, 8, device=device)
    v = torch.randn(1, 9, 2, 8, device=device)
    br = flashsdpa.flash_attn_func(q, k, v, causal=True)
    tl = flashsdpa.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                v.transpose(1, 2), is_causal=True).transpose(1, 2)
    # bottom-right: the last query row sees every key
    full = flashsdpa.flash_attn_func(q, k, v)
    assert torch.allclose(br[:, -1], full[:, -1], atol=1e-6)
    assert not torch.allclose(br, tl, atol=1e-3)


def test_return_lse(device):
    gen = torch.Generator().manual_seed(12)
    q, k, v = (torch.randn(2, s, 3, 16, generator=gen) for s in (21, 34, 34))
    out, lse = flashsdpa.flash_attn_func(q.to(device), k.to(device), v.to(device), causal=True,
                                         return_lse=True)
    assert lse.shape == (2, 3, 21) and lse.dtype == torch.float32
    s = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) / math.sqrt(16)
    i, j = torch.arange(21).view(-1, 1), torch.arange(34).view(1, -1)
    s = s.masked_fill(j > i + 34 - 21, float("-inf"))
    assert torch.allclose(lse.cpu().double(), torch.logsumexp(s, -1), atol=1e-5)
    # FlashAttention's return_attn_probs: (out, lse, None), probabilities never built
    o2, lse2, probs = flashsdpa.flash_attn_func(q.to(device), k.to(device), v.to(device),
                                                causal=True, return_attn_probs=True)
    assert probs is None and torch.equal(o2, out) and torch.equal(lse2, lse)


def test_alibi_per_batch_slopes(device):
    gen = torch.Generator().manual_seed(13)
    q, k, v = (torch.randn(2, 30, 2, 16, generator=gen) for _ in range(3))
    slopes = torch.rand(2, 2, generator=gen)
    out = flashsdpa.flash_attn_func(q.to(device), k.to(device), v.to(device),
                                    alibi_slopes=slopes.to(device))
    ref = bshd_ref(q.double(), k.double(), v.double(), alibi=slopes.double())
    assert (out.cpu().double() - ref).abs().max() < 1e-5


def test_deterministic_backward_is_bitwise_reproducible(device):
    gen = torch.Generator().manual_seed(14)
    q, k, v = (torch.randn(2, 150, 4, 32, generator=gen).to(device) for _ in range(3))
    dout = torch.randn(2, 150, 4, 32, generator=gen).to(device)
    runs = [run_with_grads(flashsdpa.flash_attn_func, [q, k, v], dout, causal=True,
                           deterministic=True) for _ in range(2)]
    for a, b in zip(*runs):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------
# varlen


def _pack(lengths, h, d, gen):
    total = sum(lengths)
    x = torch.randn(total, h, d, generator=gen)
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32)
    return x, cu


@pytest.mark.parametrize("dtype", LOWP, ids=str)
@pytest.mark.parametrize("case", ["plain", "causal", "window", "alibi_causal_softcap"])
def test_varlen_matches_per_sequence_reference(case, dtype, device):
    gen = torch.Generator().manual_seed(15)
    lq, lk = [17, 1, 64, 33], [29, 7, 64, 20]
    hq, hk, d = 4, 2, 40
    q, cu_q = _pack(lq, hq, d, gen)
    k, cu_k = _pack(lk, hk, d, gen)
    v, _ = _pack(lk, hk, d, gen)
    dout = torch.randn(q.shape, generator=gen)
    kw = CASES[case]
    rk = _ref_kwargs(kw, hq)

    def ours_fn(q_, k_, v_):
        return flashsdpa.flash_attn_varlen_func(q_, k_, v_, cu_q.to(device), cu_k.to(device),
                                                max(lq), max(lk), **_ours_kwargs(kw, hq, device))

    def ref_fn(q_, k_, v_):
        outs = []
        for b in range(len(lq)):
            qs, ks = slice(int(cu_q[b]), int(cu_q[b + 1])), slice(int(cu_k[b]), int(cu_k[b + 1]))
            outs.append(bshd_ref(q_[None, qs], k_[None, ks], v_[None, ks], **rk)[0])
        return torch.cat(outs)

    ours = run_with_grads(ours_fn, [t.to(device, dtype) for t in (q, k, v)], dout.to(device))
    pt = run_with_grads(ref_fn, [t.to(dtype) for t in (q, k, v)], dout)
    ref = run_with_grads(ref_fn, [t.double() for t in (q, k, v)], dout.double())
    for name, a, b, c in zip(["out", "dq", "dk", "dv"], ours, pt, ref):
        assert_close_rule(name, a, b, c, dtype)


def test_varlen_lse_layout(device):
    gen = torch.Generator().manual_seed(16)
    q, cu = _pack([5, 9], 2, 8, gen)
    out, lse = flashsdpa.flash_attn_varlen_func(q.to(device), q.to(device), q.to(device),
                                                cu.to(device), cu.to(device), 9, 9,
                                                return_lse=True)
    assert out.shape == (14, 2, 8) and lse.shape == (2, 14)
    s = torch.einsum("qhd,khd->hqk", q[5:].double(), q[5:].double()) / math.sqrt(8)
    assert torch.allclose(lse[:, 5:].cpu().double(), torch.logsumexp(s, -1), atol=1e-5)
