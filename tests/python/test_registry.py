"""flashsdpa as PyTorch's flash-attention implementation (torch.nn.attention's
registry): registered on import but not active; once activated every route to
aten's flash operators reaches flashsdpa (counted in stats()), with aten's exact
output tuples and PyTorch's results/gradients (2x rule vs the math backend);
restoring removes every override. The CUDA overrides are also run here on CPU
tensors (the kernels pick the backend from the tensors' device), against the
FlashAttention-semantics reference."""
from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import flashsdpa
from flashsdpa import _aten
from conftest import (DEVICES, LOWP, assert_close_rule, attention_ref, flash_first,
                      run_with_grads, torch_math_sdpa)

attention = torch.nn.attention
HAS_REGISTRY = hasattr(attention, "register_flash_attention_impl")
pytestmark = pytest.mark.skipif(not HAS_REGISTRY, reason="this PyTorch has no flash registry")

CPU_FWD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
CPU_BWD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward.default


@pytest.fixture
def active():
    attention.activate_flash_attention_impl("flashsdpa")
    assert _aten.is_active() and attention.current_flash_attention_impl() == "flashsdpa"
    yield
    _aten.restore()
    assert not _aten.is_active()


def qkv(b=2, hq=4, hk=2, sq=37, sk=45, d=24, dtype=torch.float32, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, sq, d, generator=g)
    k = torch.randn(b, hk, sk, d, generator=g)
    v = torch.randn(b, hk, sk, d, generator=g)
    dout = torch.randn(b, hq, sq, d, generator=g)
    return [t.to(device, dtype) for t in (q, k, v)], dout.to(device)


def test_registered_on_import_not_active():
    assert "flashsdpa" in attention.list_flash_attention_impls()
    assert attention.current_flash_attention_impl() != "flashsdpa" and not _aten.is_active()
    (q, k, v), _ = qkv()
    F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    assert flashsdpa.stats()["dispatched"] == 0


from torch.nn.functional import scaled_dot_product_attention as sdpa_bound_at_import  # noqa: E402


ROUTES = {
    "public": lambda q, k, v, **kw: F.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kw),
    "alias": lambda q, k, v, **kw: sdpa_bound_at_import(q, k, v, enable_gqa=True, **kw),
    "sdpa_kernel_flash": lambda q, k, v, **kw: _with_flash_kernel(q, k, v, **kw),
}


def _with_flash_kernel(q, k, v, **kw):
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kw)


# Every call PyTorch's SDPA sends to its flash backend: on CPU any float
# dtype, masks; on CUDA (flash: fp16/bf16, no mask, causal only with Sq == Sk)
# plain and causal, MHA.
ROUTE_CASES = ([("cpu", kind, dtype) for kind in ("plain", "causal", "bool_mask", "float_mask")
                for dtype in LOWP]
               + [("cuda", kind, dtype) for kind in ("plain", "causal")
                  for dtype in (torch.float16, torch.bfloat16) if "cuda" in DEVICES])


@pytest.mark.parametrize("device,kind,dtype", ROUTE_CASES, ids=str)
@pytest.mark.parametrize("route", list(ROUTES))
def test_routes_match_math_backend(route, device, kind, dtype, active):
    shape = {} if device == "cpu" else {"hk": 4, "sq": 64, "sk": 64, "d": 64}
    (q, k, v), dout = qkv(dtype=dtype, seed=1, device=device, **shape)
    sq, sk = q.shape[2], k.shape[2]
    kw = {}
    if kind == "causal":
        kw["is_causal"] = True
    elif kind == "bool_mask":
        m = torch.rand(sq, sk, generator=torch.Generator().manual_seed(2)) > 0.3
        m[:, 0] = True
        kw["attn_mask"] = m
    elif kind == "float_mask":
        kw["attn_mask"] = torch.randn(2, 1, sq, sk, generator=torch.Generator().manual_seed(3))
        kw["attn_mask"] = kw["attn_mask"].to(dtype)
    with flash_first(device):
        ours = run_with_grads(ROUTES[route], [q, k, v], dout, **kw)
    st = flashsdpa.stats()
    assert st["dispatched"] == 1 and st["dispatched_via_aten"] == 1 and st["backward"] == 1, st
    assert st["fallback_total"] == 0 and st["dispatched_by_device"] == {device: 1}, st

    def math(q_, k_, v_):
        mk = dict(kw)
        if "attn_mask" in mk and mk["attn_mask"].is_floating_point():
            mk["attn_mask"] = mk["attn_mask"].to(q_.dtype)
        return torch_math_sdpa(q_, k_, v_, enable_gqa=True, **mk)

    _aten.restore()  # the references run on PyTorch's own kernels
    pt = run_with_grads(math, [q, k, v], dout)
    ref = run_with_grads(math, [t.cpu().double() for t in (q, k, v)], dout.cpu().double())
    attention.activate_flash_attention_impl("flashsdpa")
    for name, a, b, c in zip(["out", "dq", "dk", "dv"], ours, pt, ref):
        assert a.dtype == dtype and a.device.type == device
        assert_close_rule(name, a, b, c, dtype)


def test_aten_op_output_tuple_matches_aten(active):
    """torch.ops.aten calls reach flashsdpa, with aten's shapes, dtypes and strides."""
    (q, k, v), dout = qkv(dtype=torch.bfloat16, seed=4)
    q = q.transpose(1, 2).contiguous().transpose(1, 2)  # a [B, S, H, D] buffer, like models use
    out, lse = CPU_FWD(q, k, v, 0.0, True, scale=0.3)
    assert flashsdpa.stats()["dispatched_via_aten"] == 1
    dq, dk, dv = CPU_BWD(dout.bfloat16(), q, k, v, out, lse, 0.0, True, scale=0.3)
    assert flashsdpa.stats()["backward"] == 1
    _aten.restore()
    ref = CPU_FWD(q, k, v, 0.0, True, scale=0.3)
    ref_grads = CPU_BWD(dout.bfloat16(), q, k, v, *ref, 0.0, True, scale=0.3)
    attention.activate_flash_attention_impl("flashsdpa")
    for a, b in zip((out, lse, dq, dk, dv), ref + ref_grads):
        assert (a.shape, a.dtype, a.stride()) == (b.shape, b.dtype, b.stride())
    # the lse is the natural-log log-sum-exp of the scaled scores, like aten's
    assert (lse - ref[1]).abs().max() < 1e-2
    s = (q.double() @ k.double().repeat_interleave(2, 1).transpose(-1, -2)) * 0.3
    s = s.masked_fill(torch.ones(37, 45, dtype=torch.bool).triu(1), float("-inf"))
    assert (lse.double() - torch.logsumexp(s, -1)).abs().max() < 1e-4


def test_fallbacks_go_to_aten_kernel(active):
    (q, k, v), dout = qkv(hk=4, seed=5)
    ref = CPU_FWD(q.double(), k.double(), v.double())  # float64: aten's kernel
    assert ref[0].dtype == torch.float64
    st = flashsdpa.stats()
    assert st["dispatched"] == 0 and st["fallbacks"] == {"aten:dtype:float64": 1}, st
    # dropout: the CPU backward op gets no RNG state, so aten's kernel answers
    with pytest.raises(RuntimeError, match="dropout"):
        CPU_FWD(q, k, v, 0.5)
    assert flashsdpa.stats()["fallbacks"]["aten:dropout_without_rng_state"] == 1


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_reaches_flashsdpa(device, active):
    dtype, shape = ((torch.float32, {}) if device == "cpu"
                    else (torch.bfloat16, {"hk": 4, "sq": 64, "sk": 64, "d": 64}))
    (q, k, v), dout = qkv(seed=6, dtype=dtype, device=device, **shape)

    def f(q_, k_, v_):
        return F.scaled_dot_product_attention(q_, k_, v_, is_causal=True, enable_gqa=True)

    compiled = torch.compile(f, backend="inductor", fullgraph=True)
    with flash_first(device):
        ours = run_with_grads(compiled, [q, k, v], dout)
    st = flashsdpa.stats()
    assert st["dispatched_via_aten"] >= 1 and st["backward"] >= 1, st
    assert st["dispatched_by_device"].get(device, 0) >= 1, st

    def math(a, b, c):
        return torch_math_sdpa(a, b, c, is_causal=True, enable_gqa=True)

    pt = run_with_grads(math, [q, k, v], dout)
    ref = run_with_grads(math, [t.cpu().double() for t in (q, k, v)], dout.cpu().double())
    for name, a, b, c in zip(["out", "dq", "dk", "dv"], ours, pt, ref):
        assert_close_rule(name, a, b, c, dtype)


@pytest.mark.skipif("cuda" not in DEVICES, reason="no CUDA device / CUDA backend")
def test_cuda_aten_op_output_tuple_matches_aten(active):
    """torch.ops.aten's CUDA flash operators reach flashsdpa, with aten's
    shapes, dtypes and strides (and the same max_q/max_k)."""
    (q, k, v), dout = qkv(hk=4, sq=64, sk=64, d=64, dtype=torch.bfloat16, seed=4, device="cuda")
    q = q.transpose(1, 2).contiguous().transpose(1, 2)  # a [B, S, H, D] buffer, like models use
    fwd = torch.ops.aten._scaled_dot_product_flash_attention
    bwd = torch.ops.aten._scaled_dot_product_flash_attention_backward

    def run():
        res = fwd(q, k, v, 0.0, True, scale=0.3)
        grads = bwd(dout.bfloat16(), q, k, v, res[0], res[1], res[2], res[3], res[4], res[5],
                    0.0, True, res[6], res[7], scale=0.3)
        return res, grads

    ours, our_grads = run()
    st = flashsdpa.stats()
    assert st["dispatched_via_aten"] == 1 and st["backward"] == 1, st
    _aten.restore()
    ref, ref_grads = run()
    attention.activate_flash_attention_impl("flashsdpa")
    assert ours[4:6] == ref[4:6]
    for a, b in zip((ours[0], ours[1]) + tuple(our_grads), (ref[0], ref[1]) + tuple(ref_grads)):
        assert (a.shape, a.dtype, a.stride()) == (b.shape, b.dtype, b.stride())
    assert (ours[1] - ref[1]).abs().max() < 1e-2


def test_restore_removes_every_override():
    (q, k, v), _ = qkv(seed=7)
    attention.activate_flash_attention_impl("flashsdpa")
    F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    assert flashsdpa.stats()["dispatched_via_aten"] == 1
    _aten.restore()
    flashsdpa.reset_stats()
    F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    CPU_FWD(q, k, v)
    assert flashsdpa.stats()["dispatched"] == 0
    # activating twice (the registry restores first) still leaves one set of overrides
    attention.activate_flash_attention_impl("flashsdpa")
    attention.activate_flash_attention_impl("flashsdpa")
    CPU_FWD(q, k, v)
    assert flashsdpa.stats()["dispatched"] == 1
    _aten.restore()
    CPU_FWD(q, k, v)
    assert flashsdpa.stats()["dispatched"] == 1


def test_missing_registry_is_skipped_with_a_logged_reason(monkeypatch, caplog):
    monkeypatch.delattr(attention, "register_flash_attention_impl")
    with caplog.at_level(logging.INFO, logger="flashsdpa"):
        assert _aten.register() is False
    assert "no flash-attention registry" in caplog.text
    assert "register_flash_attention_impl" in caplog.text


def test_registry_without_restore_registers_and_says_so(monkeypatch, caplog):
    # PyTorch 2.10: register and activate, no restore_flash_attention_impl.
    monkeypatch.delattr(attention, "restore_flash_attention_impl", raising=False)
    with caplog.at_level(logging.INFO, logger="flashsdpa"):
        assert _aten.register() is True
    assert "no restore_flash_attention_impl" in caplog.text
    assert "flashsdpa" in attention.list_flash_attention_impls()


# ---------------------------------------------------------------------------
# The CUDA overrides, called directly on CPU tensors. Each gets aten's kernel
# to fall back to; here a stub that records the call.


class _Original:
    def __init__(self):
        self.calls = 0

    def call_boxed(self, *args, **kwargs):
        self.calls += 1
        return "aten"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", [{}, {"is_causal": True}, {"window": (7, 3)},
                                  {"is_causal": True, "window": (9, 0)}])
def test_cuda_flash_attention_ops_on_cpu_tensors(case, dtype):
    (q, k, v), dout = qkv(sq=29, sk=41, dtype=dtype, seed=8)
    q, k, v, dout = (t.transpose(1, 2).contiguous() for t in (q, k, v, dout.to(dtype)))  # BSHD
    fwd = _aten._flash_attention_forward(_Original())
    bwd = _aten._flash_attention_backward(_Original())
    wl, wr = case.get("window", (None, None))
    causal = case.get("is_causal", False)
    out, lse, rng_state, unused, debug = fwd(None, q, k, v, None, None, 29, 41, 0.0, causal, False,
                                             window_size_left=wl, window_size_right=wr)
    assert out.shape == q.shape and out.stride() == q.stride() and lse.shape == (2, 4, 29)
    assert lse.dtype == torch.float32 and rng_state.dtype == torch.uint64
    assert rng_state.shape == (2,) and unused.shape == () and debug.numel() == 0
    dq, dk, dv = bwd(None, dout, q, k, v, out, lse, None, None, 29, 41, 0.0, causal, rng_state,
                     unused, window_size_left=wl, window_size_right=wr)
    window = (-1 if wl is None else wl, -1 if wr is None else wr)
    t = lambda x: x.transpose(1, 2)  # noqa: E731
    ref = run_with_grads(lambda a, b, c: t(attention_ref(t(a), t(b), t(c), causal=causal,
                                                         window=window)),
                         [x.double() for x in (q, k, v)], dout.double())
    pt = run_with_grads(lambda a, b, c: t(attention_ref(t(a), t(b), t(c), causal=causal,
                                                        window=window)), [q, k, v], dout)
    for name, a, b, c in zip(["out", "dq", "dk", "dv"], (out, dq, dk, dv), pt, ref):
        assert_close_rule(name, a, b, c, dtype)

    # the [B, H, S, D] SDPA forms give the same numbers in aten's tuple
    sfwd = _aten._sdpa_flash_forward(_Original())
    sbwd = _aten._sdpa_flash_backward(_Original())
    if wl is None:
        res = sfwd(None, t(q), t(k), t(v), 0.0, causal, False)
        assert len(res) == 9 and res[2] is None and res[3] is None and res[4:6] == (29, 41)
        assert torch.equal(res[0], t(out)) and torch.equal(res[1], lse)
        g = sbwd(None, t(dout), t(q), t(k), t(v), res[0], res[1], None, None, 29, 41, 0.0,
                 causal, res[6], res[7])
        for a, b in zip(g, (dq, dk, dv)):
            assert torch.equal(a, t(b))


def test_cuda_ops_dropout_roundtrips_rng_state_and_fall_back_when_unsupported():
    (q, k, v), dout = qkv(hk=4, sq=16, sk=16, dtype=torch.bfloat16, seed=9)
    q, k, v = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    fwd = _aten._flash_attention_forward(_Original())
    bwd = _aten._flash_attention_backward(_Original())
    torch.manual_seed(0)
    out, lse, rng_state, unused, _ = fwd(None, q, k, v, None, None, 16, 16, 0.3, False, False)
    torch.manual_seed(0)
    ref = flashsdpa.flash_attn_func(q, k, v, dropout_p=0.3, return_lse=True)
    assert torch.equal(out, ref[0]) and torch.equal(lse, ref[1])
    do = dout.transpose(1, 2).contiguous().bfloat16()
    torch.manual_seed(0)
    qq, kk, vv = (t.detach().clone().requires_grad_() for t in (q, k, v))
    torch.autograd.backward(flashsdpa.flash_attn_func(qq, kk, vv, dropout_p=0.3), do)
    grads = bwd(None, do, q, k, v, out, lse, None, None, 16, 16, 0.3, False, rng_state, unused)
    for a, b in zip(grads, (qq.grad, kk.grad, vv.grad)):
        assert torch.equal(a, b)
    original = _Original()
    fwd = _aten._flash_attention_forward(original)
    flashsdpa.reset_stats()
    for kw in ({"return_debug_mask": True}, {"dtype": torch.float32},
               {"alibi_slopes": torch.ones(4)}, {"seqused_k": torch.ones(2, dtype=torch.int32)}):
        dt = kw.pop("dtype", torch.bfloat16)
        rdm = kw.pop("return_debug_mask", False)
        assert fwd(None, q.to(dt), k.to(dt), v.to(dt), None, None, 16, 16, 0.0, False, rdm,
                   **kw) == "aten"
    assert original.calls == 4 and flashsdpa.stats()["fallback_total"] == 4


def test_native_fast_paths_are_reached_by_neither_route(active):
    """Documented limitation (README): nn.TransformerEncoderLayer's and
    nn.MultiheadAttention's inference fast path computes attention inside
    _native_multi_head_attention, and need_weights=True needs the
    probabilities; neither calls aten's flash operators on CPU."""
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True).eval()
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=True).eval()
    x = torch.randn(2, 40, 32)
    with torch.no_grad():
        layer(x)
        mha(x, x, x, need_weights=True)
        mha(x, x, x, need_weights=False)
    assert flashsdpa.stats()["dispatched"] == 0
    layer.train()  # outside the fast path the layer's SDPA call does reach flashsdpa
    layer(x)
    assert flashsdpa.stats()["dispatched_via_aten"] == 1


@pytest.mark.skipif("cuda" not in DEVICES, reason="no CUDA device / CUDA backend")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_sdpa_reaches_flashsdpa_through_aten(causal, dtype, active):
    """On a GPU, PyTorch's SDPA picks its flash backend for these calls, whose
    aten operators are now flashsdpa's."""
    (q, k, v), dout = qkv(hk=4, sq=200, sk=200, d=64, seed=10)
    dev = [t.cuda().to(dtype) for t in (q, k, v)]
    ours = run_with_grads(ROUTES["sdpa_kernel_flash"], dev, dout.cuda(), is_causal=causal)
    st = flashsdpa.stats()
    assert st["dispatched_by_device"].get("cuda") == 1 and st["dispatched_via_aten"] == 1, st
    assert st["backward"] == 1 and st["fallback_total"] == 0, st
    _aten.restore()
    pt = run_with_grads(torch_math_sdpa, dev, dout.cuda(), is_causal=causal)
    ref = run_with_grads(torch_math_sdpa, [t.double() for t in (q, k, v)], dout.double(),
                         is_causal=causal)
    attention.activate_flash_attention_impl("flashsdpa")
    for name, a, b, c in zip(["out", "dq", "dk", "dv"], ours, pt, ref):
        assert_close_rule(name, a, b, c, dtype)
