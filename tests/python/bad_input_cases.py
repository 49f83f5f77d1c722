"""The bad-input catalogue (issue 25): each case is a function that makes
one call with one thing wrong (or an edge that must work). It either raises
the expected exception with a message naming the argument, or returns
normally after checking its own result. test_bad_inputs.py runs the cases in
subprocesses (a crash or hang fails only its case) on every device here.

Run directly: python bad_input_cases.py DEVICE NAME... prints one JSON line
per case: {"name", "status": "ok"|"raised", "type", "message"}."""
from __future__ import annotations

import json
import math
import sys
import traceback

import torch
import torch.nn.functional as F

import flashsdpa
from flashsdpa import _C

CASES = {}  # name -> (function(device), expected exception type or None, regex, devices)


def case(exc=None, match="", devices=None):
    """exc None: the call must succeed (the function checks its result)."""
    def register(fn):
        CASES[fn.__name__] = (fn, exc, match, devices)
        return fn
    return register


def qkv(device, b=1, h=2, sq=16, sk=16, d=8, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(b, h, s, d, generator=g).to(device, dtype) for s in (sq, sk, sk)]


def bshd(device, b=1, h=2, sq=16, sk=16, d=8):
    return [t.transpose(1, 2).contiguous() for t in qkv(device, b, h, sq, sk, d)]


def varlen(device, lens=(5, 9)):
    g = torch.Generator().manual_seed(1)
    total = sum(lens)
    q, k, v = (torch.randn(total, 2, 8, generator=g).to(device) for _ in range(3))
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32, device=device)
    return q, k, v, cu, max(lens)


def sdpa(*a, **kw):
    return flashsdpa.scaled_dot_product_attention(*a, **kw)


def close_to_torch(out, q, k, v, **kw):
    want = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), **kw)
    torch.testing.assert_close(out.double(), want, atol=1e-4, rtol=1e-4)


# ---- scaled_dot_product_attention: scalars ----------------------------------
@case(TypeError, r"^flashsdpa: scale: expected a real number or None, got str")
def sdpa_scale_str(dev): sdpa(*qkv(dev), scale="0.5")
@case(ValueError, r"^flashsdpa: scale: must be finite, got nan")
def sdpa_scale_nan(dev): sdpa(*qkv(dev), scale=math.nan)
@case(ValueError, r"^flashsdpa: scale: must be finite, got inf")
def sdpa_scale_inf(dev): sdpa(*qkv(dev), scale=math.inf)
@case(ValueError, r"^flashsdpa: dropout_p: 0.99999999 rounds to 1.0 in float32")
def sdpa_dropout_rounds_to_one(dev): sdpa(*qkv(dev), dropout_p=0.99999999)
@case(ValueError, r"^flashsdpa: dropout_p: 1.0 is outside \[0, 1\)")
def sdpa_dropout_one(dev): sdpa(*qkv(dev), dropout_p=1.0)
@case(ValueError, r"^flashsdpa: dropout_p: -0.1 is outside \[0, 1\)")
def sdpa_dropout_negative(dev): sdpa(*qkv(dev), dropout_p=-0.1)
@case(TypeError, r"^flashsdpa: dropout_p: expected a real number, got str")
def sdpa_dropout_str(dev): sdpa(*qkv(dev), dropout_p="0.1")
@case(TypeError, r"^flashsdpa: dropout_p: expected a real number, got NoneType")
def sdpa_dropout_none(dev): sdpa(*qkv(dev), dropout_p=None)


@case()
def sdpa_scale_numpy_and_int_ok(dev):
    import numpy as np
    q, k, v = qkv(dev)
    close_to_torch(sdpa(q, k, v, scale=np.float32(0.25)), q, k, v, scale=0.25)
    close_to_torch(sdpa(q, k, v, scale=1), q, k, v, scale=1.0)


@case()
def sdpa_dropout_just_below_one_ok(dev):
    out = sdpa(*qkv(dev), dropout_p=0.999)
    assert torch.isfinite(out).all()


# ---- scaled_dot_product_attention: tensors ----------------------------------
@case(TypeError, r"query: unsupported dtype torch.float64")
def sdpa_float64(dev): sdpa(*qkv(dev, dtype=torch.float64))
@case(TypeError, r"must share one dtype")
def sdpa_dtype_mix(dev):
    q, k, v = qkv(dev)
    sdpa(q, k.half(), v)
@case(ValueError, r"must all be 3-D or 4-D, got 2-D")
def sdpa_rank2(dev):
    q, k, v = qkv(dev)
    sdpa(q[0, 0], k[0, 0], v[0, 0])
@case(ValueError, r"pass enable_gqa=True")
def sdpa_heads_without_gqa(dev):
    q, k, v = qkv(dev)
    sdpa(q, k[:, :1], v[:, :1])
@case(ValueError, r"multiple of key/value heads")
def sdpa_gqa_not_multiple(dev):
    q = qkv(dev, h=3)[0]
    k, v = qkv(dev, h=2)[1:]
    sdpa(q, k, v, enable_gqa=True)
@case(ValueError, r"k: head dim 8 differs from q's 4")
def sdpa_head_dim_mismatch(dev):
    q, k, v = qkv(dev)
    sdpa(q[..., :4], k, v)
@case(ValueError, r"head dims 300/300 exceed 256")
def sdpa_head_dim_300(dev): sdpa(*qkv(dev, d=300))
@case(ValueError, r"^mask: size 3 of dim 0 is not broadcastable to seqlen_q = 16")
def sdpa_mask_shape(dev):
    q, k, v = qkv(dev)
    sdpa(q, k, v, attn_mask=torch.ones(3, 16, dtype=torch.bool, device=dev))
@case(TypeError, r"attn_mask: dtype torch.int32 must be bool or query's")
def sdpa_mask_int(dev):
    q, k, v = qkv(dev)
    sdpa(q, k, v, attn_mask=torch.ones(16, 16, dtype=torch.int32, device=dev))
@case(ValueError, r"is_causal=True and an explicit attn_mask are mutually exclusive")
def sdpa_causal_and_mask(dev):
    q, k, v = qkv(dev)
    sdpa(q, k, v, attn_mask=torch.ones(16, 16, dtype=torch.bool, device=dev), is_causal=True)
@case(RuntimeError, r"attn_mask requires grad")
def sdpa_mask_requires_grad(dev):
    q, k, v = qkv(dev)
    sdpa(q, k, v, attn_mask=torch.zeros(16, 16, device=dev, requires_grad=True))
@case(TypeError, r"query, key, value and attn_mask must be tensors")
def sdpa_list_input(dev):
    q, k, v = qkv(dev)
    sdpa(q.tolist(), k, v)
@case(ValueError, r"must be on one device")
def sdpa_mixed_devices(dev):
    q, k, v = qkv(dev)
    sdpa(q, k.to("meta"), v)
@case(RuntimeError, r"no backend for device 'meta'")
def sdpa_meta(dev): sdpa(*qkv("meta"))
@case(RuntimeError, r"nested tensors are not supported")
def sdpa_nested(dev):
    q = torch.nested.nested_tensor([torch.randn(2, 4, 8), torch.randn(2, 6, 8)], device=dev)
    sdpa(q, q, q)


# The direct API scans for NaN/Inf on the CPU only (on GPUs it would cost a
# synchronisation; documented).
@case(ValueError, r"^q: contains a non-finite value", devices=("cpu",))
def sdpa_nan_in_q(dev):
    q, k, v = qkv(dev)
    q[0, 0, 3, 1] = math.nan
    sdpa(q, k, v)


@case(ValueError, r"^k: contains a non-finite value", devices=("cpu",))
def sdpa_nan_in_causally_hidden_key(dev):
    q, k, v = qkv(dev, sq=2, sk=300)  # top-left causal: keys 0..1 visible
    k[0, 1, 250, 3] = math.nan
    sdpa(q, k, v, is_causal=True)


@case(ValueError, r"^v: contains a non-finite value", devices=("cpu",))
def sdpa_inf_in_masked_value(dev):
    q, k, v = qkv(dev)
    v[0, 0, 7, 0] = math.inf
    m = torch.ones(16, 16, dtype=torch.bool)
    m[:, 7] = False
    sdpa(q, k, v, attn_mask=m)


@case()
def sdpa_empty_sequences_ok(dev):
    for sq, sk in ((0, 16), (16, 0), (0, 0)):
        q, k, v = qkv(dev, sq=sq, sk=sk)
        out = sdpa(q, k, v)
        assert out.shape == (1, 2, sq, 8) and (sq == 0 or torch.equal(out, torch.zeros_like(out)))


@case()
def sdpa_zero_batch_ok(dev):
    out = sdpa(*qkv(dev, b=0))
    assert out.shape == (0, 2, 16, 8)


@case()
def sdpa_aliased_and_expanded_inputs_ok(dev):
    q, k, v = qkv(dev)
    k2 = k[:, :1].expand(-1, 2, -1, -1)  # stride 0 over heads: fine for an input
    close_to_torch(sdpa(q, k2, q), q, k2, q)


@case()
def sdpa_fully_masked_rows_zero(dev):
    q, k, v = qkv(dev)
    m = torch.ones(16, 16, dtype=torch.bool, device=dev)
    m[4] = False
    out = sdpa(q, k, v, attn_mask=m)
    assert torch.equal(out[:, :, 4], torch.zeros_like(out[:, :, 4]))


# ---- the SDPA patch: never a crash; PyTorch's own behaviour on fallback -----
@case(TypeError, r"scale")  # PyTorch's own message
def patch_scale_str_falls_back(dev):
    with flashsdpa.enabled():
        F.scaled_dot_product_attention(*qkv(dev), scale="0.5")


@case()
def patch_dropout_rounding_to_one_falls_back(dev):
    with flashsdpa.enabled():
        F.scaled_dot_product_attention(*qkv(dev), dropout_p=0.99999999)
    assert flashsdpa.stats()["fallbacks"].get("dropout_p") == 1, flashsdpa.stats()


# ---- FlashAttention API -------------------------------------------------------
def fa(*a, **kw):
    return flashsdpa.flash_attn_func(*a, **kw)


@case(ValueError, r"^window_size: expected a pair \(left, right\), got 3 values")
def fa_window_three(dev): fa(*bshd(dev), window_size=(1, 2, 3))
@case(TypeError, r"^window_size: expected a pair \(left, right\), got int")
def fa_window_int(dev): fa(*bshd(dev), window_size=5)
@case(TypeError, r"^window_size: expected an int, got str")
def fa_window_str(dev): fa(*bshd(dev), window_size=("a", 1))
@case(TypeError, r"^window_size: expected an int, got float")
def fa_window_float(dev): fa(*bshd(dev), window_size=(1.5, 1))
@case(TypeError, r"^scale: expected a real number or None, got str")
def fa_scale_str(dev): fa(*bshd(dev), softmax_scale="0.5")
@case(ValueError, r"^scale: must be finite, got nan")
def fa_scale_nan(dev): fa(*bshd(dev), softmax_scale=math.nan)
@case(ValueError, r"^softcap: must be >= 0 and finite, got -1")
def fa_softcap_negative(dev): fa(*bshd(dev), softcap=-1.0)
@case(TypeError, r"^softcap: expected a real number, got str")
def fa_softcap_str(dev): fa(*bshd(dev), softcap="1")
@case(ValueError, r"^dropout_p: 0.99999999 rounds to 1.0 in float32")
def fa_dropout_rounds_to_one(dev): fa(*bshd(dev), dropout_p=0.99999999)
@case(TypeError, r"^alibi_slopes: dtype must be float32")
def fa_alibi_f64(dev): fa(*bshd(dev), alibi_slopes=torch.ones(2, dtype=torch.float64, device=dev))
@case(ValueError, r"^alibi_slopes:")
def fa_alibi_shape(dev): fa(*bshd(dev), alibi_slopes=torch.ones(3, device=dev))
@case(ValueError, r"^q: expected rank 4, got 3")
def fa_rank3(dev):
    q, k, v = bshd(dev)
    fa(q[0], k, v)
@case(TypeError, r"^k: expected a torch.Tensor, got list")
def fa_k_list(dev):
    q, k, v = bshd(dev)
    fa(q, k.tolist(), v)


@case()
def fa_negative_window_means_unbounded(dev):
    q, k, v = bshd(dev)
    torch.testing.assert_close(fa(q, k, v, window_size=(-5, -7)), fa(q, k, v))


# ---- varlen ---------------------------------------------------------------------
def fv(q, k, v, cq, ck, mq, mk, **kw):
    return flashsdpa.flash_attn_varlen_func(q, k, v, cq, ck, mq, mk, **kw)


@case(ValueError, r"^cu_seqlens_q: is on device meta, expected q's device")
def varlen_cu_meta(dev):
    q, k, v, cu, m = varlen(dev)
    fv(q, k, v, cu.to("meta"), cu, m, m)
@case(ValueError, r"^cu_seqlens_k: is on device")
def varlen_cu_other_device(dev):
    q, k, v, cu, m = varlen(dev)
    other = "meta" if dev == "cpu" else "cpu"
    fv(q, k, v, cu, cu.to(other), m, m)
@case(TypeError, r"^cu_seqlens_q: dtype float32 is not supported; expected int32")
def varlen_cu_float(dev):
    q, k, v, cu, m = varlen(dev)
    fv(q, k, v, cu.float(), cu, m, m)
@case(ValueError, r"^cu_seqlens_q: expected rank 1 \(B \+ 1 prefix sums\), got 2")
def varlen_cu_2d(dev):
    q, k, v, cu, m = varlen(dev)
    fv(q, k, v, cu.view(1, -1), cu, m, m)
@case(TypeError, r"^cu_seqlens_q: expected a torch.Tensor, got NoneType")
def varlen_cu_none(dev):
    q, k, v, cu, m = varlen(dev)
    fv(q, k, v, None, cu, m, m)
@case(ValueError, r"^cu_seqlens_q: int64 values outside the int32 range")
def varlen_cu_int64_huge(dev):
    q, k, v, cu, m = varlen(dev)
    fv(q, k, v, cu.long() * 2**32, cu, m, m)
@case(ValueError, r"^cu_seqlens_q:")
def varlen_cu_decreasing(dev):
    q, k, v, cu, m = varlen(dev)
    fv(q, k, v, cu.flip(0).contiguous(), cu, m, m)
@case(ValueError, r"^cu_seqlens_k:")
def varlen_cu_past_total(dev):
    q, k, v, cu, m = varlen(dev)
    fv(q, k, v, cu, cu * 2, m, m)
@case(ValueError, r"^cu_seqlens_k: length 2 differs from cu_seqlens_q's 3")
def varlen_cu_lengths_differ(dev):
    q, k, v, cu, m = varlen(dev)
    fv(q, k, v, cu, cu[:2].contiguous(), m, m)
@case(ValueError, r"^cu_seqlens_q: sequence 0 has length 5 > max_seqlen 2")
def varlen_max_seqlen_too_small(dev):
    q, k, v, cu, m = varlen(dev)
    fv(q, k, v, cu, cu, 2, m)


@case()
def varlen_cu_int64_converted(dev):
    q, k, v, cu, m = varlen(dev)
    want = fv(q, k, v, cu, cu, m, m, causal=True)
    got = fv(q, k, v, cu.long(), torch.cumsum(torch.tensor([0, 5, 9], device=dev), 0), m, m,
             causal=True)
    assert torch.equal(got, want)


# ---- the C ABI through flashsdpa._C: outputs that alias --------------------------
def c_forward(dev, out, lse=None, cu=None):
    q, k, v = qkv(dev)
    p = _C.Params()
    if cu is not None:
        q, k, v = (t[0].transpose(0, 1).contiguous() for t in (q, k, v))  # (16, 2, 8)
        p.max_seqlen_q = p.max_seqlen_k = 16
    stream = torch.cuda.current_stream().cuda_stream if dev == "cuda" else 0
    _C.forward(p, q, k, v, out, lse, None, None, cu, cu, stream)
    return q, k, v


@case(ValueError, r"^out: stride 0 in dim 1 of an output")
def c_out_stride0(dev): c_forward(dev, torch.empty(1, 1, 16, 8, device=dev).expand(1, 2, 16, 8))
@case(ValueError, r"^out: strides 8 \(dim 1\) and 8 \(dim 2\) make two elements of this output share memory")
def c_out_heads_overlap_rows(dev):
    c_forward(dev, torch.empty(400, device=dev).as_strided((1, 2, 16, 8), (256, 8, 8, 1)))
@case(ValueError, r"^out: strides .* share memory")
def c_out_rows_overlap_dims(dev):
    c_forward(dev, torch.empty(600, device=dev).as_strided((1, 2, 16, 8), (256, 128, 4, 1)))
@case(ValueError, r"^lse: strides .* share memory")
def c_lse_overlap(dev):
    c_forward(dev, torch.empty(1, 2, 16, 8, device=dev),
              torch.empty(64, device=dev).as_strided((1, 2, 16), (32, 8, 1)))
@case(TypeError, r"^cu_seqlens_q: dtype int64 is not supported; expected int32")
def c_cu_int64(dev):
    cu = torch.tensor([0, 16], dtype=torch.int64, device=dev)
    c_forward(dev, torch.empty(16, 2, 8, device=dev), cu=cu)


@case()
def c_out_transposed_and_padded_layouts_ok(dev):
    ref = torch.empty(1, 2, 16, 8, device=dev)
    q, k, v = c_forward(dev, ref)
    close_to_torch(ref, q, k, v)
    for out in (torch.empty(1, 16, 2, 8, device=dev).transpose(1, 2),  # BSHD
                torch.empty(1, 2, 16, 12, device=dev)[..., :8],            # padded rows
                torch.empty(8, 16, 2, 1, device=dev).permute(3, 2, 1, 0)):  # D outermost
        c_forward(dev, out)
        assert torch.equal(out, ref)


@case()
def c_backward_dq_overlap_rejected(dev):
    q, k, v = qkv(dev)
    out, lse = torch.empty_like(q), torch.empty(1, 2, 16, device=dev)
    p = _C.Params()
    stream = torch.cuda.current_stream().cuda_stream if dev == "cuda" else 0
    _C.forward(p, q, k, v, out, lse, None, None, None, None, stream)
    dq = torch.empty(300, device=dev).as_strided(q.shape, (256, 8, 8, 1))
    try:
        _C.backward(p, out, q, k, v, out, lse, dq, torch.empty_like(k), torch.empty_like(v),
                    None, None, None, None, stream)
    except ValueError as e:
        assert str(e).startswith("dq: strides 8 (dim 1) and 8 (dim 2)"), e
    else:
        raise AssertionError("an overlapping dq was accepted")


def run(device, names):
    for name in names:
        fn = CASES[name][0]
        flashsdpa.reset_stats()
        rec = {"name": name}
        try:
            fn(device)
            rec["status"] = "ok"
        except Exception as e:  # noqa: BLE001 - the catalogue records every outcome
            rec.update(status="raised", type=type(e).__name__, message=str(e),
                       trace=traceback.format_exc(limit=3))
        print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2:])
