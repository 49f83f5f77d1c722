"""FlashAttention 2.x API compatibility: positional order of flash_attn_func /
flash_attn_varlen_func (return_attn_probs is the 11th / 15th positional
argument, return_lse keyword-only), and the packed variants, forward and
gradients (2x rule against the FlashAttention-semantics reference)."""
from __future__ import annotations

import inspect

import pytest
import torch

import flashsdpa
from conftest import assert_close_rule, run_with_grads
from test_flash_api import bshd_ref

FA2_FUNC = ["q", "k", "v", "dropout_p", "softmax_scale", "causal", "window_size", "softcap",
            "alibi_slopes", "deterministic", "return_attn_probs"]
FA2_VARLEN = ["q", "k", "v", "cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k"] + \
    FA2_FUNC[3:]
FA2_PACKED = {
    "flash_attn_qkvpacked_func": ["qkv"] + FA2_FUNC[3:],
    "flash_attn_kvpacked_func": ["q", "kv"] + FA2_FUNC[3:],
    "flash_attn_varlen_qkvpacked_func": ["qkv", "cu_seqlens", "max_seqlen"] + FA2_FUNC[3:],
    "flash_attn_varlen_kvpacked_func": ["q", "kv"] + FA2_VARLEN[3:],
}


def _positional(fn):
    return [p.name for p in inspect.signature(fn).parameters.values()
            if p.kind == p.POSITIONAL_OR_KEYWORD]


def test_positional_order_is_flash_attn_2():
    assert _positional(flashsdpa.flash_attn_func) == FA2_FUNC
    # flash-attn 2.x appends block_table after return_attn_probs
    assert _positional(flashsdpa.flash_attn_varlen_func)[:len(FA2_VARLEN)] == FA2_VARLEN
    for name, params in FA2_PACKED.items():
        assert _positional(getattr(flashsdpa, name)) == params, name
    sig = inspect.signature(flashsdpa.flash_attn_func).parameters["return_lse"]
    assert sig.kind == sig.KEYWORD_ONLY


def test_positional_return_attn_probs_gives_flash_attn_tuple():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 19, 2, 16, generator=g) for _ in range(3))
    res = flashsdpa.flash_attn_func(q, k, v, 0.0, None, True, (-1, -1), 0.0, None, False, True)
    assert len(res) == 3 and res[2] is None and res[1].shape == (2, 2, 19)
    assert torch.equal(res[0], flashsdpa.flash_attn_func(q, k, v, causal=True))


def _varlen_pack(lengths, *shape, gen):
    x = torch.randn(sum(lengths), *shape, generator=gen)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    return x, cu


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("causal", [False, True])
def test_packed_padded(causal, dtype):
    g = torch.Generator().manual_seed(1)
    b, s, h, d = 2, 23, 4, 32
    qkv = torch.randn(b, s, 3, h, d, generator=g)
    dout = torch.randn(b, s, h, d, generator=g)

    def unpacked(x):
        return bshd_ref(x[:, :, 0], x[:, :, 1], x[:, :, 2], causal=causal)

    ours = run_with_grads(flashsdpa.flash_attn_qkvpacked_func, [qkv.to(dtype)], dout,
                          causal=causal)
    pt = run_with_grads(unpacked, [qkv.to(dtype)], dout.to(dtype))
    ref = run_with_grads(unpacked, [qkv.double()], dout.double())
    for name, a, bb, c in zip(["out", "dqkv"], ours, pt, ref):
        assert_close_rule(name, a, bb, c, dtype)

    q = torch.randn(b, 17, 4, d, generator=g)
    kv = torch.randn(b, s, 2, 2, d, generator=g)  # GQA: 4 query heads, 2 kv heads
    dout = torch.randn(b, 17, 4, d, generator=g)

    def kv_unpacked(q_, kv_):
        return bshd_ref(q_, kv_[:, :, 0], kv_[:, :, 1], causal=causal)

    ours = run_with_grads(flashsdpa.flash_attn_kvpacked_func, [q.to(dtype), kv.to(dtype)], dout,
                          causal=causal)
    pt = run_with_grads(kv_unpacked, [q.to(dtype), kv.to(dtype)], dout.to(dtype))
    ref = run_with_grads(kv_unpacked, [q.double(), kv.double()], dout.double())
    for name, a, bb, c in zip(["out", "dq", "dkv"], ours, pt, ref):
        assert_close_rule(name, a, bb, c, dtype)


@pytest.mark.parametrize("causal", [False, True])
def test_packed_varlen(causal):
    g = torch.Generator().manual_seed(2)
    lengths, h, d = [7, 1, 30, 12], 2, 24
    qkv, cu = _varlen_pack(lengths, 3, h, d, gen=g)
    dout = torch.randn(qkv.shape[0], h, d, generator=g)

    def per_sequence(q_, k_, v_, cu_q, cu_k):
        outs = []
        for i in range(len(cu_q) - 1):
            qs, ks = slice(int(cu_q[i]), int(cu_q[i + 1])), slice(int(cu_k[i]), int(cu_k[i + 1]))
            outs.append(bshd_ref(q_[None, qs], k_[None, ks], v_[None, ks], causal=causal)[0])
        return torch.cat(outs)

    ours = run_with_grads(flashsdpa.flash_attn_varlen_qkvpacked_func, [qkv], dout,
                          cu_seqlens=cu, max_seqlen=max(lengths), causal=causal)
    ref_fn = lambda x: per_sequence(x[:, 0], x[:, 1], x[:, 2], cu, cu)  # noqa: E731
    pt = run_with_grads(ref_fn, [qkv], dout)
    ref = run_with_grads(ref_fn, [qkv.double()], dout.double())
    for name, a, bb, c in zip(["out", "dqkv"], ours, pt, ref):
        assert_close_rule(name, a, bb, c, torch.float32)

    q, cu_q = _varlen_pack([5, 3, 9, 12], 4, d, gen=g)
    kv, cu_k = _varlen_pack(lengths, 2, h, d, gen=g)
    dout = torch.randn(q.shape[0], 4, d, generator=g)
    ours = run_with_grads(flashsdpa.flash_attn_varlen_kvpacked_func, [q, kv], dout,
                          cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=12,
                          max_seqlen_k=max(lengths), causal=causal)
    ref_fn = lambda q_, kv_: per_sequence(q_, kv_[:, 0], kv_[:, 1], cu_q, cu_k)  # noqa: E731
    pt = run_with_grads(ref_fn, [q, kv], dout)
    ref = run_with_grads(ref_fn, [q.double(), kv.double()], dout.double())
    for name, a, bb, c in zip(["out", "dq", "dkv"], ours, pt, ref):
        assert_close_rule(name, a, bb, c, torch.float32)


def test_packed_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="qkv: expected size 3 at dim 2"):
        flashsdpa.flash_attn_qkvpacked_func(torch.randn(1, 4, 2, 2, 8))
    with pytest.raises(TypeError, match="kv: expected a torch.Tensor"):
        flashsdpa.flash_attn_kvpacked_func(torch.randn(1, 4, 2, 8), [1, 2])
