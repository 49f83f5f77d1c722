"""Eager calls that record no autograd graph skip the torch.library
dispatcher (call_fwd); everything else must still go through the operator."""
from __future__ import annotations

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


def test_grad_calls_go_through_the_operator_and_backpropagate():
    q, k, v = inputs(requires_grad=True)
    assert not _ops._plain_eager_call((q, k, v))
    out = flashsdpa.scaled_dot_product_attention(q, k, v)
    assert out.grad_fn is not None
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    with torch.no_grad():
        assert _ops._plain_eager_call((q, k, v))
