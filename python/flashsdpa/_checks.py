"""Checks of the Python-only arguments (scalars, window tuples, cu_seqlens)
before they reach the C ABI, whose own validation names the tensor arguments.
Each error names the argument, like the C ABI's messages."""
from __future__ import annotations

import math
import numbers
from typing import Optional, Tuple

import torch
from torch import Tensor


def real(name: str, x, *, optional: bool = False) -> Optional[float]:
    """x as a Python float; TypeError unless a real number (not bool/str)."""
    if type(x) is float:  # the common case, before the slower ABC checks below
        return x
    if x is None and optional:
        return None
    if isinstance(x, Tensor) and x.numel() == 1 and not x.dtype.is_complex:
        x = x.item()
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        want = "a real number or None" if optional else "a real number"
        raise TypeError(f"{name}: expected {want}, got {type(x).__name__} {x!r}")
    return float(x)


def scale(x) -> Optional[float]:
    s = real("scale", x, optional=True)
    if s is not None and not math.isfinite(s):
        raise ValueError(f"scale: must be finite, got {s}")
    return s


def dropout_p(x) -> float:
    p = real("dropout_p", x)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout_p: {p} is outside [0, 1)")
    if p >= 1.0 - 2.0**-25:  # rounds to 1.0 in float32, the kernels' precision
        raise ValueError(f"dropout_p: {p!r} rounds to 1.0 in float32, the precision the kernels "
                         "use; it must be below 1 - 2**-25")
    return p


def integer(name: str, x) -> int:
    if type(x) is int:  # the common case, before the slower ABC checks below
        return x
    if isinstance(x, Tensor) and x.numel() == 1 and not x.is_floating_point():
        x = x.item()
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(x).__name__} {x!r}")
    return int(x)


def window(window_size) -> Tuple[int, int]:
    """(left, right) with -1 for unbounded (any negative number means unbounded)."""
    if type(window_size) is tuple and len(window_size) == 2:  # the common case, in short
        wl, wr = window_size
        if type(wl) is int and type(wr) is int:
            return (-1 if wl < 0 else wl), (-1 if wr < 0 else wr)
    try:
        n = len(window_size)
    except TypeError:
        raise TypeError(f"window_size: expected a pair (left, right), got "
                        f"{type(window_size).__name__}") from None
    if n != 2:
        raise ValueError(f"window_size: expected a pair (left, right), got {n} values "
                         f"{tuple(window_size)!r}")
    wl, wr = (integer("window_size", x) for x in window_size)
    return (-1 if wl < 0 else wl), (-1 if wr < 0 else wr)


def cu_seqlens(name: str, c, q: Tensor) -> Tensor:
    """A 1-D int32 tensor on q's device. int64 (what cumsum returns) is
    converted when its values fit int32."""
    if not isinstance(c, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(c).__name__}")
    if c.device != q.device:
        raise ValueError(f"{name}: is on device {c.device}, expected q's device {q.device}")
    if c.dim() != 1:
        raise ValueError(f"{name}: expected rank 1 (B + 1 prefix sums), got {c.dim()}")
    if c.dtype == torch.int64:
        if c.numel() and (int(c.min()) < 0 or int(c.max()) > torch.iinfo(torch.int32).max):
            raise ValueError(f"{name}: int64 values outside the int32 range")
        return c.to(torch.int32)
    if c.dtype != torch.int32:
        raise TypeError(f"{name}: dtype {str(c.dtype).replace('torch.', '')} is not supported; "
                        "expected int32 (or int64, converted)")
    return c
