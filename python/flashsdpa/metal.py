"""The Metal (Apple GPU) path of flashsdpa for PyTorch ``mps`` tensors.

PyTorch does not export MPS tensors through DLPack, so MPS calls do not go
through the C ABI. Instead this module

1. describes the tensors (dtype, shape, strides) to the C++ planner through
   ``flashsdpa._C.metal_plan`` (``src/metal/bridge.h``), which validates the
   call exactly like the C ABI and returns the specialisation key, the
   complete MSL source of that specialisation, the dispatches in order and
   the argument block;
2. compiles the source once per key with ``torch.mps.compile_shader``
   (PyTorch >= 2.7) and caches the library;
3. runs the dispatches on PyTorch's own MPS stream (``compile_shader``
   kernels encode there), binding every tensor at the buffer index of
   ``src/metal/kernels/fsdpa_metal_args.h``.

It plugs into the operators with ``flashsdpa._ops.register_device_runner``
(see :func:`register`). When MPS, ``compile_shader`` or the planner binding is
missing, :func:`available` is False, nothing is registered, and the SDPA patch
falls back to stock PyTorch (counted in ``flashsdpa.stats()``).

Status: verified on the MSL emulator only (the kernels and the C++ planner);
this module's MPS dispatch has not run on Apple hardware yet -- see
docs/metal.md.
"""
from __future__ import annotations

import os
import re
import subprocess
import threading
from typing import Dict, List, Optional, Sequence

import torch

__all__ = ["available", "register", "gpu_family", "clear_cache", "library_cache_size"]

# Buffer indices (src/metal/kernels/fsdpa_metal_args.h).
BUF_ARGS, BUF_Q, BUF_K, BUF_V, BUF_OUT, BUF_LSE, BUF_MASK, BUF_ALIBI = 0, 1, 2, 3, 4, 5, 6, 7
BUF_CU_Q, BUF_CU_K, BUF_DOUT, BUF_SCRATCH, BUF_DQ, BUF_DK, BUF_DV = 8, 9, 10, 11, 12, 13, 14
NUM_BUFFERS = 15

# Dtype codes of metal::TensorDesc.
_DTYPE_CODE = {
    torch.float32: 0,
    torch.float16: 1,
    torch.bfloat16: 2,
    torch.float64: 3,
    torch.bool: 4,
    torch.uint8: 4,
    torch.int32: 5,
}

_lock = threading.Lock()
_libraries: Dict[str, object] = {}  # key -> compiled library (torch.mps.compile_shader)
_family: Optional[int] = None


def _C():
    from . import _C as c  # the nanobind extension

    return c


def available() -> bool:
    """True if MPS, torch.mps.compile_shader and the planner binding are all here."""
    try:
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            return False
        if not hasattr(torch.mps, "compile_shader"):
            return False  # PyTorch < 2.7
        return hasattr(_C(), "metal_plan")
    except Exception:
        return False


def gpu_family() -> int:
    """MTLGPUFamilyApple generation the tile table is chosen for: 7 (M1), 8 (M2), 9 (M3/M4).

    ``FLASHSDPA_METAL_FAMILY`` overrides the detection (from the CPU brand string)."""
    global _family
    if _family is None:
        env = os.environ.get("FLASHSDPA_METAL_FAMILY")
        fam = 7
        if env:
            fam = int(env)
        else:
            try:
                brand = subprocess.run(
                    ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5
                ).stdout
                m = re.search(r"Apple M(\d+)", brand)
                if m:
                    gen = int(m.group(1))
                    fam = 7 if gen <= 1 else 8 if gen == 2 else 9
            except Exception:
                pass
        _family = fam
    return _family


def _desc(t: Optional[torch.Tensor]):
    """(present, dtype code, shape, strides) of a tensor, as metal::TensorDesc."""
    if t is None:
        return (False, 0, [], [])
    if t.dtype not in _DTYPE_CODE:
        raise TypeError(f"flashsdpa (mps): unsupported dtype {t.dtype}")
    return (True, _DTYPE_CODE[t.dtype], list(t.shape), list(t.stride()))


def _library(key: str, source: str):
    with _lock:
        lib = _libraries.get(key)
        if lib is None:
            lib = torch.mps.compile_shader(source)
            _libraries[key] = lib
        return lib


def clear_cache() -> None:
    with _lock:
        _libraries.clear()


def library_cache_size() -> int:
    with _lock:
        return len(_libraries)


def _run(plan, buffers: List[Optional[torch.Tensor]], device: torch.device) -> None:
    """Runs a planned call: every dispatch with all NUM_BUFFERS buffers bound in index order."""
    lib = _library(plan.key, plan.source)
    if plan.scratch_elements > 0:  # float32 scratch: Delta (backward) or split-decode partials (forward)
        buffers[BUF_SCRATCH] = torch.empty(int(plan.scratch_elements), dtype=torch.float32, device=device)
    args = torch.frombuffer(bytearray(plan.args), dtype=torch.uint8).to(device)
    dummy = torch.empty(16, dtype=torch.uint8, device=device)
    bound = [args] + [b if b is not None else dummy for b in buffers[1:]]
    for name, grid, threads in zip(plan.kernels, plan.grid, plan.threads):
        fn = getattr(lib, name)
        # compile_shader dispatches *threads* (dispatchThreads); whole
        # threadgroups of `group_size` give the planner's threadgroup grid.
        total = tuple(int(g) * int(t) for g, t in zip(grid, threads))
        fn(*bound, threads=total, group_size=tuple(int(t) for t in threads))


def _plan(backward: bool, params, buffers: Sequence[Optional[torch.Tensor]]):
    try:
        return _C().metal_plan(backward, params, [_desc(b) for b in buffers], gpu_family())
    except ValueError as e:  # the core's validation message
        raise ValueError(f"flashsdpa (mps): {e}") from None


def _buffers(**named) -> List[Optional[torch.Tensor]]:
    idx = {"q": BUF_Q, "k": BUF_K, "v": BUF_V, "out": BUF_OUT, "lse": BUF_LSE, "mask": BUF_MASK,
           "alibi": BUF_ALIBI, "cu_q": BUF_CU_Q, "cu_k": BUF_CU_K, "dout": BUF_DOUT, "dq": BUF_DQ,
           "dk": BUF_DK, "dv": BUF_DV}
    out: List[Optional[torch.Tensor]] = [None] * NUM_BUFFERS
    for name, t in named.items():
        out[idx[name]] = None if t is None else t.detach()
    return out


def _check_finite(params, **named) -> None:
    """params.check_finite on the device (the C++ bridge cannot read MPS memory)."""
    if not params.check_finite:
        return
    for name, t in named.items():
        if t is not None and not bool(torch.isfinite(t).all()):
            raise ValueError(f"flashsdpa (mps): {name}: contains a non-finite value (NaN or Inf)")


def forward(params, q, k, v, out, lse, mask, alibi, cu_q, cu_k, device) -> None:
    """Runner of flashsdpa::fwd for mps tensors (signature of _ops.register_device_runner)."""
    _check_finite(params, q=q, k=k, v=v)
    bufs = _buffers(q=q, k=k, v=v, out=out, lse=lse, mask=mask, alibi=alibi, cu_q=cu_q, cu_k=cu_k)
    _run(_plan(False, params, bufs), bufs, q.device)


def backward(params, dout, q, k, v, out, lse, dq, dk, dv, mask, alibi, cu_q, cu_k, device) -> None:
    """Runner of flashsdpa::bwd for mps tensors."""
    _check_finite(params, q=q, k=k, v=v, dout=dout)
    bufs = _buffers(q=q, k=k, v=v, out=out, lse=lse, mask=mask, alibi=alibi, cu_q=cu_q, cu_k=cu_k,
                    dout=dout, dq=dq, dk=dk, dv=dv)
    _run(_plan(True, params, bufs), bufs, q.device)


def register() -> bool:
    """Registers the MPS runners with the operators if this machine can run them."""
    if not available():
        return False
    from . import _ops

    _ops.register_device_runner("mps", forward, backward)
    return True


# flashsdpa/__init__.py imports this module when present; registering here
# makes mps tensors dispatch to the Metal kernels.
register()
