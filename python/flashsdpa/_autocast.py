"""PyTorch's autocast policy for ``scaled_dot_product_attention``.

aten lists SDPA as a ``lower_precision_fp`` op for autocast on CUDA and CPU:
inside ``torch.autocast(device, dtype)`` every floating-point tensor argument
on that device, except float64 ones, is cast to the autocast dtype (a bool
mask is left alone), so the result has that dtype. The patched SDPA is a
Python function that autocast does not see, so it applies the same policy
itself. Casting is differentiable: fp32 inputs get fp32 gradients.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor


def _cast(t: Optional[Tensor], device_type: str, dtype: torch.dtype) -> Optional[Tensor]:
    if (isinstance(t, Tensor) and t.device.type == device_type and t.is_floating_point()
            and t.dtype != torch.float64 and t.dtype != dtype):
        return t.to(dtype)
    return t


# Whether autocast is on for any device: one call, where asking for query's
# device reads its type first (~0.5 us of every small call when it is off).
_any_autocast = getattr(torch._C, "_is_any_autocast_enabled", lambda: True)


def autocast_sdpa_args(query, key, value, attn_mask) -> Tuple:
    """(query, key, value, attn_mask) cast as aten's autocast casts SDPA's
    arguments when autocast is on for query's device type; unchanged otherwise."""
    if not _any_autocast() or not isinstance(query, Tensor):
        return query, key, value, attn_mask
    device_type = query.device.type
    if device_type not in ("cpu", "cuda") or not torch.is_autocast_enabled(device_type):
        return query, key, value, attn_mask
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(_cast(t, device_type, dtype) for t in (query, key, value, attn_mask))
