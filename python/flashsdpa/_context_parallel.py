"""PyTorch's own context parallelism (``torch.distributed.tensor.experimental.context_parallel``)
while the ``flashsdpa`` flash-attention implementation is active.

``context_parallel`` turns q, k, v into DTensors sharded on the sequence
(``Shard(2)``) and lets DTensor's dispatcher send aten's attention operators
to handlers of its own (``custom_ops`` in
``torch/distributed/tensor/experimental/_context_parallel/_attention.py``,
installed into ``DTensor._op_dispatcher._custom_op_handlers`` on entry).

* CUDA: those handlers run PyTorch's ring (``_templated_ring_attention``),
  which calls ``aten._scaled_dot_product_flash_attention`` and its backward
  once per block on plain local tensors: the registry's CUDA overrides
  (``_aten.py``), so each block runs on flashsdpa with nothing to add here.
* CPU: PyTorch's table (torch 2.13) lists only the CUDA flash, efficient and
  cuDNN operators, and DTensor has no sharding strategy for
  ``aten._scaled_dot_product_flash_attention_for_cpu``, so on CPU
  ``context_parallel`` fails with ``NotImplementedError: Operator
  aten._scaled_dot_product_flash_attention_for_cpu.default does not have a
  sharding strategy registered`` (with or without flashsdpa). While flashsdpa
  is active this module adds handlers for that operator and its backward to
  the same table: they run :mod:`flashsdpa.distributed`'s ring over the
  mesh's process group, in the layout ``context_parallel`` sharded the
  buffers in (its head-tail load balancer is flashsdpa's zigzag layout:
  chunks r and 2W-1-r; without it, contiguous slices).

The table is private PyTorch state: :func:`install` checks that it exists and
logs why not otherwise (the CPU route is then PyTorch's error, as without
flashsdpa). ``context_parallel`` copies the table into DTensor's dispatcher
on entry, so activating or restoring inside a ``context_parallel`` block
also edits that live copy.
"""
from __future__ import annotations

import logging
from typing import Callable, Dict, Optional

import torch
from torch import Tensor

from . import _ops

logger = logging.getLogger("flashsdpa")

_CP_MODULE = "torch.distributed.tensor.experimental._context_parallel._attention"


def _cp_module():
    """PyTorch's context-parallel module if it has the handler table, else None (logged)."""
    import importlib

    try:
        if not torch.distributed.is_available():
            raise ImportError("torch.distributed is not available in this build")
        mod = importlib.import_module(_CP_MODULE)
    except ImportError as e:
        logger.info("flashsdpa: PyTorch's context_parallel is not reached on CPU: %s", e)
        return None
    if not isinstance(getattr(mod, "custom_ops", None), dict) or not hasattr(mod, "_cp_options"):
        logger.info("flashsdpa: PyTorch %s's context_parallel has no handler table "
                    "(%s.custom_ops); it is not reached on CPU", torch.__version__, _CP_MODULE)
        return None
    return mod


def _local_shards(op_name: str, tensors: Dict[str, Tensor]):
    """(mesh, {name: local tensor}) of DTensors sharded along dim 2 (the sequence) on one
    1-D mesh; NotImplementedError naming the argument otherwise."""
    from torch.distributed.tensor import DTensor, Shard

    mesh, local = None, {}
    for name, t in tensors.items():
        if not isinstance(t, DTensor):
            raise NotImplementedError(f"{name}: context parallelism through flashsdpa ({op_name}) "
                                      "expects a DTensor")
        if t.device_mesh.ndim != 1 or tuple(t.placements) != (Shard(2),):
            raise NotImplementedError(
                f"{name}: context parallelism through flashsdpa ({op_name}) expects a 1-D "
                f"mesh and placements (Shard(2),), got {tuple(t.placements)}")
        if mesh is None:
            mesh = t.device_mesh
        elif t.device_mesh != mesh:
            raise NotImplementedError(f"{name}: on another device mesh than query")
        local[name] = t.to_local()
    return mesh, local


def _unsupported(op_name: str, dropout_p: float, attn_mask: Optional[Tensor]) -> None:
    if attn_mask is not None:
        raise NotImplementedError(f"attn_mask: context parallelism through flashsdpa ({op_name}) "
                                  "supports is_causal, not explicit masks")
    if dropout_p:
        raise NotImplementedError(f"dropout_p: context parallelism through flashsdpa ({op_name}) "
                                  "has no dropout (the CPU backward operator gets no RNG state)")


def _layout_and_window(mod, is_causal: bool):
    from .distributed import _Layout

    zigzag = bool(mod._cp_options.enable_load_balance)  # head-tail == zigzag
    return _Layout(zigzag=zigzag), ((-1, 0) if is_causal else (-1, -1))


def _bshd(t: Tensor) -> Tensor:
    return t.transpose(1, 2)


def _shard2(t: Tensor, mesh):
    from torch.distributed.tensor import DTensor, Shard

    return DTensor.from_local(t, mesh, [Shard(2)], run_check=False)


def _forward_handler(mod) -> Callable:
    from .distributed import ring_forward

    def handler(op_call, args, kwargs):
        def bind(query, key, value, dropout_p=0.0, is_causal=False, *, attn_mask=None,
                 scale=None):
            return query, key, value, dropout_p, is_causal, attn_mask, scale

        query, key, value, dropout_p, is_causal, attn_mask, scale = bind(*args, **kwargs)
        _unsupported(str(op_call), dropout_p, attn_mask)
        mesh, loc = _local_shards(str(op_call), {"query": query, "key": key, "value": value})
        layout, window = _layout_and_window(mod, is_causal)
        q = loc["query"]
        out, lse = ring_forward(_bshd(q), _bshd(loc["key"]), _bshd(loc["value"]), scale, window,
                                layout, mesh.get_group())
        _ops._count("dispatched_via_context_parallel")
        # aten's meta: out in the layout of query, lse [B, H, L] over a [B, L, H] buffer
        out_aten = torch.empty_like(q).copy_(_bshd(out))
        b, h, lq = q.shape[:3]
        lse_aten = q.new_empty((b, lq, h), dtype=torch.float32).transpose(1, 2).copy_(lse)
        return _shard2(out_aten, mesh), _shard2(lse_aten, mesh)

    return handler


def _backward_handler(mod) -> Callable:
    from .distributed import ring_backward

    def handler(op_call, args, kwargs):
        def bind(grad_out, query, key, value, out, logsumexp, dropout_p, is_causal, *,
                 attn_mask=None, scale=None):
            return (grad_out, query, key, value, out, logsumexp, dropout_p, is_causal,
                    attn_mask, scale)

        (grad_out, query, key, value, out, logsumexp, dropout_p, is_causal, attn_mask,
         scale) = bind(*args, **kwargs)
        _unsupported(str(op_call), dropout_p, attn_mask)
        mesh, loc = _local_shards(str(op_call), {
            "grad_out": grad_out, "query": query, "key": key, "value": value, "out": out,
            "logsumexp": logsumexp})
        layout, window = _layout_and_window(mod, is_causal)
        dq, dk, dv = ring_backward(*(_bshd(loc[n]) for n in ("grad_out", "query", "key", "value",
                                                               "out")),
                                   loc["logsumexp"], scale, window,
                                   torch.are_deterministic_algorithms_enabled(), layout,
                                   mesh.get_group())
        # aten's meta: CPU gradients are [B, L, H, E] in memory, i.e. ours transposed
        return tuple(_shard2(_bshd(g), mesh) for g in (dq, dk, dv))

    return handler


_OPS = ("_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_flash_attention_for_cpu_backward")


def install() -> Optional[Callable[[], None]]:
    """Adds the CPU handlers to PyTorch's context-parallel table; returns the
    function that removes them, or None (logged) where that table is missing."""
    if not all(hasattr(torch.ops.aten, op) for op in _OPS):
        return None
    mod = _cp_module()
    if mod is None:
        return None
    fwd_op = getattr(torch.ops.aten, _OPS[0]).default
    bwd_op = getattr(torch.ops.aten, _OPS[1]).default
    added = {fwd_op: _forward_handler(mod), bwd_op: _backward_handler(mod)}
    mod.custom_ops.update(added)
    live = _live_table(mod)
    if live is not None:  # activated inside a context_parallel block
        live.update(added)

    def remove() -> None:
        for table in (mod.custom_ops, _live_table(mod)):
            for op, fn in added.items():
                if table is not None and table.get(op) is fn:
                    del table[op]

    return remove


def _live_table(mod) -> Optional[dict]:
    """DTensor's handler table while context_parallel is entered (it copies
    ``custom_ops`` there on entry), else None."""
    try:
        from torch.distributed.tensor import DTensor

        live = DTensor._op_dispatcher._custom_op_handlers
    except (ImportError, AttributeError):
        return None
    handler = getattr(mod, "_sdpa_handler", None)
    if not isinstance(live, dict) or not any(h is handler for h in live.values()):
        return None
    return live
