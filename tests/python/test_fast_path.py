"""Eager calls skip the torch.library dispatcher (call_fwd): without autograd
the kernel runs directly, with autograd through a plain autograd.Function of
the same formula; under dispatch modes (and torch.compile) the operator runs."""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import flashsdpa
from flashsdpa import _ops


class RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def inputs(requires_grad=False):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 5, 32, generator=g) for _ in range(3))
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


def test_no_grad_call_matches_the_operator_bitwise_and_is_counted():
    q, k, v = inputs()
    before = _ops.counters["dispatched"]
    with torch.no_grad():
        fast = flashsdpa.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert _ops.counters["dispatched"] == before + 1
    via_op, _ = torch.ops.flashsdpa.fwd(q, k, v, None, None, None, None, 0, 0, None, True, False,
                                        -1, -1, 0.0, 0.0, None, False, True, True)
    assert torch.equal(fast, via_op)


def test_dispatch_modes_still_see_the_operator():
    q, k, v = inputs()
    with RecordOps() as mode:
        flashsdpa.scaled_dot_product_attention(q, k, v)
    assert any("flashsdpa.fwd" in op for op in mode.ops), mode.ops


def test_eager_grad_calls_skip_the_operator_and_match_its_gradients_bitwise():
    q, k, v = inputs(requires_grad=True)
    assert not _ops._plain_eager_call((q, k, v))
    assert _ops._eager_call((q, k, v))
    out = flashsdpa.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert type(out.grad_fn).__name__ == "_EagerAttentionBackward"
    dout = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), dout)
    # The operator's own autograd formula on the same inputs.
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    ref_out, _ = torch.ops.flashsdpa.fwd(q2, k2, v2, None, None, None, None, 0, 0, None, True,
                                         False, -1, -1, 0.0, 0.0, None, False, True, False)
    assert ref_out.grad_fn is not None and "EagerAttention" not in type(ref_out.grad_fn).__name__
    ref = torch.autograd.grad(ref_out, (q2, k2, v2), dout)
    assert torch.equal(out, ref_out)
    for a, b in zip(got, ref):
        assert torch.equal(a, b)
    with torch.no_grad():
        assert _ops._plain_eager_call((q, k, v))


def test_eager_grad_with_unused_output_and_lse():
    q, k, v = inputs(requires_grad=True)
    out, lse = flashsdpa.flash_attn_func(q.transpose(1, 2), k.transpose(1, 2),
                                         v.transpose(1, 2), return_lse=True)
    assert not lse.requires_grad
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_sdpa_without_autograd_skips_the_lse_and_gives_the_same_output(device):
    """scaled_dot_product_attention has no use for the lse: without autograd
    call_fwd(need_lse=False) does not ask the C ABI for one (lse None), and
    the output is bitwise the one computed with it."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 7, 16, generator=g).to(device) for _ in range(3))
    scalars = (0, 0, None, True, False, -1, -1, 0.0, 0.0, None, False, False, False)
    before = _ops.counters["dispatched"]
    with torch.no_grad():
        out, lse = _ops.call_fwd(q, k, v, None, None, None, None, *scalars, need_lse=False)
        ref, ref_lse = _ops.call_fwd(q, k, v, None, None, None, None, *scalars)
    assert lse is None and ref_lse.dtype == torch.float32 and ref_lse.shape == (2, 3, 7)
    assert torch.equal(out, ref)
    assert _ops.counters["dispatched"] == before + 2
    assert torch.equal(flashsdpa.scaled_dot_product_attention(q, k, v, is_causal=True), ref)
    # With autograd the backward needs the lse: need_lse is ignored.
    qg = q.clone().requires_grad_()
    out_g, lse_g = _ops.call_fwd(qg, k, v, None, None, None, None, *scalars, need_lse=False)
    assert torch.equal(lse_g, ref_lse) and torch.equal(out_g.detach(), ref)


def test_in_place_change_of_a_saved_input_is_caught_by_the_backward():
    """The eager autograd path (C++ apply, inputs passed to the C ABI without
    a detach) still saves its inputs for autograd's version check: a
    backward through an input modified in place after the forward is
    refused."""
    q, k, v = inputs(requires_grad=True)
    k2 = k.detach().clone()
    out = flashsdpa.scaled_dot_product_attention(q, k2, v)
    with torch.no_grad():
        k2.add_(1.0)
    try:
        out.sum().backward()
    except RuntimeError as e:
        assert "modified by an inplace operation" in str(e)
    else:
        raise AssertionError("the backward ran on an input modified in place")


def test_registering_a_runner_reaches_calls_on_that_device():
    """Device records (`_ops.device_info`) are cached per device; registering
    a runner replaces them, and a registered runner always receives an lse
    buffer (only the C ABI's devices may skip it)."""
    seen = []

    def fwd(params, q, k, v, out, lse, *rest, **extra):
        seen.append(lse)
        out.zero_()

    def bwd(*args, **kwargs):
        raise AssertionError("no backward expected")

    q = torch.empty(1, 1, 4, 8, device="meta")
    assert not _ops.device_info(q.device).available
    try:
        _ops.register_device_runner("meta", fwd, bwd)
        assert _ops.device_info(q.device).available
        before = _ops.counters["dispatched:meta"]
        flashsdpa.scaled_dot_product_attention(q, q, q)
        assert len(seen) == 1 and seen[0] is not None and seen[0].shape == (1, 1, 4)
        assert _ops.counters["dispatched:meta"] == before + 1
    finally:
        _ops._runners.pop("meta", None)
        _ops._available.pop("meta", None)
        _ops._devices.clear()
    assert not _ops.device_info(q.device).available


def test_flash_attn_func_grad_path_takes_its_layout_inside_the_node(device):
    """flash_attn_func's (B, S, H, D) tensors reach the kernels as views taken
    inside the eager autograd node (no transpose nodes in the graph): output
    and gradients are bitwise those of the operator route (which transposes
    outside), in the same layouts, and the output is a tensor of its own:
    changing it in place is allowed as it was, and a backward through the
    node after that is refused as it was (the node saved it)."""
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 9, 4, 16, generator=g).to(device) for _ in range(3))
    k, v = k[:, :, :2].contiguous(), v[:, :, :2].contiguous()  # GQA: 4 query heads, 2 kv
    dout = torch.randn(2, 9, 4, 16, generator=g).to(device)
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    out, lse = flashsdpa.flash_attn_func(qg, kg, vg, causal=True, return_lse=True)
    assert type(out.grad_fn).__name__ == "_EagerAttentionBackward" and out._base is None
    assert out.shape == (2, 9, 4, 16) and out.is_contiguous() and lse.shape == (2, 4, 9)
    got = torch.autograd.grad(out, (qg, kg, vg), dout, retain_graph=True)
    # The operator route, transposing outside.
    q2, k2, v2 = (t.clone().requires_grad_() for t in (q, k, v))
    with RecordOps() as mode:
        ref_out, ref_lse = torch.ops.flashsdpa.fwd(
            q2.transpose(1, 2), k2.transpose(1, 2), v2.transpose(1, 2), None, None, None, None,
            0, 0, None, True, True, -1, -1, 0.0, 0.0, None, False, device == "cpu", True)
    assert any("flashsdpa.fwd" in op for op in mode.ops)
    ref_out = ref_out.transpose(1, 2)
    ref = torch.autograd.grad(ref_out, (q2, k2, v2), dout, retain_graph=True)
    assert torch.equal(out, ref_out) and out.stride() == ref_out.stride()
    assert torch.equal(lse, ref_lse)
    for a, b in zip(got, ref):
        assert a.shape == b.shape and a.stride() == b.stride() and torch.equal(a, b)
    for o, inputs in ((out, (qg, kg, vg)), (ref_out, (q2, k2, v2))):
        o.mul_(2.0)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            torch.autograd.grad(o, inputs, dout)
