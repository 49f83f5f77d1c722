"""Inference with a KV cache: FlashAttention's ``flash_attn_with_kvcache`` and
the paged / ``seqused_k`` form of ``flash_attn_varlen_func``.

The new keys and values are appended (and rotated) with torch ops: that is
O(new tokens). The attention itself reads the cache where it is, through the
C ABI's KV-cache parameters (``block_table``, ``seqused_k``,
``cache_batch_idx``, ``cache_leftpad``): no gather copy of the cache.
"""
from __future__ import annotations

import os
from typing import Literal, Optional, Tuple, Union, overload

import torch
from torch import Tensor

from . import _ops

__all__ = ["flash_attn_with_kvcache"]


def _int32_vector(name: str, t: Optional[Tensor], batch: int, device) -> Optional[Tensor]:
    if t is None:
        return None
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected an int32 torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.int32:
        raise TypeError(f"{name}: dtype must be torch.int32, got {t.dtype}")
    if t.shape != (batch,):
        raise ValueError(f"{name}: shape {tuple(t.shape)}, expected ({batch},)")
    if t.device != device:
        raise ValueError(f"{name}: is on {t.device} but q is on {device}")
    return t.contiguous()


def _check_device(q: Tensor) -> None:
    # Refusing here, before the cache is written, leaves the caller's cache
    # untouched. A device with a registered runner (MPS: flashsdpa/metal.py,
    # whose Metal kernels read the cache in place) is served by it.
    if q.device.type not in ("cpu", "cuda") and not _ops.has_runner(q.device):
        raise RuntimeError(
            f"flashsdpa: the KV-cache path (flash_attn_with_kvcache, block_table, seqused_k) "
            f"is not supported on {q.device.type} yet")


def _check_values(device: torch.device) -> bool:
    """Whether the values of the cache arguments (cache_seqlens, cache_batch_idx,
    cache_leftpad, block_table entries, rotary positions) are checked here,
    raising with the argument's name. Always on the CPU. On GPUs each check
    would be a host synchronisation per call, so there the values are the
    caller's contract, as in FlashAttention (an append outside the cache then
    fails in torch's indexing), unless the environment variable
    FLASHSDPA_CHECK_INDICES=1 turns the checks on, here and in the CUDA
    backend (every used page index; include/flashsdpa/flashsdpa.h)."""
    return device.type == "cpu" or os.environ.get("FLASHSDPA_CHECK_INDICES") == "1"


def _rotate(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool) -> Tensor:
    """Rotary embedding of the first ``2 * cos.shape[-1]`` features of x
    ``[..., S, H, D]`` with per-position ``cos``/``sin`` ``[..., S, rd / 2]``;
    computed in float32, rounded once to x's dtype (as FlashAttention does)."""
    rd = 2 * cos.shape[-1]
    xf = x.float()
    c, s = cos.float().unsqueeze(-2), sin.float().unsqueeze(-2)  # broadcast over heads
    head, rest = xf[..., :rd], xf[..., rd:]
    if interleaved:  # pairs (0, 1), (2, 3), ...
        x1, x2 = head[..., 0::2], head[..., 1::2]
        rot = torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)
    else:  # GPT-NeoX: halves
        x1, x2 = head[..., : rd // 2], head[..., rd // 2:]
        rot = torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1)
    return torch.cat((rot, rest), dim=-1).to(x.dtype)


def _rotary_at(table: Tensor, pos: Tensor, name: str) -> Tensor:
    """Rows ``pos`` (any shape, int64) of a rotary table ``[seqlen_ro, rd / 2]``."""
    if pos.numel() and _check_values(pos.device) and int(pos.max()) >= table.shape[0]:
        raise ValueError(f"{name}: has {table.shape[0]} positions, but position "
                         f"{int(pos.max())} is needed")
    return table[pos]


def _cache_slots(cache_seqlens: Tensor, s_new: int, rows: Tensor,
                 block_table: Optional[Tensor], page_size: int, num_pages: int,
                 capacity: int) -> Tuple[Tensor, Tensor]:
    """(first index, second index) into the cache of every appended token
    ``[B, s_new]``: (cache row, position) or, paged, (page, row in page)."""
    pos = cache_seqlens.long().unsqueeze(1) + torch.arange(s_new, device=cache_seqlens.device)
    check = _check_values(pos.device)
    if s_new and check and int(pos.max()) >= capacity:
        b = int(pos.max(dim=1).values.argmax())
        raise ValueError(
            f"k: appending {s_new} tokens at cache_seqlens[{b}] = {int(cache_seqlens[b])} "
            f"exceeds the cache length {capacity}")
    if block_table is None:
        return rows.long().unsqueeze(1).expand_as(pos), pos
    pages = block_table.long()[rows.long().unsqueeze(1), pos // page_size]
    bad = (pages < 0) | (pages >= num_pages) if check else None
    if check and bool(bad.any()):
        b, i = (int(x) for x in bad.nonzero()[0])
        raise ValueError(
            f"block_table: entry [{int(rows[b])}, {int(pos[b, i]) // page_size}] is "
            f"{int(pages[b, i])}, outside the page pool 0..{num_pages - 1}")
    return pages, pos % page_size


@overload
def flash_attn_with_kvcache(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, k: Optional[Tensor] = ...,
    v: Optional[Tensor] = ..., rotary_cos: Optional[Tensor] = ...,
    rotary_sin: Optional[Tensor] = ..., cache_seqlens: Optional[Union[int, Tensor]] = ...,
    cache_batch_idx: Optional[Tensor] = ..., cache_leftpad: Optional[Tensor] = ...,
    block_table: Optional[Tensor] = ..., softmax_scale: Optional[float] = ..., causal: bool = ...,
    window_size: Tuple[int, int] = ..., softcap: float = ..., rotary_interleaved: bool = ...,
    alibi_slopes: Optional[Tensor] = ..., num_splits: int = ...,
    return_softmax_lse: Literal[False] = ...,
) -> Tensor: ...
@overload
def flash_attn_with_kvcache(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, k: Optional[Tensor], v: Optional[Tensor],
    rotary_cos: Optional[Tensor], rotary_sin: Optional[Tensor],
    cache_seqlens: Optional[Union[int, Tensor]], cache_batch_idx: Optional[Tensor],
    cache_leftpad: Optional[Tensor], block_table: Optional[Tensor], softmax_scale: Optional[float],
    causal: bool, window_size: Tuple[int, int], softcap: float, rotary_interleaved: bool,
    alibi_slopes: Optional[Tensor], num_splits: int, return_softmax_lse: Literal[True],
) -> Tuple[Tensor, Tensor]: ...
@overload
def flash_attn_with_kvcache(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, k: Optional[Tensor] = ...,
    v: Optional[Tensor] = ..., rotary_cos: Optional[Tensor] = ...,
    rotary_sin: Optional[Tensor] = ..., cache_seqlens: Optional[Union[int, Tensor]] = ...,
    cache_batch_idx: Optional[Tensor] = ..., cache_leftpad: Optional[Tensor] = ...,
    block_table: Optional[Tensor] = ..., softmax_scale: Optional[float] = ..., causal: bool = ...,
    window_size: Tuple[int, int] = ..., softcap: float = ..., rotary_interleaved: bool = ...,
    alibi_slopes: Optional[Tensor] = ..., num_splits: int = ..., *,
    return_softmax_lse: Literal[True],
) -> Tuple[Tensor, Tensor]: ...
@overload
def flash_attn_with_kvcache(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, k: Optional[Tensor] = ...,
    v: Optional[Tensor] = ..., rotary_cos: Optional[Tensor] = ...,
    rotary_sin: Optional[Tensor] = ..., cache_seqlens: Optional[Union[int, Tensor]] = ...,
    cache_batch_idx: Optional[Tensor] = ..., cache_leftpad: Optional[Tensor] = ...,
    block_table: Optional[Tensor] = ..., softmax_scale: Optional[float] = ..., causal: bool = ...,
    window_size: Tuple[int, int] = ..., softcap: float = ..., rotary_interleaved: bool = ...,
    alibi_slopes: Optional[Tensor] = ..., num_splits: int = ..., return_softmax_lse: bool = ...,
) -> Union[Tensor, Tuple[Tensor, Tensor]]: ...


def flash_attn_with_kvcache(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    k: Optional[Tensor] = None,
    v: Optional[Tensor] = None,
    rotary_cos: Optional[Tensor] = None,
    rotary_sin: Optional[Tensor] = None,
    cache_seqlens: Optional[Union[int, Tensor]] = None,
    cache_batch_idx: Optional[Tensor] = None,
    cache_leftpad: Optional[Tensor] = None,
    block_table: Optional[Tensor] = None,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    window_size: Tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    rotary_interleaved: bool = True,
    alibi_slopes: Optional[Tensor] = None,
    num_splits: int = 0,
    return_softmax_lse: bool = False,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """FlashAttention's ``flash_attn_with_kvcache`` (same arguments, order and
    semantics). Inference only (no autograd).

    ``q`` ``(B, Sq, Hq, D)``; ``k_cache``/``v_cache`` ``(B_cache, S_cache, Hk, D / Dv)``,
    or with ``block_table`` (int32 ``(B, max_pages)``) the page pool
    ``(num_pages, page_size, Hk, D / Dv)`` with any ``page_size >= 1``.
    ``k``/``v`` ``(B, S_new, Hk, D / Dv)``, if given, are written into the cache
    in place at positions ``cache_seqlens[b] + i`` before attending, rotated
    first when ``rotary_cos``/``rotary_sin`` ``(seqlen_ro, rotary_dim / 2)`` are
    given (``rotary_interleaved``: pairs (0, 1), (2, 3)...; else GPT-NeoX
    halves); q is rotated at ``cache_seqlens + i`` when ``causal`` or windowed,
    else at ``cache_seqlens``. Sequence b then attends to cache positions
    ``[cache_leftpad[b], cache_seqlens[b] + S_new)`` of cache row
    ``cache_batch_idx[b]``; ``causal``/``window_size`` are bottom-right aligned.
    ``num_splits`` is accepted for compatibility (the backends split the
    keys themselves). On CPUs and CUDA GPUs (pages read in place on both); on
    GPUs the values of the cache arguments are the caller's contract unless
    ``FLASHSDPA_CHECK_INDICES=1`` (no host synchronisation per call).
    Returns ``out`` ``(B, Sq, Hq, Dv)`` and, with
    ``return_softmax_lse``, the natural-log lse ``(B, Hq, Sq)`` float32.
    """
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name}: expected rank 4, got {t.dim()}")
    _check_device(q)
    if (k is None) != (v is None):
        raise ValueError("k, v: pass both new keys and new values, or neither")
    if (rotary_cos is None) != (rotary_sin is None):
        raise ValueError("rotary_cos, rotary_sin: pass both or neither")
    if rotary_cos is not None and k is None:
        raise ValueError("rotary_cos: rotary embedding needs the new k and v to rotate")
    batch = q.shape[0]
    if block_table is not None:
        if not isinstance(block_table, Tensor) or block_table.dtype != torch.int32:
            raise TypeError("block_table: must be an int32 torch.Tensor")
        if block_table.dim() != 2:
            raise ValueError(f"block_table: expected rank 2, got {block_table.dim()}")
        capacity, n_rows = block_table.shape[1] * k_cache.shape[1], block_table.shape[0]
    else:
        capacity, n_rows = k_cache.shape[1], k_cache.shape[0]
    if isinstance(cache_seqlens, int):
        cache_seqlens = torch.full((batch,), cache_seqlens, dtype=torch.int32, device=q.device)
    cache_seqlens = _int32_vector("cache_seqlens", cache_seqlens, batch, q.device)
    cache_batch_idx = _int32_vector("cache_batch_idx", cache_batch_idx, batch, q.device)
    cache_leftpad = _int32_vector("cache_leftpad", cache_leftpad, batch, q.device)
    s_new = k.shape[1] if k is not None else 0
    # Every value is checked before the append writes anything.
    if cache_seqlens is not None:
        _raise_first("cache_seqlens", cache_seqlens, (cache_seqlens < 0) | (cache_seqlens > capacity),
                     f"outside 0..{capacity} (the cache length)")
    rows = cache_batch_idx
    if cache_batch_idx is not None:
        _raise_first("cache_batch_idx", rows, (rows < 0) | (rows >= n_rows),
                     f"outside the {n_rows} cache rows of "
                     f"{'block_table' if block_table is not None else 'k_cache'}")
    if cache_leftpad is not None:
        end = (cache_seqlens + s_new if cache_seqlens is not None
               else torch.full_like(cache_leftpad, capacity))
        _raise_first("cache_leftpad", cache_leftpad, (cache_leftpad < 0) | (cache_leftpad > end),
                     "above the sequence's cache length or negative")
    wl, wr = _window(window_size)
    seqused_k = cache_seqlens
    if k is not None:
        if cache_seqlens is None:
            raise ValueError("cache_seqlens: required to append k and v (where they go)")
        if rows is None:
            rows = torch.arange(batch, dtype=torch.int32, device=q.device)
        q = _append(q, k, v, k_cache, v_cache, cache_seqlens, rows, block_table, capacity,
                    rotary_cos, rotary_sin, rotary_interleaved,
                    rotate_q_per_token=causal or wl >= 0 or wr >= 0)
        seqused_k = cache_seqlens + s_new

    out, lse = _attend(q, k_cache, v_cache, None, None, 0, 0, seqused_k, cache_batch_idx,
                       cache_leftpad, block_table, softmax_scale, causal, wl, wr, softcap,
                       alibi_slopes, need_lse=return_softmax_lse)
    return (out, lse) if return_softmax_lse else out


def _window(window_size) -> Tuple[int, int]:
    wl, wr = (int(x) for x in window_size)
    return (-1 if wl < 0 else wl), (-1 if wr < 0 else wr)


def _raise_first(name: str, values: Tensor, bad: Tensor, why: str) -> None:
    if _check_values(values.device) and bool(bad.any()):
        b = int(bad.nonzero()[0])
        raise ValueError(f"{name}: entry {b} is {int(values[b])}, {why}")


def _append(q, k, v, k_cache, v_cache, cache_seqlens, rows, block_table, capacity, rotary_cos,
            rotary_sin, interleaved, rotate_q_per_token):
    """Writes k/v (rotated when rotary_cos/sin are given) into the caches at
    cache_seqlens; returns q, rotated likewise (at cache_seqlens + i per
    token when rotate_q_per_token, else all at cache_seqlens)."""
    batch, s_q, s_new = q.shape[0], q.shape[1], k.shape[1]
    for name, t, cache in (("k", k, k_cache), ("v", v, v_cache)):
        if t.dim() != 4 or t.shape[0] != batch or t.shape[2:] != cache.shape[2:]:
            raise ValueError(f"{name}: shape {tuple(t.shape)}, expected ({batch}, S_new, "
                             f"{cache.shape[2]}, {cache.shape[3]})")
        if t.dtype != cache.dtype:
            raise TypeError(f"{name}: dtype {t.dtype} differs from the cache's {cache.dtype}")
    first, second = _cache_slots(cache_seqlens, s_new, rows, block_table, k_cache.shape[1],
                                 k_cache.shape[0], capacity)
    if rotary_cos is not None:
        rd = 2 * rotary_cos.shape[-1]
        if rotary_cos.shape != rotary_sin.shape or rotary_cos.dim() != 2 or rd > q.shape[-1]:
            raise ValueError(f"rotary_cos: shape {tuple(rotary_cos.shape)} must be "
                             f"(seqlen_ro, rotary_dim / 2) with rotary_dim <= {q.shape[-1]}, "
                             f"as rotary_sin {tuple(rotary_sin.shape)}")
        start = cache_seqlens.long().unsqueeze(1)
        pos_k = start + torch.arange(s_new, device=q.device)
        pos_q = (start + torch.arange(s_q, device=q.device) if rotate_q_per_token
                 else start.expand(batch, s_q))
        k = _rotate(k, _rotary_at(rotary_cos, pos_k, "rotary_cos"),
                    _rotary_at(rotary_sin, pos_k, "rotary_sin"), interleaved)
        q = _rotate(q, _rotary_at(rotary_cos, pos_q, "rotary_cos"),
                    _rotary_at(rotary_sin, pos_q, "rotary_sin"), interleaved)
    with torch.no_grad():
        k_cache[first, second] = k
        v_cache[first, second] = v
    return q


def _attend(q, k_cache, v_cache, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
            seqused_k, cache_batch_idx, cache_leftpad, block_table, scale, causal, wl, wr,
            softcap, alibi_slopes, need_lse=True):
    """One forward through the C ABI over a cache read in place. q and the
    caches are in FlashAttention's layouts ((B, S, H, D) or varlen (T, H, D);
    paged pools (P, page, H, D)); returns (out, lse) in FlashAttention's (lse
    None when not needed and the C ABI serves the device: it then skips it;
    a registered runner always gets one)."""
    if alibi_slopes is not None and alibi_slopes.dtype != torch.float32:
        raise TypeError(f"alibi_slopes: dtype must be float32, got {alibi_slopes.dtype}")
    varlen = cu_seqlens_q is not None
    params = _ops._params(scale, causal, True, wl, wr, softcap, max_seqlen_q, max_seqlen_k, 0.0,
                          None, False, _ops.default_check_finite(q.device))
    with_lse = need_lse or _ops.has_runner(q.device)
    if varlen:
        total, hq = q.shape[0], q.shape[1]
        out = q.new_empty((total, hq, v_cache.shape[-1]))
        lse = q.new_empty((hq, total), dtype=torch.float32) if with_lse else None
        q_c, out_c = q, out
    else:
        b, s, hq = q.shape[0], q.shape[1], q.shape[2]
        out = q.new_empty((b, s, hq, v_cache.shape[-1]))
        lse = q.new_empty((b, hq, s), dtype=torch.float32) if with_lse else None
        q_c, out_c = q.transpose(1, 2), out.transpose(1, 2)
    # (rows, S, H, D) caches and (P, page, H, D) pools are (rows, H, S, D) views.
    kv_bhsd = block_table is not None or not varlen
    k_c = k_cache.transpose(1, 2) if kv_bhsd else k_cache
    v_c = v_cache.transpose(1, 2) if kv_bhsd else v_cache
    cache = {name: t for name, t in (("seqused_k", seqused_k), ("cache_batch_idx", cache_batch_idx),
                                     ("cache_leftpad", cache_leftpad), ("block_table", block_table))
             if t is not None}
    # The C ABI (CPU) or the device's runner; on a GPU q's device and the
    # current stream (no host synchronisation).
    run_fwd, _ = _ops._runner(q.device)
    with torch.no_grad():
        run_fwd(params, q_c.detach(), k_c.detach(), v_c.detach(), out_c, lse, None,
                None if alibi_slopes is None else alibi_slopes.detach(), cu_seqlens_q, cu_seqlens_k,
                q.device, **cache)
    return out, lse


def varlen_with_cache(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                      dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
                      block_table, seqused_k):
    """``flash_attn_varlen_func`` with ``block_table`` (k/v the page pools
    ``(num_pages, page_size, Hk, D)``, sequence b's keys at positions 0.. of
    its page-table row) and/or ``seqused_k`` (sequence b uses its first
    ``seqused_k[b]`` keys). Forward only."""
    for name, t in (("q", q), ("k", k), ("v", v), ("cu_seqlens_q", cu_seqlens_q),
                    ("cu_seqlens_k", cu_seqlens_k)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    _check_device(q)
    if dropout_p:
        raise ValueError("dropout_p: must be 0 with block_table / seqused_k (inference)")
    if any(t.requires_grad for t in (q, k, v)) and torch.is_grad_enabled():
        raise RuntimeError("flashsdpa: block_table / seqused_k are forward only (no gradient)")
    batch = cu_seqlens_q.shape[0] - 1
    seqused_k = _int32_vector("seqused_k", seqused_k, batch, q.device)
    wl, wr = _window(window_size)
    return _attend(q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k),
                   seqused_k, None, None, block_table, softmax_scale, causal, wl, wr, softcap,
                   alibi_slopes)
