"""``flashsdpa.explain``: what a call would run, and why (the C ABI's
``fsdpa_explain``)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _C, _ops


def explain(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Optional[Tensor] = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: Optional[float] = None,
    enable_gqa: bool = False,
    backward: bool = False,
    deterministic: bool = False,
) -> str:
    """The plan that :func:`flashsdpa.scaled_dot_product_attention` would run
    for these arguments (its forward, or with ``backward=True`` its backward):
    the backend, the kernel family, tiles, key splits and workspace bytes, and
    the reason for each choice, e.g. why the Hopper kernels do or do not take
    the call. Arguments as for ``scaled_dot_product_attention``; nothing runs
    on the device and the tensors' values are not read. Raises what the call
    would raise for invalid arguments (or for an unsatisfiable
    ``FLASHSDPA_CUDA_FORCE`` override)."""
    del enable_gqa  # the C ABI infers GQA from the head counts
    q, k, v, m = query, key, value, attn_mask
    if q.dim() == 3:
        q, k, v = q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)
        if m is not None and m.dim() == 3:
            m = m.unsqueeze(1)
    if m is not None and m.dim() == 1:
        m = m.unsqueeze(0)
    if q.device.type not in ("cpu", "cuda"):
        raise RuntimeError(f"flashsdpa.explain: no plan to explain for device '{q.device.type}'")
    rng = torch.zeros(2, dtype=torch.int64) if dropout_p > 0.0 else None
    p = _ops._params(scale, is_causal, False, -1, -1, 0.0, 0, 0, dropout_p, rng, deterministic,
                     _ops.default_check_finite(q.device))
    d = _ops._d
    out, lse = _ops._out_shapes(q, v, False, True)
    grads = {}
    if backward:
        grads = dict(dout=torch.empty_like(out), dq=torch.empty_like(q), dk=torch.empty_like(k),
                     dv=torch.empty_like(v))
    with _ops._guard(q.device):
        return _C.explain(p, bool(backward), d(q), d(k), d(v), out, lse, mask=d(m), **grads)
