"""merge_attn_states: the attention result over the union of two disjoint key
sets from the results over each (cascade attention, split-KV, context
parallelism), by their natural-log log-sum-exps."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from . import _C, _ops

__all__ = ["merge_attn_states"]


def _lse_as_out_rows(lse: Tensor, out: Tensor, name: str) -> Tensor:
    """A view of a FlashAttention-layout lse whose dims follow out's leading
    dims: lse ``(B, H, S)`` for out ``(B, S, H, D)``, lse ``(H, T)`` for the
    varlen out ``(T, H, D)``."""
    if not isinstance(lse, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(lse).__name__}")
    if out.dim() not in (3, 4):
        raise ValueError(f"out: expected (B, S, H, D) or (total, H, D), got shape "
                         f"{tuple(out.shape)}")
    view = lse.transpose(-1, -2)
    if view.shape != out.shape[:-1]:
        want = (tuple(out.shape[:-3]) + (out.shape[-2], out.shape[-3]))
        raise ValueError(f"{name}: shape {tuple(lse.shape)}, expected {want} (heads before "
                         f"tokens, as flash_attn_* return it)")
    return view


def merge_attn_states(out_a: Tensor, lse_a: Tensor, out_b: Tensor,
                      lse_b: Tensor) -> Tuple[Tensor, Tensor]:
    """Merges two attention results over disjoint key sets into the result over
    their union: ``lse = log(exp(lse_a) + exp(lse_b))``, ``out = exp(lse_a - lse)
    * out_a + exp(lse_b - lse) * out_b``.

    Layouts as :func:`flash_attn_func` / :func:`flash_attn_with_kvcache` return
    them: ``out`` ``(B, S, H, Dv)`` with ``lse`` ``(B, H, S)``, or the varlen
    ``out`` ``(total, H, Dv)`` with ``lse`` ``(H, total)``; lse in natural log,
    float32; any strides. A part with ``lse = -inf`` (nothing attended)
    contributes nothing; both ``-inf`` give ``out`` 0 and ``lse`` ``-inf``, never
    NaN. Returns new ``(out, lse)`` in the same layouts. CPU (and CUDA, whose
    kernel is not yet tested on a GPU)."""
    for name, t in (("out_a", out_a), ("out_b", out_b)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    la = _lse_as_out_rows(lse_a, out_a, "lse_a")
    lb = _lse_as_out_rows(lse_b, out_b, "lse_b")
    out = torch.empty_like(out_a, memory_format=torch.contiguous_format)
    lse = torch.empty_like(lse_a, memory_format=torch.contiguous_format)
    dl = _ops._dl
    with torch.no_grad(), _ops._guard(out_a.device):
        _C.merge_attn_states(dl(out_a.detach()), dl(la.detach()), dl(out_b.detach()),
                             dl(lb.detach()), dl(out), dl(lse.transpose(-1, -2)),
                             _ops._stream(out_a))
    return out, lse
