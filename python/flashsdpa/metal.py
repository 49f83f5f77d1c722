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
   ``src/metal/kernels/fsdpa_metal_args.h``. Nothing here waits for the GPU:
   the argument block goes in by ``setBytes`` (see :func:`_args_words`), the
   placeholder buffer is allocated once per device, and no value is read
   back (tests/metal/mps_emu/test_metal_mps_emu.py fails on any blocking
   copy or synchronisation in this path).

Where the kernels cannot run as compiled, calls fall back with a reason in
``flashsdpa.stats()["fallbacks"]`` (:func:`unsupported`):
``"device:mps-fast-math"`` when ``PYTORCH_MPS_FAST_MATH`` makes PyTorch
compile them with fast math (which may fold the kernels' ``-INFINITY`` tests
for masked and empty rows), and ``"device:mps-gpu-mismatch"`` when a compiled
kernel breaks the kernels' assumptions (32-wide simdgroups, the planner's
threadgroup size, 32 KiB of threadgroup memory).

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
import struct
import subprocess
import threading
from typing import Dict, List, Optional, Sequence, Tuple

import torch

__all__ = ["available", "register", "gpu_family", "clear_cache", "library_cache_size"]

# Buffer indices (src/metal/kernels/fsdpa_metal_args.h).
BUF_ARGS, BUF_Q, BUF_K, BUF_V, BUF_OUT, BUF_LSE, BUF_MASK, BUF_ALIBI = 0, 1, 2, 3, 4, 5, 6, 7
BUF_CU_Q, BUF_CU_K, BUF_DOUT, BUF_SCRATCH, BUF_DQ, BUF_DK, BUF_DV = 8, 9, 10, 11, 12, 13, 14
BUF_SEQUSED_K, BUF_CACHE_BATCH_IDX, BUF_CACHE_LEFTPAD, BUF_BLOCK_TABLE = 15, 16, 17, 18
BUF_KV_NUM, BUF_KV_IDX, BUF_FULL_NUM, BUF_FULL_IDX, BUF_SPARSE_MASK, BUF_SPARSE_STATE = 19, 20, 21, 22, 23, 24
NUM_BUFFERS = 25

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

# Fallback reasons (flashsdpa.stats()["fallbacks"]).
FAST_MATH = "device:mps-fast-math"
GPU_MISMATCH = "device:mps-gpu-mismatch"


class Unsupported(RuntimeError):
    """The MPS kernels cannot run here; ``fallback_reason`` is the stats() key
    under which the SDPA patch falls back to PyTorch (flashsdpa/_patch.py)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.fallback_reason = reason


# What every kernel assumes of the GPU (fsdpa_attention.metal): 32-lane
# simdgroups and at most 32 KiB of static threadgroup memory.
SIMD_WIDTH = 32
THREADGROUP_MEMORY_BYTES = 32 * 1024

_lock = threading.Lock()
_libraries: Dict[str, object] = {}  # key -> compiled library (torch.mps.compile_shader)
_checked: Dict[Tuple[str, str], int] = {}  # (key, kernel) -> max threads per threadgroup, once checked
_dummies: Dict[torch.device, torch.Tensor] = {}  # per device: bound at the indices a call leaves empty
_gpu_mismatch: Optional[Tuple[str, str]] = None  # (reason, message) once a kernel failed its checks
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


def fast_math_requested() -> bool:
    """True if ``PYTORCH_MPS_FAST_MATH`` makes PyTorch compile shaders with fast math.

    PyTorch reads it as an integer (``std::stoi(val) != 0``); a value that is
    not an integer counts as set, to be safe."""
    val = os.environ.get("PYTORCH_MPS_FAST_MATH")
    if val is None or val.strip() == "":
        return False
    try:
        return int(val.strip()) != 0
    except ValueError:
        return True


def unsupported() -> Optional[Tuple[str, str]]:
    """(fallback reason, message) if the MPS kernels must not run here, else None.

    Checked before every call by the SDPA patch (flashsdpa._ops)."""
    if fast_math_requested():
        return (FAST_MATH,
                "flashsdpa (mps): PYTORCH_MPS_FAST_MATH is set, so PyTorch would compile the kernels "
                "with fast math, which breaks their -INFINITY tests (masked and empty rows); unset it")
    return _gpu_mismatch


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
    global _gpu_mismatch
    with _lock:
        _libraries.clear()
        _checked.clear()
        _dummies.clear()
        _gpu_mismatch = None


def library_cache_size() -> int:
    with _lock:
        return len(_libraries)


def _args_words(args: bytes) -> List[int]:
    """The argument block as compile_shader binds it: a list of Python ints.

    PyTorch binds a list of ints as ``std::vector<int64_t>`` and passes it with
    ``setBytes`` (torch/csrc/mps/Module.cpp), so the struct's bytes read as
    little-endian int64 words arrive unchanged at ``[[buffer(0)]]`` without a
    tensor, a host-to-device copy or a wait (FsdpaMetalArgs' size is a multiple
    of 8, plan.cpp asserts it)."""
    if len(args) % 8:
        raise RuntimeError(f"flashsdpa (mps): argument block of {len(args)} bytes is not whole int64 words")
    return list(struct.unpack(f"<{len(args) // 8}q", args))


def _dummy(device: torch.device) -> torch.Tensor:
    """16 bytes bound at the buffer indices a call leaves empty; one per device."""
    t = _dummies.get(device)
    if t is None:
        t = _dummies[device] = torch.empty(16, dtype=torch.uint8, device=device)
    return t


def _kernel(lib, key: str, name: str, threads: int):
    """The kernel `name` of a library, checked once against the kernels' GPU assumptions."""
    global _gpu_mismatch
    fn = getattr(lib, name)
    limit = _checked.get((key, name))
    if limit is None:
        width = int(fn.thread_execution_width)
        limit = int(fn.max_threads_per_threadgroup)
        tg_mem = int(fn.static_thread_group_memory_length)
        problem = None
        if width != SIMD_WIDTH:
            problem = f"runs {width}-wide simdgroups; the kernels need {SIMD_WIDTH}"
        elif tg_mem > THREADGROUP_MEMORY_BYTES:
            problem = f"declares {tg_mem} bytes of threadgroup memory, more than {THREADGROUP_MEMORY_BYTES}"
        if problem is not None:
            _gpu_mismatch = (GPU_MISMATCH, f"flashsdpa (mps): kernel {name} of {key} {problem}")
            raise Unsupported(*_gpu_mismatch)
        _checked[(key, name)] = limit
    if threads > limit:
        _gpu_mismatch = (GPU_MISMATCH, f"flashsdpa (mps): kernel {name} of {key} needs {threads} threads "
                                       f"per threadgroup, the compiled pipeline allows {limit}")
        raise Unsupported(*_gpu_mismatch)
    return fn


def _run(plan, buffers: List[Optional[torch.Tensor]], device: torch.device) -> None:
    """Runs a planned call: every dispatch with all NUM_BUFFERS buffers bound in index order.

    Never waits for the GPU: everything bound is either a tensor already on
    the device or the argument block, which goes in by setBytes."""
    lib = _library(plan.key, plan.source)
    if plan.scratch_elements > 0:  # float32 scratch: Delta (backward) or split-decode partials (forward)
        buffers[BUF_SCRATCH] = torch.empty(int(plan.scratch_elements), dtype=torch.float32, device=device)
    if getattr(plan, "sparse_state_elements", 0) > 0:  # int32 scratch: the expanded block-sparse lists
        buffers[BUF_SPARSE_STATE] = torch.empty(int(plan.sparse_state_elements), dtype=torch.int32, device=device)
    dummy = _dummy(device)
    bound = [_args_words(plan.args)] + [b if b is not None else dummy for b in buffers[1:]]
    kernels = [(_kernel(lib, plan.key, name, int(t[0]) * int(t[1]) * int(t[2])), grid, t)
               for name, grid, t in zip(plan.kernels, plan.grid, plan.threads)]  # all checked before any runs
    for fn, grid, threads in kernels:
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
           "dk": BUF_DK, "dv": BUF_DV, "seqused_k": BUF_SEQUSED_K,
           "cache_batch_idx": BUF_CACHE_BATCH_IDX, "cache_leftpad": BUF_CACHE_LEFTPAD,
           "block_table": BUF_BLOCK_TABLE, "kv_num_blocks": BUF_KV_NUM, "kv_indices": BUF_KV_IDX,
           "full_kv_num_blocks": BUF_FULL_NUM, "full_kv_indices": BUF_FULL_IDX,
           "kv_block_mask": BUF_SPARSE_MASK}
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


def _check_supported() -> None:
    why = unsupported()
    if why is not None:
        raise Unsupported(*why)


def forward(params, q, k, v, out, lse, mask, alibi, cu_q, cu_k, device, **extra) -> None:
    """Runner of flashsdpa::fwd for mps tensors (signature of _ops.register_device_runner;
    ``extra``: the KV-cache tensors and block-sparse lists, by their C ABI names)."""
    _check_supported()
    _check_finite(params, q=q, k=k, v=v)
    bufs = _buffers(q=q, k=k, v=v, out=out, lse=lse, mask=mask, alibi=alibi, cu_q=cu_q, cu_k=cu_k,
                    **extra)
    _run(_plan(False, params, bufs), bufs, q.device)


def backward(params, dout, q, k, v, out, lse, dq, dk, dv, mask, alibi, cu_q, cu_k, device,
             **extra) -> None:
    """Runner of flashsdpa::bwd for mps tensors (``extra``: the block-sparse lists)."""
    _check_supported()
    _check_finite(params, q=q, k=k, v=v, dout=dout)
    bufs = _buffers(q=q, k=k, v=v, out=out, lse=lse, mask=mask, alibi=alibi, cu_q=cu_q, cu_k=cu_k,
                    dout=dout, dq=dq, dk=dk, dv=dv, **extra)
    _run(_plan(True, params, bufs), bufs, q.device)


def register() -> bool:
    """Registers the MPS runners with the operators if this machine can run them."""
    if not available():
        return False
    from . import _ops

    _ops.register_device_runner("mps", forward, backward, unsupported=unsupported)
    return True


# flashsdpa/__init__.py imports this module when present; registering here
# makes mps tensors dispatch to the Metal kernels.
register()
