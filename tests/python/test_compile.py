"""torch.library.opcheck on both operators, and torch.compile(fullgraph=True)
of a model whose attention goes through the patched SDPA."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import flashsdpa
from flashsdpa import _ops
from conftest import SDPA_HAS_ENABLE_GQA, repeat_kv_heads


def _fwd_args(device, *, mask=None, dropout=0.0, varlen=False, alibi=False, requires_grad=True):
    g = torch.Generator().manual_seed(0)
    if varlen:
        q = torch.randn(20, 4, 16, generator=g)
        k = torch.randn(26, 2, 16, generator=g)
        v = torch.randn(26, 2, 16, generator=g)
        cu_q = torch.tensor([0, 9, 20], dtype=torch.int32, device=device)
        cu_k = torch.tensor([0, 15, 26], dtype=torch.int32, device=device)
        extra = (cu_q, cu_k, 11, 15)
    else:
        q = torch.randn(2, 4, 19, 16, generator=g)
        k = torch.randn(2, 2, 23, 16, generator=g)
        v = torch.randn(2, 2, 23, 16, generator=g)
        extra = (None, None, 0, 0)
    q, k, v = (t.to(device).requires_grad_(requires_grad) for t in (q, k, v))
    slopes = torch.rand(4, generator=g).to(device) if alibi else None
    rng = torch.tensor([11, 3]) if dropout > 0 else None
    return (q, k, v, mask, slopes) + extra + (
        None, varlen, varlen, -1, -1, 0.0, dropout, rng, False, True, not varlen)


@pytest.mark.parametrize("variant", ["plain", "bool_mask", "float_mask", "dropout", "varlen",
                                     "alibi"])
def test_opcheck_fwd(variant, device):
    kw = {}
    if variant == "bool_mask":
        kw["mask"] = torch.rand(19, 23, device=device) > 0.3
    elif variant == "float_mask":
        kw["mask"] = torch.randn(2, 1, 19, 23, device=device)
    elif variant == "dropout":
        kw["dropout"] = 0.2
    elif variant == "varlen":
        kw["varlen"] = True
    elif variant == "alibi":
        kw["alibi"] = True
    torch.library.opcheck(_ops.fwd, _fwd_args(device, **kw))


def test_opcheck_bwd(device):
    args = _fwd_args(device, dropout=0.1, requires_grad=False)
    out, lse = _ops.fwd(*args)
    (q, k, v, mask, slopes, cu_q, cu_k, mq, mk, scale, causal, br, wl, wr, sc, p, rng, det,
     cf, _layout) = args
    dout = torch.randn_like(out)
    torch.library.opcheck(_ops.bwd, (dout, q, k, v, out, lse, mask, slopes, cu_q, cu_k, mq, mk,
                                     scale, causal, br, wl, wr, sc, p, rng, det, cf))


class Block(nn.Module):
    """A pre-norm transformer block written the usual way, attention via
    F.scaled_dot_product_attention (looked up at call time)."""

    def __init__(self, dim=32, heads=4, kv_heads=2):
        super().__init__()
        self.h, self.kvh, self.hd = heads, kv_heads, dim // heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * kv_heads * self.hd)
        self.o = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x, mask=None):
        b, s, d = x.shape
        h = self.norm1(x)
        q = self.q(h).view(b, s, self.h, self.hd).transpose(1, 2)
        k, v = self.kv(h).view(b, s, 2, self.kvh, self.hd).permute(2, 0, 3, 1, 4)
        if SDPA_HAS_ENABLE_GQA:
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                               enable_gqa=True)
        else:  # PyTorch < 2.5: the model repeats the K/V heads itself
            k, v = repeat_kv_heads(q, k, v)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
        x = x + self.o(a.transpose(1, 2).reshape(b, s, d))
        return x + self.mlp(self.norm2(x))


@pytest.mark.parametrize("with_mask", [False, True])
def test_compile_fullgraph_matches_eager(with_mask, device):
    torch.manual_seed(0)
    model = nn.Sequential(*[Block() for _ in range(2)]).to(device)

    class Wrap(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x, mask):
            for blk in self.m:
                x = blk(x, mask)
            return x

    wrap = Wrap(model)
    x = torch.randn(2, 37, 32, device=device)
    mask = (torch.rand(2, 1, 37, 37, device=device) > 0.2) if with_mask else None

    def run(fn):
        for p in model.parameters():
            p.grad = None
        out = fn(x, mask)
        out.square().mean().backward()
        return [out.detach()] + [p.grad.clone() for p in model.parameters()]

    eager_torch = run(wrap)
    with flashsdpa.enabled():
        eager = run(wrap)
        flashsdpa.reset_stats()
        torch._dynamo.reset()
        compiled = torch.compile(wrap, fullgraph=True)  # raises on any graph break
        got = run(compiled)
        st = flashsdpa.stats()
    # the compiled graph ran flashsdpa's kernels (counted at run time)
    assert st["dispatched"] == 2 and st["backward"] == 2, st
    for a, b, c in zip(got, eager, eager_torch):
        assert (a - b).abs().max() < 2e-5
        assert (b - c).abs().max() < 2e-4
