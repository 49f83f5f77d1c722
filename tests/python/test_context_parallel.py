"""PyTorch's own context parallelism with the ``flashsdpa`` implementation active.

* CPU: ``torch.distributed.tensor.experimental.context_parallel`` on 2 and 3
  gloo processes runs F.scaled_dot_product_attention on flashsdpa's ring
  (the handlers ``_context_parallel.py`` adds); out and gradients, unsharded
  with PyTorch's ``context_parallel_unshard``, match single-process attention
  with the 2x rule, with PyTorch's head-tail load balancer (flashsdpa's zigzag)
  and without it (contiguous slices), causal or not, MHA and GQA, fp32/bf16.
  Without flashsdpa active, PyTorch's CP fails on CPU (no handler, no sharding
  strategy for the CPU flash operator), which is why the handlers exist. With
  the patch (flashsdpa.enable()) on as well, the patch hands the DTensors to
  PyTorch's function (fallback "dtensor") and the handlers serve them.
* CUDA route: PyTorch's ring (``_templated_ring_attention`` and its backward)
  calls aten's CUDA flash operator per block; here it calls flashsdpa's CUDA
  overrides on CPU tensors (the kernels pick the backend from the device), so
  the overrides' output tuples are checked against what PyTorch's ring merges.
  On a GPU, ``test_cuda_context_parallel_reaches_flashsdpa`` checks the
  dispatch itself (one process, NCCL).
"""
from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

import flashsdpa
from flashsdpa import _aten, _context_parallel
from conftest import DEVICES, assert_close_rule, flash_first, torch_math_sdpa
from dist_harness import run_ranks

attention = torch.nn.attention
pytestmark = pytest.mark.skipif(
    not hasattr(attention, "register_flash_attention_impl")
    or _context_parallel._cp_module() is None,
    reason="this PyTorch has no flash registry or no context_parallel handler table")

CP_CASES = [  # (load_balance, causal, hq, hk, dtype)
    (True, True, 4, 4, torch.float32),
    (True, True, 4, 2, torch.bfloat16),
    (True, False, 4, 2, torch.float32),
    (False, True, 4, 4, torch.bfloat16),
    (False, False, 4, 4, torch.float32),
]


def _inputs(world, hq, hk, seed):
    b, d, s = 2, 16, 2 * world * 5  # 5 rows per head-tail chunk
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, s, d, generator=g) for h in (hq, hk, hk, hq)]


def _reference(q, k, v, dout, causal, dtype):
    def grads(ts, do):
        ts = [t.detach().clone().requires_grad_() for t in ts]
        o = torch_math_sdpa(*ts, is_causal=causal, enable_gqa=True)
        return [o.detach()] + list(torch.autograd.grad(o, ts, do.to(o.dtype)))

    return (grads([t.to(dtype) for t in (q, k, v)], dout),
            grads([t.double() for t in (q, k, v)], dout.double()))


def _check_pytorch_cp(rank, world, load_balance, causal, hq, hk, dtype, fallbacks=None):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.experimental import context_parallel
    from torch.distributed.tensor.experimental._attention import (_cp_options,
                                                                  context_parallel_unshard)

    mesh = init_device_mesh("cpu", (world,))
    q, k, v, dout = _inputs(world, hq, hk, 100 + hq + hk + int(causal))
    pt, ref = _reference(q, k, v, dout, causal, dtype)
    cp_q, cp_k, cp_v, cp_dout = (t.to(dtype) for t in (q, k, v, dout))
    old = _cp_options.enable_load_balance
    _cp_options.enable_load_balance = load_balance
    flashsdpa.reset_stats()
    try:
        with context_parallel(mesh, buffers=[cp_q, cp_k, cp_v, cp_dout],
                              buffer_seq_dims=[2, 2, 2, 2],
                              no_restore_buffers={cp_q, cp_k, cp_v, cp_dout}):
            for t in (cp_q, cp_k, cp_v):
                t.requires_grad_()
            out = F.scaled_dot_product_attention(cp_q, cp_k, cp_v, is_causal=causal,
                                                 enable_gqa=True)
            out.backward(cp_dout)
            ours = context_parallel_unshard(mesh, [out.detach(), cp_q.grad, cp_k.grad,
                                                   cp_v.grad], [2, 2, 2, 2])
    finally:
        _cp_options.enable_load_balance = old
    st = flashsdpa.stats()
    # one CP call; its blocks (rank 0 of a causal contiguous ring has only its own)
    assert st["dispatched_via_context_parallel"] == 1 and st["dispatched"] >= 1, st
    assert st["backward"] >= 1 and st["fallbacks"] == (fallbacks or {}), st
    what = f"world {world} rank {rank} balance={load_balance} causal={causal} {hq}/{hk} {dtype}"
    for name, a, b, c in zip(["out", "dq", "dk", "dv"], ours, pt, ref):
        assert a.dtype == dtype and not a.isnan().any(), f"{what} {name}"
        assert_close_rule(f"{what} {name}", a, b, c, dtype)


def _check_pytorch_ring_with_cuda_overrides(rank, world, load_balance, causal, dtype):
    """PyTorch's ring as its CUDA CP handler runs it, each block on the
    registry's override of aten::_scaled_dot_product_flash_attention(_backward)."""
    from torch.distributed.tensor.experimental._attention import (
        _cp_options, _templated_ring_attention)
    from torch.distributed.tensor.experimental._context_parallel._attention import (
        _templated_ring_attention_backward)
    from flashsdpa.distributed import shard

    class Original:  # aten's kernel, which no call here may reach
        def call_boxed(self, *args, **kwargs):
            raise AssertionError("fell back to aten's kernel")

    fwd_impl = _aten._sdpa_flash_forward(Original())
    bwd_impl = _aten._sdpa_flash_backward(Original())

    def fwd_op(query, key, value, is_causal, dropout_p, scale):
        return fwd_impl(None, query, key, value, dropout_p, is_causal, False, scale=scale)

    def bwd_op(**kw):
        return bwd_impl(None, kw.pop("grad_out"), kw.pop("query"), kw.pop("key"),
                        kw.pop("value"), kw.pop("out"), kw.pop("logsumexp"), kw.pop("cum_seq_q"),
                        kw.pop("cum_seq_k"), kw.pop("max_q"), kw.pop("max_k"),
                        kw.pop("dropout_p"), kw.pop("is_causal"), kw.pop("philox_seed"),
                        kw.pop("philox_offset"), **kw)

    q, k, v, dout = _inputs(world, 4, 4, 300 + int(causal))
    pt, ref = _reference(q, k, v, dout, causal, dtype)
    group = torch.distributed.group.WORLD
    local = [shard(t.to(dtype), rank, world, zigzag=load_balance, dim=2) for t in (q, k, v, dout)]
    old = _cp_options.enable_load_balance
    _cp_options.enable_load_balance = load_balance
    try:
        out, lse, *rest = _templated_ring_attention(group, 2, fwd_op, *local[:3], is_causal=causal,
                                                    dropout_p=0.0, scale=None)
        grads = _templated_ring_attention_backward(
            group, 2, bwd_op, local[3], "grad_out", *local[:3], out, lse, causal, cum_seq_q=None,
            cum_seq_k=None, max_q=local[0].shape[2], max_k=local[0].shape[2], dropout_p=0.0,
            philox_seed=rest[4], philox_offset=rest[5], scale=None)
    finally:
        _cp_options.enable_load_balance = old
    what = f"PyTorch ring, world {world} rank {rank} balance={load_balance} causal={causal} {dtype}"
    for name, a, b, c in zip(["out", "dq", "dk", "dv"], [out] + list(grads[:3]), pt, ref):
        assert_close_rule(f"{what} {name}", a, shard(b, rank, world, load_balance, dim=2),
                          shard(c, rank, world, load_balance, dim=2), dtype)


def _cp_ranks(rank, world):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.experimental import context_parallel

    # PyTorch alone: no handler for the CPU flash operator. (The error is
    # caught inside the block: PyTorch 2.10's context_parallel leaves its
    # replacement of F.scaled_dot_product_attention behind when an exception
    # leaves the block.)
    q = torch.randn(1, 2, 4 * world, 8)
    with context_parallel(init_device_mesh("cpu", (world,)), buffers=[q], buffer_seq_dims=[2]):
        with pytest.raises(NotImplementedError,
                           match="_scaled_dot_product_flash_attention_for_cpu"):
            F.scaled_dot_product_attention(q, q, q, is_causal=True)
    attention.activate_flash_attention_impl("flashsdpa")
    try:
        for case in CP_CASES if world == 2 else CP_CASES[:2]:
            _check_pytorch_cp(rank, world, *case)
        # with the patch on too: the patch hands DTensors to PyTorch's function
        flashsdpa.enable()
        try:
            _check_pytorch_cp(rank, world, *CP_CASES[0], fallbacks={"dtensor": 1})
        finally:
            flashsdpa.disable()
    finally:
        _aten.restore()
    for balance, causal, dtype in ((True, True, torch.bfloat16), (False, False, torch.float16)):
        _check_pytorch_ring_with_cuda_overrides(rank, world, balance, causal, dtype)


@pytest.mark.parametrize("world", [2, 3])
def test_pytorch_context_parallel_on_cpu(world):
    run_ranks(_cp_ranks, world)


def test_handlers_only_while_active():
    from torch.distributed.tensor.experimental._context_parallel import _attention as cp

    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
    assert op not in cp.custom_ops
    attention.activate_flash_attention_impl("flashsdpa")
    assert op in cp.custom_ops and _aten.is_active()
    _aten.restore()
    assert op not in cp.custom_ops


def _activate_inside_context(rank, world):
    """Activating inside a context_parallel block serves the calls after it;
    restoring inside it brings back PyTorch's own behaviour (its error)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.experimental import context_parallel

    q = torch.randn(1, 2, 4 * world, 8)
    with context_parallel(init_device_mesh("cpu", (world,)), buffers=[q], buffer_seq_dims=[2]):
        attention.activate_flash_attention_impl("flashsdpa")
        try:
            F.scaled_dot_product_attention(q, q, q, is_causal=True)
        finally:
            _aten.restore()
        assert flashsdpa.stats()["dispatched_via_context_parallel"] == 1
        with pytest.raises(NotImplementedError, match="sharding strategy"):
            F.scaled_dot_product_attention(q, q, q, is_causal=True)


def test_activate_inside_context_parallel():
    run_ranks(_activate_inside_context, 2)


def test_missing_handler_table_is_logged(monkeypatch, caplog):
    from torch.distributed.tensor.experimental._context_parallel import _attention as cp

    monkeypatch.delattr(cp, "custom_ops")
    with caplog.at_level(logging.INFO, logger="flashsdpa"):
        assert _context_parallel.install() is None
    assert "custom_ops" in caplog.text


@pytest.mark.skipif("cuda" not in DEVICES, reason="no CUDA device / CUDA backend")
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_context_parallel_reaches_flashsdpa(causal):
    """One GPU, one NCCL rank: context_parallel's DTensor handler calls aten's
    CUDA flash operator, which is flashsdpa's while active."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.experimental import context_parallel
    from torch.distributed.tensor.experimental._attention import _cp_options

    old = _cp_options.enable_load_balance
    _cp_options.enable_load_balance = causal  # PyTorch's ring balances causal attention only
    dist.init_process_group("nccl", store=dist.HashStore(), rank=0, world_size=1)
    try:
        q, k, v, dout = (t.cuda().bfloat16() for t in _inputs(1, 4, 4, 400))
        pt, ref = _reference(q.cpu().float(), k.cpu().float(), v.cpu().float(),
                             dout.cpu().float(), causal, torch.bfloat16)
        attention.activate_flash_attention_impl("flashsdpa")
        try:
            with flash_first("cuda"), context_parallel(
                    init_device_mesh("cuda", (1,)), buffers=[q, k, v, dout],
                    buffer_seq_dims=[2, 2, 2, 2], no_restore_buffers={q, k, v, dout}):
                for t in (q, k, v):
                    t.requires_grad_()
                out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                out.backward(dout)
        finally:
            _aten.restore()
        st = flashsdpa.stats()
        assert st["dispatched_via_aten"] >= 1 and st["backward"] >= 1, st
        assert st["fallback_total"] == 0, st
        for name, a, b, c in zip(["out", "dq", "dk", "dv"], [out, q.grad, k.grad, v.grad], pt, ref):
            assert_close_rule(name, a, b, c, torch.bfloat16)
    finally:
        dist.destroy_process_group()
        _cp_options.enable_load_balance = old
