"""flashsdpa as PyTorch's flash-attention implementation (``torch.nn.attention``'s registry).

Importing flashsdpa registers an implementation named ``"flashsdpa"`` with
``torch.nn.attention.register_flash_attention_impl`` (PyTorch >= 2.10) and
does not activate it (PyTorch's rule, so providers coexist).
``torch.nn.attention.activate_flash_attention_impl("flashsdpa")`` then
replaces the kernels of aten's flash-attention operators, so every route that
ends in them reaches flashsdpa: ``F.scaled_dot_product_attention`` however it
was imported, ``torch.ops.aten`` calls, ``sdpa_kernel(FLASH_ATTENTION)``,
torch.compile graphs, and PyTorch's ``context_parallel`` (on CUDA through
these operators, on CPU through handlers ``_context_parallel.py`` adds);
``restore_flash_attention_impl()`` removes every override.

The registry only calls our ``register_fn``; what that function overrides is
up to the provider. FlashAttention-3/4 override the CUDA kernels; we override
those (when this build has the CUDA backend and PyTorch has CUDA) and the CPU
ones (``_scaled_dot_product_flash_attention_for_cpu`` and its backward), through
one ``torch.library.Library("aten", "IMPL")`` whose destruction restores aten's.

Each override returns aten's exact output tuple (shapes, dtypes and strides of
aten's meta functions, so compiled graphs see what they traced). A call
flashsdpa cannot serve goes to the kernel the override replaced (fetched with
``torch.library.get_kernel`` before overriding), counted in ``stats()`` under
``fallbacks`` with an ``aten:`` reason.
"""
from __future__ import annotations

import logging
import warnings
from typing import Callable, Dict, List, Optional

import torch
from torch import Tensor

from . import _api, _context_parallel, _ops, _patch

__all__ = ["IMPL_NAME", "register", "restore", "is_active"]

logger = logging.getLogger("flashsdpa")

IMPL_NAME = "flashsdpa"

_active: Dict[str, object] = {"handle": None}


def is_active() -> bool:
    """True while the ``flashsdpa`` implementation overrides aten's flash kernels."""
    return _active["handle"] is not None


# ---------------------------------------------------------------------------
# helpers


def _fallback(original, reason: str, keyset, *args, **kwargs):
    _patch.note_fallback("aten:" + reason, to="aten's own flash-attention kernel")
    return original.call_boxed(keyset, *args, **kwargs)


def _why_not(query: Tensor, key: Tensor, value: Tensor, attn_mask: Optional[Tensor],
             dropout_p: float, needs_rng_in_backward: bool) -> Optional[str]:
    """Why flashsdpa cannot compute this aten flash call (None = it can)."""
    mask = attn_mask.detach() if attn_mask is not None else None
    why = _api.check_sdpa(query, key, value, mask, dropout_p, False, True)
    if why is not None:
        return why.reason
    if query.dim() != 4:
        return "rank"
    if query.numel() == 0 or key.numel() == 0 or value.numel() == 0:
        return "empty"
    if dropout_p > 0.0 and needs_rng_in_backward:
        # The CPU backward op receives no RNG state: its dropout mask could not
        # be regenerated (aten never selects its CPU flash kernel with dropout).
        return "dropout_without_rng_state"
    return None


def _params(scale, causal, bottom_right, window_left, window_right, dropout_p, rng):
    return _ops._params(scale, causal, bottom_right,
                        -1 if window_left is None else int(window_left),
                        -1 if window_right is None else int(window_right),
                        0.0, 0, 0, dropout_p, rng, torch.are_deterministic_algorithms_enabled(),
                        False)


def _launch_fwd(p, q, k, v, out, lse, mask=None, alibi=None, cu_q=None, cu_k=None) -> None:
    run_fwd, _ = _ops._runner(q.device)
    run_fwd(p, q, k, v, out, lse, mask, alibi, cu_q, cu_k, q.device)
    _ops._count("dispatched", "dispatched:" + q.device.type, "dispatched_via_aten")


def _launch_bwd(p, dout, q, k, v, out, lse, dq, dk, dv, mask=None, cu_q=None, cu_k=None) -> None:
    _, run_bwd = _ops._runner(q.device)
    run_bwd(p, dout, q, k, v, out, lse, dq, dk, dv, mask, None, cu_q, cu_k, q.device)
    _ops._count("backward")


# ---------------------------------------------------------------------------
# CPU: aten::_scaled_dot_product_flash_attention_for_cpu and its backward.
# query [B, H, L, E] (any strides), top-left causal (PyTorch's SDPA semantics),
# a float mask (aten converts bool masks before the call) added to the scores.


def _cpu_forward(original):
    def impl(keyset, query, key, value, dropout_p=0.0, is_causal=False, *, attn_mask=None,
             scale=None):
        why = _why_not(query, key, value, attn_mask, dropout_p, True)
        if why is not None:
            return _fallback(original, why, keyset, query, key, value, dropout_p, is_causal,
                             attn_mask=attn_mask, scale=scale)
        b, h, lq = query.shape[:3]
        out = torch.empty_like(query)  # aten's meta: the layout of query
        lse = query.new_empty((b, lq, h), dtype=torch.float32).transpose(1, 2)
        _launch_fwd(_params(scale, is_causal, False, None, None, 0.0, None),
                    query, key, value, out, lse, mask=attn_mask)
        return out, lse
    return impl


def _cpu_backward(original):
    def impl(keyset, grad_out, query, key, value, out, logsumexp, dropout_p, is_causal, *,
             attn_mask=None, scale=None):
        why = _why_not(query, key, value, attn_mask, dropout_p, True)
        if why is not None:
            return _fallback(original, why, keyset, grad_out, query, key, value, out, logsumexp,
                             dropout_p, is_causal, attn_mask=attn_mask, scale=scale)
        # aten's meta: CPU gradients are [B, L, H, E] in memory
        dq, dk, dv = (torch.empty_permuted(t.shape, (0, 2, 1, 3), dtype=t.dtype, device=t.device)
                      for t in (query, key, value))
        _launch_bwd(_params(scale, is_causal, False, None, None, 0.0, None),
                    grad_out, query, key, value, out, logsumexp, dq, dk, dv, mask=attn_mask)
        return dq, dk, dv
    return impl


# ---------------------------------------------------------------------------
# CUDA: the ops FlashAttention-3/4 replace. FlashAttention-2 semantics: causal
# and windows aligned to the bottom right; _flash_attention_* take [B, S, H, D]
# (or varlen [total, H, D] with cum_seq_*), _scaled_dot_product_flash_* take
# [B, H, S, D]. rng_state carries flashsdpa's dropout (seed, offset) as uint64.

_FA2_DTYPES = (torch.float16, torch.bfloat16)


def _cuda_why_not(query, key, value, dropout_p, return_debug_mask, seqused_k=None,
                  alibi_slopes=None, block_table=None) -> Optional[str]:
    if return_debug_mask:
        return "return_debug_mask"
    if seqused_k is not None:
        return "seqused_k"
    if block_table is not None:
        return "block_table"
    if alibi_slopes is not None:  # the aten backward op has no slopes argument
        return "alibi_slopes"
    if query.dtype not in _FA2_DTYPES:
        return f"dtype:{str(query.dtype).replace('torch.', '')}"
    if value.shape[-1] != query.shape[-1]:
        return "head_dim_v"
    nd = query.dim()
    dense = (query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)) if nd == 4 else (
        query.unsqueeze(0).transpose(1, 2), key.unsqueeze(0).transpose(1, 2),
        value.unsqueeze(0).transpose(1, 2))
    why = _api.check_sdpa(*dense, None, dropout_p, False, True)
    if why is not None:
        return why.reason
    if query.numel() == 0 or key.numel() == 0:
        return "empty"
    return None


def _rng_state(dropout_p: float, device) -> Tensor:
    rng = _ops.new_rng(dropout_p)
    if rng is None:
        return torch.zeros((2,), dtype=torch.uint64, device=device)
    return rng.to(torch.uint64).to(device)


def _rng_from_state(dropout_p: float, rng_state: Tensor) -> Optional[Tensor]:
    if dropout_p <= 0.0:
        return None
    return torch.tensor([int(x) for x in rng_state.cpu().tolist()], dtype=torch.int64)


def _flash_forward_into(out, query, key, value, cum_seq_q, cum_seq_k, max_q, max_k, dropout_p,
                        is_causal, scale, window_size_left, window_size_right, rng_state):
    """Runs FA2's _flash_attention_forward problem ([B, S, H, D] or varlen) into out."""
    varlen = cum_seq_q is not None
    p = _params(scale, is_causal, True, window_size_left, window_size_right, dropout_p,
                _rng_from_state(dropout_p, rng_state))
    if varlen:
        p.max_seqlen_q, p.max_seqlen_k = int(max_q), int(max_k)
        lse = query.new_empty((query.shape[1], query.shape[0]), dtype=torch.float32)
        _launch_fwd(p, query, key, value, out, lse, cu_q=cum_seq_q, cu_k=cum_seq_k)
    else:
        b, s, h = query.shape[:3]
        lse = query.new_empty((b, h, s), dtype=torch.float32)
        _launch_fwd(p, query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                    out.transpose(1, 2), lse)
    return lse


def _flash_attention_forward(original):
    def impl(keyset, query, key, value, cum_seq_q, cum_seq_k, max_q, max_k, dropout_p, is_causal,
             return_debug_mask, *, scale=None, window_size_left=None, window_size_right=None,
             seqused_k=None, alibi_slopes=None, block_table=None, num_splits=None):
        why = _cuda_why_not(query, key, value, dropout_p, return_debug_mask, seqused_k,
                            alibi_slopes, block_table)
        if why is not None:
            return _fallback(original, why, keyset, query, key, value, cum_seq_q, cum_seq_k,
                             max_q, max_k, dropout_p, is_causal, return_debug_mask, scale=scale,
                             window_size_left=window_size_left,
                             window_size_right=window_size_right, seqused_k=seqused_k,
                             alibi_slopes=alibi_slopes, block_table=block_table,
                             num_splits=num_splits)
        out = torch.empty_like(query)
        rng_state = _rng_state(dropout_p, query.device)
        lse = _flash_forward_into(out, query, key, value, cum_seq_q, cum_seq_k, max_q, max_k,
                                  dropout_p, is_causal, scale, window_size_left,
                                  window_size_right, rng_state)
        unused = torch.zeros((), dtype=torch.uint64, device=query.device)
        debug = query.new_empty((0,))
        return out, lse, rng_state, unused, debug
    return impl


def _flash_attention_forward_no_dropout_inplace(original):
    def impl(keyset, out, query, key, value, cum_seq_q, cum_seq_k, max_q, max_k, dropout_p,
             is_causal, return_debug_mask, *, scale=None, window_size_left=None,
             window_size_right=None, seqused_k=None, alibi_slopes=None, block_table=None,
             num_splits=None):
        why = _cuda_why_not(query, key, value, dropout_p, return_debug_mask, seqused_k,
                            alibi_slopes, block_table)
        if why is None and dropout_p != 0.0:
            why = "dropout_p"
        if why is not None:
            return _fallback(original, why, keyset, out, query, key, value, cum_seq_q,
                             cum_seq_k, max_q, max_k, dropout_p, is_causal, return_debug_mask,
                             scale=scale, window_size_left=window_size_left,
                             window_size_right=window_size_right, seqused_k=seqused_k,
                             alibi_slopes=alibi_slopes, block_table=block_table,
                             num_splits=num_splits)
        return _flash_forward_into(out, query, key, value, cum_seq_q, cum_seq_k, max_q, max_k,
                                   0.0, is_causal, scale, window_size_left, window_size_right,
                                   None)
    return impl


def _flash_backward_into(grad_out, query, key, value, out, logsumexp, cum_seq_q, cum_seq_k,
                         max_q, max_k, dropout_p, is_causal, rng_state, scale, window_size_left,
                         window_size_right, transposed):
    """FA2's backward problem; transposed: the tensors are [B, S, H, D] (else
    [B, H, S, D], or varlen)."""
    dq, dk, dv = torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)
    p = _params(scale, is_causal, True, window_size_left, window_size_right, dropout_p,
                _rng_from_state(dropout_p, rng_state))
    varlen = cum_seq_q is not None and cum_seq_q.numel() > 0
    if varlen:
        p.max_seqlen_q, p.max_seqlen_k = int(max_q), int(max_k)
        _launch_bwd(p, grad_out, query, key, value, out, logsumexp, dq, dk, dv,
                    cu_q=cum_seq_q, cu_k=cum_seq_k)
    else:
        t = (lambda x: x.transpose(1, 2)) if transposed else (lambda x: x)
        _launch_bwd(p, t(grad_out), t(query), t(key), t(value), t(out), logsumexp,
                    t(dq), t(dk), t(dv))
    return dq, dk, dv


def _flash_attention_backward(original):
    def impl(keyset, grad_out, query, key, value, out, logsumexp, cum_seq_q, cum_seq_k, max_q,
             max_k, dropout_p, is_causal, rng_state, unused, *, scale=None,
             window_size_left=None, window_size_right=None):
        why = _cuda_why_not(query, key, value, dropout_p, False)
        if why is not None:
            return _fallback(original, why, keyset, grad_out, query, key, value, out, logsumexp,
                             cum_seq_q, cum_seq_k, max_q, max_k, dropout_p, is_causal,
                             rng_state, unused, scale=scale, window_size_left=window_size_left,
                             window_size_right=window_size_right)
        return _flash_backward_into(grad_out, query, key, value, out, logsumexp, cum_seq_q,
                                    cum_seq_k, max_q, max_k, dropout_p, is_causal, rng_state,
                                    scale, window_size_left, window_size_right, True)
    return impl


def _sdpa_flash_forward(original):
    def impl(keyset, query, key, value, dropout_p=0.0, is_causal=False, return_debug_mask=False,
             *, scale=None):
        why = _cuda_why_not(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                            dropout_p, return_debug_mask)
        if why is not None:
            return _fallback(original, why, keyset, query, key, value, dropout_p, is_causal,
                             return_debug_mask, scale=scale)
        out = torch.empty_like(query)  # aten's meta: the layout of query
        rng_state = _rng_state(dropout_p, query.device)
        lse = _flash_forward_into(out.transpose(1, 2), query.transpose(1, 2),
                                  key.transpose(1, 2), value.transpose(1, 2), None, None,
                                  query.shape[2], key.shape[2], dropout_p, is_causal, scale,
                                  None, None, rng_state)
        unused = torch.zeros((), dtype=torch.uint64, device=query.device)
        return (out, lse, None, None, query.shape[2], key.shape[2], rng_state, unused,
                query.new_empty((0,)))
    return impl


def _sdpa_flash_backward(original):
    def impl(keyset, grad_out, query, key, value, out, logsumexp, cum_seq_q, cum_seq_k, max_q,
             max_k, dropout_p, is_causal, philox_seed, philox_offset, *, scale=None):
        why = _cuda_why_not(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                            dropout_p, False)
        if why is not None:
            return _fallback(original, why, keyset, grad_out, query, key, value, out, logsumexp,
                             cum_seq_q, cum_seq_k, max_q, max_k, dropout_p, is_causal,
                             philox_seed, philox_offset, scale=scale)
        return _flash_backward_into(grad_out, query, key, value, out, logsumexp, None, None,
                                    max_q, max_k, dropout_p, is_causal, philox_seed, scale,
                                    None, None, False)
    return impl


# ---------------------------------------------------------------------------
# activation

# aten op -> the factory of its override (called with the kernel it replaces)
CPU_OVERRIDES: Dict[str, Callable] = {
    "_scaled_dot_product_flash_attention_for_cpu": _cpu_forward,
    "_scaled_dot_product_flash_attention_for_cpu_backward": _cpu_backward,
}
CUDA_OVERRIDES: Dict[str, Callable] = {
    "_flash_attention_forward": _flash_attention_forward,
    "_flash_attention_forward_no_dropout_inplace": _flash_attention_forward_no_dropout_inplace,
    "_flash_attention_backward": _flash_attention_backward,
    "_scaled_dot_product_flash_attention": _sdpa_flash_forward,
    "_scaled_dot_product_flash_attention_backward": _sdpa_flash_backward,
}


def _targets() -> Dict[str, Dict[str, Callable]]:
    """{dispatch key: {op: override factory}} for the ops this PyTorch has."""
    targets = {"CPU": {op: f for op, f in CPU_OVERRIDES.items() if hasattr(torch.ops.aten, op)}}
    if torch.backends.cuda.is_built() and "cuda" in _ops._C.backends().split(","):
        targets["CUDA"] = {op: f for op, f in CUDA_OVERRIDES.items()
                           if hasattr(torch.ops.aten, op)}
    return targets


class _Handle:
    """What the registry keeps while ``flashsdpa`` is active; remove() restores aten's kernels."""

    def __init__(self, library: torch.library.Library, ops: List[str],
                 remove_cp: Optional[Callable[[], None]]):
        self.library: Optional[torch.library.Library] = library
        self.ops = ops
        self._remove_cp = remove_cp

    def remove(self) -> None:
        if self.library is not None:
            self.library._destroy()
            self.library = None
        if self._remove_cp is not None:
            self._remove_cp()
            self._remove_cp = None
        if _active["handle"] is self:
            _active["handle"] = None


def activate() -> _Handle:
    """The registry's ``register_fn``: overrides aten's flash kernels (see the module doc)."""
    if _active["handle"] is not None:  # never stack two sets of overrides
        _active["handle"].remove()
    lib = torch.library.Library("aten", "IMPL")
    ops = []
    with warnings.catch_warnings():
        # Replacing aten's kernel is the point; PyTorch warns about every override.
        warnings.filterwarnings("ignore", message="(?s).*Overriding a previously registered kernel")
        for key, overrides in _targets().items():
            for op, factory in overrides.items():
                original = torch.library.get_kernel("aten::" + op, key)
                lib.impl(op, factory(original), key, with_keyset=True)
                ops.append(f"{op}:{key}")
    # PyTorch's context_parallel on CPU has no handler for the CPU flash
    # operator: add flashsdpa's ring as one (_context_parallel.py).
    handle = _Handle(lib, ops, _context_parallel.install())
    _active["handle"] = handle
    return handle


def register() -> bool:
    """Registers ``flashsdpa`` with PyTorch's flash-attention registry (not activating it).
    Returns False, logging why, where this PyTorch has no registry.

    PyTorch 2.10 has the registry without ``restore_flash_attention_impl``:
    flashsdpa registers there too, and an activation lasts until the process
    ends (``restore`` below is what the tests use to undo it)."""
    attention = torch.nn.attention
    missing = [name for name in ("register_flash_attention_impl", "activate_flash_attention_impl")
               if not hasattr(attention, name)]
    if not missing and not hasattr(torch.library, "get_kernel"):
        missing = ["torch.library.get_kernel"]
    if missing:
        logger.info("flashsdpa: PyTorch %s has no flash-attention registry (missing %s); "
                    "the 'flashsdpa' implementation is not registered: use flashsdpa.enable()",
                    torch.__version__, ", ".join(missing))
        return False
    if not hasattr(attention, "restore_flash_attention_impl"):
        logger.info("flashsdpa: PyTorch %s has no restore_flash_attention_impl: once activated, "
                    "'flashsdpa' stays active until the process ends", torch.__version__)
    attention.register_flash_attention_impl(IMPL_NAME, register_fn=activate)
    return True


def restore() -> None:
    """PyTorch's ``restore_flash_attention_impl()`` where it exists. On 2.10,
    which lacks it: removes flashsdpa's overrides and clears the registry's
    record of the active implementation (private names of 2.10's
    ``torch.nn.attention._registry``), so a later activation installs them
    again."""
    attention = torch.nn.attention
    if hasattr(attention, "restore_flash_attention_impl"):
        attention.restore_flash_attention_impl()
        return
    if _active["handle"] is not None:
        _active["handle"].remove()
    registry = getattr(attention, "_registry", None)
    if registry is not None and getattr(registry, "_FLASH_ATTENTION_ACTIVE", None) == IMPL_NAME:
        registry._FLASH_ATTENTION_HANDLES.pop(IMPL_NAME, None)
        registry._FLASH_ATTENTION_ACTIVE = None
