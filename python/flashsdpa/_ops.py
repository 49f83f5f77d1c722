"""The two PyTorch operators, ``flashsdpa::fwd`` and ``flashsdpa::bwd``.

They are ``torch.library.custom_op``s with fake (meta) implementations and an
autograd formula, so they work in eager mode, under ``torch.compile`` (no graph
breaks) and pass ``torch.library.opcheck``. The kernels write into outputs
allocated here with ``torch.empty``; every tensor crosses into C++ through
DLPack (no copies, strides kept).

Tensors are in the C ABI's logical layout: padded ``[B, H, S, D]`` (any
strides, so a transposed ``[B, S, H, D]`` tensor is passed as a view) or, when
``cu_seqlens_q``/``cu_seqlens_k`` are given, varlen ``[total, H, D]``.
"""
# No `from __future__ import annotations` here: torch.library.custom_op infers
# the schema from the kernels' annotations, and PyTorch 2.4 cannot read them
# as strings ("Parameter q has unsupported type Tensor").
import contextlib
import math
import threading
from collections import Counter
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor
from torch.utils.dlpack import to_dlpack

from . import _C, _checks

__all__ = ["fwd", "call_fwd", "bwd", "register_device_runner", "device_available", "counters"]

# ---------------------------------------------------------------------------
# Runtime counters (read by flashsdpa.stats()). They are incremented by the
# real kernels' launchers, so calls from compiled graphs are counted too.
_lock = threading.Lock()
counters: Counter = Counter()


def _count(*keys: str) -> None:
    with _lock:
        for key in keys:
            counters[key] += 1


def _count_dispatched(device_key: str) -> None:
    # `_count("dispatched", device_key)` unrolled: every forward pays it.
    with _lock:
        counters["dispatched"] += 1
        counters[device_key] += 1


def _count_backward() -> None:
    with _lock:
        counters["backward"] += 1


# ---------------------------------------------------------------------------
# Devices. CPU and CUDA tensors go straight to the C ABI (their DLPack device
# selects the backend). Other PyTorch devices need a *runner*: a pair of
# functions (forward, backward) with the signatures of `_c_forward` and
# `_c_backward` below. This is the hook for the Metal backend: PyTorch does
# not export MPS tensors through DLPack, so the MPS path registers its own
# runner with `register_device_runner("mps", fwd, bwd)`; until then MPS calls
# are not supported (the SDPA patch falls back with "device:mps-unavailable").

_DL_DEVICE = {"cpu": _C.DL_CPU, "cuda": _C.DL_CUDA}
_runners: Dict[str, Tuple[Callable, Callable]] = {}
_available: Dict[str, bool] = {}
_unsupported: Dict[str, Callable] = {}


def register_device_runner(device_type: str, forward: Callable, backward: Callable,
                           unsupported: Optional[Callable] = None) -> None:
    """Registers the launchers for a PyTorch device type without a DLPack path.

    ``forward(params, q, k, v, out, lse, mask, alibi_slopes, cu_seqlens_q,
    cu_seqlens_k, device)`` and ``backward(params, dout, q, k, v, out, lse, dq,
    dk, dv, mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k, device)`` take the
    ``flashsdpa._C.Params`` and torch tensors, and write the outputs in place.
    Both also take, as keywords and only when set, the KV-cache tensors
    (``seqused_k``, ``cache_batch_idx``, ``cache_leftpad``, ``block_table``;
    forward only) and the block-sparse lists (``kv_num_blocks``,
    ``kv_indices``, ``kv_block_mask``, ``full_kv_num_blocks``,
    ``full_kv_indices``), named as in ``flashsdpa._C.forward``.
    ``unsupported()``, if given, returns ``(reason, message)`` while the runner
    cannot run (the SDPA patch then falls back, counted under ``reason``), else
    None. A runner that finds out only when called raises a RuntimeError with a
    ``fallback_reason`` attribute before it launches anything.
    """
    _runners[device_type] = (forward, backward)
    if unsupported is not None:
        _unsupported[device_type] = unsupported
    else:
        _unsupported.pop(device_type, None)
    _available.pop(device_type, None)
    _devices.clear()


def device_available(device_type: str) -> bool:
    """True if flashsdpa can run on this PyTorch device type here and now."""
    ok = _available.get(device_type)
    if ok is None:
        if device_type in _runners:
            ok = True
        elif device_type in _DL_DEVICE:
            ok = bool(_C.device_available(_DL_DEVICE[device_type]))
            if device_type == "cuda":
                ok = ok and torch.cuda.is_available()
        else:
            ok = False
        _available[device_type] = ok
    return ok


def device_unsupported(device_type: str) -> Optional[Tuple[str, str]]:
    """(fallback reason, message) if this device's runner cannot run now, else None."""
    check = _unsupported.get(device_type)
    return None if check is None else check()


class _Device:
    """What every call on one torch.device looks up, resolved on its first
    call (`device_info`): reading ``device.type`` alone costs ~0.2 us, and a
    small call used to do it a dozen times. Registering a runner clears them."""

    __slots__ = ("type", "available", "unsupported", "run_fwd", "run_bwd", "dispatched_key",
                 "check_finite", "c_abi", "device")

    def __init__(self, device: torch.device):
        self.type = t = device.type
        self.available = device_available(t)
        self.unsupported = _unsupported.get(t)  # called per call: its answer may change
        r = _runners.get(t)
        self.c_abi = r is None and t in _DL_DEVICE
        if r is None and self.c_abi:
            r = (_c_forward, _c_backward)
        self.run_fwd, self.run_bwd = r if r is not None else (None, None)
        self.dispatched_key = "dispatched:" + t
        self.check_finite = t == "cpu"  # default_check_finite
        self.device = device


_devices: Dict[torch.device, _Device] = {}


def device_info(device: torch.device) -> _Device:
    """The device's `_Device` record (cached per device)."""
    d = _devices.get(device)
    if d is None:
        d = _devices[device] = _Device(device)
    return d


def _stream(t: Tensor) -> int:
    # The raw handle of the current stream, without building a Stream object.
    if t.is_cuda:
        return torch._C._cuda_getCurrentRawStream(t.get_device())
    return 0


_NO_GUARD = contextlib.nullcontext()


def _guard(device: torch.device):
    # PyTorch exports CUDA tensors through DLPack only from their own device;
    # switching costs a context manager and two device exchanges, so only
    # when the tensors are on another device than the current one. (A CUDA
    # tensor exists, so CUDA is initialised: no torch.cuda.current_device().)
    if device.type != "cuda" or device.index == torch._C._cuda_getDevice():
        return _NO_GUARD
    return torch.cuda.device(device)


def _dl(t: Optional[Tensor]):
    # A DLPack capsule: `torch.utils.dlpack.to_dlpack` costs ~0.3 us where
    # the `__dlpack__` protocol nanobind would call costs ~2 us per tensor,
    # a fifth of a small decode step. The kernels run on the stream passed
    # explicitly, which is the producer's current stream.
    return None if t is None else to_dlpack(t)


def _c_forward(params, q, k, v, out, lse, mask, alibi, cu_q, cu_k, device, **extra):
    # lse may be None (the C ABI then does not write it). CUDA tensors are
    # exported under their device's guard and run on its current stream;
    # CPU calls skip both (a `with` and two device reads: ~1 us of a small
    # call).
    if q.is_cuda:
        with _guard(device):
            _c_forward_here(params, q, k, v, out, lse, mask, alibi, cu_q, cu_k, _stream(q), extra)
    else:
        _c_forward_here(params, q, k, v, out, lse, mask, alibi, cu_q, cu_k, 0, extra)


def _c_forward_here(params, q, k, v, out, lse, mask, alibi, cu_q, cu_k, stream, extra):
    dl = to_dlpack
    if extra:
        extra = {n: _dl(t) for n, t in extra.items()}
    _C.forward(params, dl(q), dl(k), dl(v), dl(out), None if lse is None else dl(lse),
               None if mask is None else dl(mask), None if alibi is None else dl(alibi),
               None if cu_q is None else dl(cu_q), None if cu_k is None else dl(cu_k), stream,
               **extra)


def _c_backward(params, dout, q, k, v, out, lse, dq, dk, dv, mask, alibi, cu_q, cu_k, device,
                **extra):
    if q.is_cuda:
        with _guard(device):
            _c_backward_here(params, dout, q, k, v, out, lse, dq, dk, dv, mask, alibi, cu_q, cu_k,
                             _stream(q), extra)
    else:
        _c_backward_here(params, dout, q, k, v, out, lse, dq, dk, dv, mask, alibi, cu_q, cu_k, 0,
                         extra)


def _c_backward_here(params, dout, q, k, v, out, lse, dq, dk, dv, mask, alibi, cu_q, cu_k, stream,
                     extra):
    dl = to_dlpack
    if extra:
        extra = {n: _dl(t) for n, t in extra.items()}
    _C.backward(params, dl(dout), dl(q), dl(k), dl(v), dl(out), dl(lse), dl(dq), dl(dk), dl(dv),
                None if mask is None else dl(mask), None if alibi is None else dl(alibi),
                None if cu_q is None else dl(cu_q), None if cu_k is None else dl(cu_k), stream,
                **extra)


def has_runner(device: torch.device) -> bool:
    """True if a registered runner (not the C ABI's DLPack path) serves this device."""
    return device.type in _runners


def default_check_finite(device: torch.device) -> bool:
    """The direct APIs scan inputs for NaN/Inf (raising ValueError) on the CPU,
    where it is cheap. On GPUs the scan would cost a stream synchronisation per
    call (and break CUDA-graph capture), so there it is off."""
    return device_info(device).check_finite


def _runner(device: torch.device) -> Tuple[Callable, Callable]:
    r = _runners.get(device.type)
    if r is not None:
        return r
    if device.type in _DL_DEVICE:
        return _c_forward, _c_backward
    raise RuntimeError(
        f"flashsdpa: no backend for device '{device.type}' in this build "
        f"(compiled in: {_C.backends()})"
    )


_params_cache: Dict[tuple, "_C.Params"] = {}


def _params(
    scale: Optional[float],
    causal: bool,
    bottom_right: bool,
    window_left: int,
    window_right: int,
    softcap: float,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float,
    rng: Optional[Tensor],
    deterministic: bool,
    check_finite: bool,
) -> "_C.Params":
    """The call's fsdpa_params. Without dropout the object depends on the
    scalars alone and is reused (building one costs a dozen attribute sets:
    a few us of a small call's host time); nobody mutates it afterwards."""
    key = None
    if dropout_p <= 0.0:
        key = (scale, causal, bottom_right, window_left, window_right, softcap, max_seqlen_q,
               max_seqlen_k, deterministic, check_finite)
        p = _params_cache.get(key)
        if p is not None:
            return p
    p = _C.Params()
    scale = _checks.scale(scale)
    dropout_p = _checks.dropout_p(dropout_p)
    if scale is not None:
        p.scale = scale
    p.causal = bool(causal)
    p.align = _C.ALIGN_BOTTOM_RIGHT if bottom_right else _C.ALIGN_TOP_LEFT
    p.window_left = int(window_left)
    p.window_right = int(window_right)
    p.softcap = float(softcap)
    p.max_seqlen_q = int(max_seqlen_q)
    p.max_seqlen_k = int(max_seqlen_k)
    p.dropout_p = float(dropout_p)
    if dropout_p > 0.0:
        if rng is None:
            raise ValueError("flashsdpa: dropout_p > 0 needs a seed/offset tensor")
        seed, offset = (int(x) for x in rng.tolist())
        p.seed = seed & 0xFFFFFFFFFFFFFFFF
        p.offset = offset & 0xFFFFFFFFFFFFFFFF
    p.deterministic = bool(deterministic)
    p.check_finite = bool(check_finite)
    if key is not None:
        if len(_params_cache) > 256:  # varlen calls bring many max_seqlen values
            _params_cache.clear()
        _params_cache[key] = p
    return p


def _d(t: Optional[Tensor]) -> Optional[Tensor]:
    # Registered runners get tensors without autograd history, and the
    # `__dlpack__` protocol refuses tensors that require grad. The C ABI's
    # launchers need no detach: `to_dlpack` exports them (PyTorch 2.4-2.13),
    # and a detach costs ~0.6 us per tensor of a small autograd call.
    return t.detach() if t is not None and t.requires_grad else t


def _out_shapes(q: Tensor, v: Tensor, varlen: bool, out_bshd: bool, need_lse: bool = True):
    """(out, lse) allocated for q's problem; shared by the real and fake impls.
    lse is None when not needed (the C ABI then does not write it)."""
    dv = v.shape[-1]
    if varlen:
        total, hq = q.shape[:2]
        out = q.new_empty((total, hq, dv))
    else:
        b, hq, sq = q.shape[:3]
        if out_bshd:  # a [B, S, H, Dv] buffer seen as [B, H, S, Dv]
            out = q.new_empty_strided((b, hq, sq, dv), (sq * hq * dv, dv, hq * dv, 1))
        else:
            out = q.new_empty((b, hq, sq, dv))
    return out, (_new_lse(q, varlen) if need_lse else None)


def _new_lse(q: Tensor, varlen: bool) -> Tensor:
    if varlen:
        total, hq = q.shape[:2]
        return q.new_empty((hq, total), dtype=torch.float32)
    return q.new_empty(q.shape[:3], dtype=torch.float32)


# ---------------------------------------------------------------------------
# forward


def _fwd_kernel(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Optional[Tensor],
    alibi_slopes: Optional[Tensor],
    cu_seqlens_q: Optional[Tensor],
    cu_seqlens_k: Optional[Tensor],
    max_seqlen_q: int,
    max_seqlen_k: int,
    scale: Optional[float],
    causal: bool,
    bottom_right: bool,
    window_left: int,
    window_right: int,
    softcap: float,
    dropout_p: float,
    rng: Optional[Tensor],
    deterministic: bool,
    check_finite: bool,
    out_bshd: bool,
) -> Tuple[Tensor, Tensor]:
    """Attention forward. Returns (out, lse); lse is float32."""
    out, lse, _, _ = _forward(q, k, v, mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k,
                              max_seqlen_q, max_seqlen_k, scale, causal, bottom_right, window_left,
                              window_right, softcap, dropout_p, rng, deterministic, check_finite,
                              out_bshd)
    return out, lse


def _forward(q, k, v, mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
             scale, causal, bottom_right, window_left, window_right, softcap, dropout_p, rng,
             deterministic, check_finite, out_bshd, need_lse=True, out=None):
    """`_fwd_kernel`, also returning the call's params and device record (the
    backward reuses them). Without ``need_lse`` the C ABI's devices skip the
    lse (None is returned); registered runners always get one. ``out``: a
    buffer to write instead of a new one (of `_out_shapes`' shape)."""
    device = q.device
    dev = device_info(device)
    if dev.run_fwd is None:
        _runner(device)  # raises: no backend for this device
    if out is None:
        out, lse = _out_shapes(q, v, cu_seqlens_q is not None, out_bshd,
                               need_lse or not dev.c_abi)
    else:
        lse = _new_lse(q, cu_seqlens_q is not None)
    p = _params(scale, causal, bottom_right, window_left, window_right, softcap,
                max_seqlen_q, max_seqlen_k, dropout_p, rng, deterministic, check_finite)
    if not dev.c_abi:
        q, k, v, mask, alibi_slopes = _d(q), _d(k), _d(v), _d(mask), _d(alibi_slopes)
    dev.run_fwd(p, q, k, v, out, lse, mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k, device)
    _count_dispatched(dev.dispatched_key)
    return out, lse, p, dev


fwd = torch.library.custom_op("flashsdpa::fwd", mutates_args=())(_fwd_kernel)


_is_compiling = torch.compiler.is_compiling
_torch_function_modes = torch._C._len_torch_function_stack
_torch_dispatch_modes = torch._C._len_torch_dispatch_stack
_functorch_active = torch._C._are_functorch_transforms_active


def _eager_call(tensors) -> bool:
    """True in plain eager mode: plain tensors, no torch.compile, no torch
    function/dispatch modes or functorch transforms watching. Then the call
    can skip the torch.library dispatcher (and, with autograd, its
    autograd wrapper) without anyone noticing."""
    if (_is_compiling() or _torch_function_modes() or _torch_dispatch_modes()
            or _functorch_active()):
        return False
    for t in tensors:  # a loop: all() over a generator costs twice as much
        if t is not None and type(t) is not Tensor:
            return False
    return True


def _plain_eager_call(tensors) -> bool:
    """Eager mode (`_eager_call`) and no autograd graph to record."""
    if not _eager_call(tensors):
        return False
    grad = torch.is_grad_enabled()
    return not any(t is not None and grad and t.requires_grad for t in tensors)


def call_fwd(q, k, v, mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k, *scalars, need_lse=True,
             bshd=False):
    """``fwd``, skipping the dispatcher when that changes nothing. Without
    autograd the kernel is called directly (the dispatcher costs about 30 us
    per call on a CPU: inference-time decode steps are dominated by it); with
    autograd, through `_EagerAttention`, a plain ``torch.autograd.Function``
    with the same formula as the operator's ``register_autograd``. Issue 18
    measured a B1 H1 S128 D64 fwd+bwd at 723 us against FLASH's 108 us on an
    H100, the host stalling ~600 us around the backward; on the development
    machine's profile the operator's autograd wrapper spent most of a small
    call's host time in torch/_library/utils.py ``fill_defaults`` (it walks
    the 20-argument schema quadratically), and it materialised the unused
    lse gradient as a zero tensor (bench/RESULTS.md, issue 18).

    ``need_lse=False``: the caller ignores lse, so a call without autograd
    may skip computing it and return None in its place (the operator and
    the autograd path always return it).

    ``bshd=True``: q, k, v come in FlashAttention's (B, S, H, D) and out is
    returned so (the scalars' out_bshd stores it that way); the operator
    sees (B, H, S, D) views as always. With autograd the views are taken
    inside the autograd node: as graph nodes of their own, the four
    transposes cost more host time than a small problem's attention."""
    if _eager_call((q, k, v, mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k)):
        if torch.is_grad_enabled() and (
                q.requires_grad or k.requires_grad or v.requires_grad
                or (alibi_slopes is not None and alibi_slopes.requires_grad)
                or (mask is not None and mask.requires_grad)):
            # The scalars travel as one tuple: autograd.Function.apply costs
            # about 0.5 us per argument (functorch inspects each one).
            return _apply_eager_attention(q, k, v, mask, alibi_slopes, cu_seqlens_q,
                                          cu_seqlens_k, scalars, bshd)
        if bshd:
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        out, lse, _, _ = _forward(q, k, v, mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k,
                                  *scalars, need_lse)
    else:
        if bshd:
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        out, lse = fwd(q, k, v, mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k, *scalars)
    return (out.transpose(1, 2) if bshd else out), lse


@fwd.register_fake
def _fwd_fake(q, k, v, mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
              max_seqlen_k, scale, causal, bottom_right, window_left, window_right, softcap,
              dropout_p, rng, deterministic, check_finite, out_bshd):
    return _out_shapes(q, v, cu_seqlens_q is not None, out_bshd)


# ---------------------------------------------------------------------------
# backward


def _bwd_kernel(
    dout: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    mask: Optional[Tensor],
    alibi_slopes: Optional[Tensor],
    cu_seqlens_q: Optional[Tensor],
    cu_seqlens_k: Optional[Tensor],
    max_seqlen_q: int,
    max_seqlen_k: int,
    scale: Optional[float],
    causal: bool,
    bottom_right: bool,
    window_left: int,
    window_right: int,
    softcap: float,
    dropout_p: float,
    rng: Optional[Tensor],
    deterministic: bool,
    check_finite: bool,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Attention backward: (dq, dk, dv), dk/dv already reduced to k's head count."""
    dev = device_info(q.device)
    if dev.run_bwd is None:
        _runner(q.device)  # raises: no backend for this device
    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    p = _params(scale, causal, bottom_right, window_left, window_right, softcap,
                max_seqlen_q, max_seqlen_k, dropout_p, rng, deterministic, check_finite)
    dev.run_bwd(p, _d(dout), _d(q), _d(k), _d(v), _d(out), _d(lse), dq, dk, dv, _d(mask),
                _d(alibi_slopes), cu_seqlens_q, cu_seqlens_k, dev.device)
    _count_backward()
    return dq, dk, dv


bwd = torch.library.custom_op("flashsdpa::bwd", mutates_args=())(_bwd_kernel)


@bwd.register_fake
def _bwd_fake(dout, q, k, v, out, lse, *args):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


# ---------------------------------------------------------------------------
# autograd: the backward regenerates the dropout mask from the saved seed.

_N_FWD_ARGS = 20


def _setup_context(ctx, inputs, output):
    (q, k, v, mask, alibi, cu_q, cu_k, max_q, max_k, scale, causal, bottom_right, wl, wr,
     softcap, dropout_p, rng, deterministic, check_finite, _out_bshd) = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, mask, alibi, cu_q, cu_k, rng)
    ctx.scalars = (max_q, max_k, scale, causal, bottom_right, wl, wr, softcap, dropout_p,
                   deterministic, check_finite)
    ctx.mark_non_differentiable(lse)


def _backward(ctx, dout, _dlse):
    q, k, v, out, lse, mask, alibi, cu_q, cu_k, rng = ctx.saved_tensors
    (max_q, max_k, scale, causal, bottom_right, wl, wr, softcap, dropout_p, deterministic,
     check_finite) = ctx.scalars
    dq, dk, dv = bwd(dout, q, k, v, out, lse, mask, alibi, cu_q, cu_k, max_q, max_k, scale,
                     causal, bottom_right, wl, wr, softcap, dropout_p, rng, deterministic,
                     check_finite)
    return (dq, dk, dv) + (None,) * (_N_FWD_ARGS - 3)


fwd.register_autograd(_backward, setup_context=_setup_context)


class _EagerAttention(torch.autograd.Function):
    """The operator's autograd formula (`_setup_context`, `_backward`) as a
    plain autograd.Function for eager calls (`call_fwd`): same kernels, same
    saved tensors. The host work of a small call is what users of short
    sequences pay on every step, so both directions go straight to the
    launchers: the forward's params object and device record (launchers,
    device) are kept on ctx (no second lookup), the C ABI's devices take the
    inputs as they are (no detach, `_d`), the lse output is not
    differentiable and its gradient is never materialised."""

    @staticmethod
    def forward(ctx, q, k, v, mask, alibi, cu_q, cu_k, scalars, bshd):
        ctx.set_materialize_grads(False)
        out = kernel_out = None
        if bshd:
            # call_fwd(bshd=True): the kernels see (B, H, S, D) views, taken
            # here where autograd does not record them. The output is a
            # (B, S, H, Dv) tensor of its own, not a view (autograd forbids
            # in-place changes of a view made inside a Function, which users
            # of the transposed output could make before), saved as itself
            # (a saved view of an output would keep its node alive).
            b, sq, hq, _ = q.shape
            out = q.new_empty((b, sq, hq, v.shape[-1]))
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            kernel_out = out.transpose(1, 2)
        kernel_out, lse, ctx.params, ctx.dev = _forward(q, k, v, mask, alibi, cu_q, cu_k,
                                                        *scalars, True, kernel_out)
        if not bshd:
            out = kernel_out
        ctx.save_for_backward(q, k, v, out, lse, mask, alibi, cu_q, cu_k)
        ctx.mark_non_differentiable(lse)
        ctx.bshd = bshd
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        if dout is None:
            return (None,) * 9
        q, k, v, out, lse, mask, alibi, cu_q, cu_k = ctx.saved_tensors
        if ctx.bshd:
            out, dout = out.transpose(1, 2), dout.transpose(1, 2)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        dev = ctx.dev
        if not dev.c_abi:  # as in _forward
            dout, q, k, v, mask, alibi = _d(dout), _d(q), _d(k), _d(v), _d(mask), _d(alibi)
        dev.run_bwd(ctx.params, dout, q, k, v, out, lse, dq, dk, dv, mask, alibi, cu_q, cu_k,
                    dev.device)
        _count_backward()
        if ctx.bshd:
            dq, dk, dv = dq.transpose(1, 2), dk.transpose(1, 2), dv.transpose(1, 2)
        return dq, dk, dv, None, None, None, None, None, None


def _apply_eager_attention(q, k, v, mask, alibi, cu_q, cu_k, scalars, bshd):
    """``_EagerAttention.apply`` for `call_fwd`, which has checked that no
    functorch transform is active: then ``autograd.Function.apply`` (Python)
    only unwraps dead functorch wrappers and calls the C++ apply, but spends
    ~3 us of a small call getting there (a closure, a signature check, a
    generator over every argument); this does the same two steps."""
    if _c_apply is None:  # a PyTorch without the two entry points
        return _EagerAttention.apply(q, k, v, mask, alibi, cu_q, cu_k, scalars, bshd)
    u = _unwrap_if_dead
    return _c_apply(u(q), u(k), u(v), None if mask is None else u(mask),
                    None if alibi is None else u(alibi), None if cu_q is None else u(cu_q),
                    None if cu_k is None else u(cu_k), scalars, bshd)


# The C++ Function.apply under torch.autograd.Function's Python one, bound to
# _EagerAttention, and functorch's unwrap of one argument.
_c_apply = getattr(super(torch.autograd.Function, _EagerAttention), "apply", None)
_unwrap_if_dead = getattr(getattr(torch._C, "_functorch", None), "unwrap_if_dead", None)
if _unwrap_if_dead is None:
    _c_apply = None


def new_rng(dropout_p: float) -> Optional[Tensor]:
    """Seed and offset for one dropout call, drawn from PyTorch's default CPU
    generator (so ``torch.manual_seed`` makes runs reproducible). No random
    numbers are consumed when ``dropout_p == 0``."""
    if dropout_p == 0.0 and type(dropout_p) in (float, int):
        return None
    if _checks.dropout_p(dropout_p) <= 0.0:
        return None
    return torch.randint(0, 2**62, (2,), dtype=torch.int64, device="cpu")
