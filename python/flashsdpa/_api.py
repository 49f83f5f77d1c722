"""The public attention functions: PyTorch's SDPA and the FlashAttention API."""
from __future__ import annotations

from typing import Literal, Optional, Tuple, Union, overload

import torch
from torch import Tensor

from . import _checks, _kvcache, _ops
from ._autocast import autocast_sdpa_args

__all__ = ["scaled_dot_product_attention", "flash_attn_func", "flash_attn_varlen_func"]

# What the FlashAttention functions return, by their flags (the @overloads
# below tell type checkers which): out; (out, lse) with return_lse;
# (out, lse, None) with return_attn_probs.
LseResult = Tuple[Tensor, Tensor]
ProbsResult = Tuple[Tensor, Tensor, None]
FlashResult = Union[Tensor, LseResult, ProbsResult]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_HEAD_DIM = 256


class Unsupported:
    """Why a call cannot run on flashsdpa: a short stats key, the exception
    class the direct API raises, and a message. ``shape`` marks problems the
    C ABI itself reports (the direct API lets it, so users see its message)."""

    __slots__ = ("reason", "exc", "message", "shape")

    def __init__(self, reason: str, exc: type, message: str, shape: bool = False):
        self.reason, self.exc, self.message, self.shape = reason, exc, message, shape


def check_sdpa(query, key, value, attn_mask, dropout_p, is_causal, enable_gqa, scale=None,
               ) -> Optional[Unsupported]:
    """Returns None if flashsdpa can compute this SDPA call with PyTorch's
    exact semantics, else why not."""
    # Written out rather than looped over: this runs on every call, and a
    # small call's host time is what short sequences pay (issue 18).
    has_mask = attn_mask is not None
    if not (isinstance(query, Tensor) and isinstance(key, Tensor) and isinstance(value, Tensor)
            and (not has_mask or isinstance(attn_mask, Tensor))):
        return Unsupported("non_tensor", TypeError, "query, key, value and attn_mask must be tensors")
    if (query.is_nested or key.is_nested or value.is_nested
            or (has_mask and attn_mask.is_nested)):
        return Unsupported("nested_tensor", RuntimeError, "nested tensors are not supported")
    dev = query.device
    if key.device != dev or value.device != dev or (has_mask and attn_mask.device != dev):
        return Unsupported("device:mixed", ValueError,
                           "query, key, value and attn_mask must be on one device")
    info = _ops.device_info(dev)
    if not info.available:
        return Unsupported(f"device:{info.type}-unavailable", RuntimeError,
                           f"flashsdpa has no backend for device '{info.type}' in this "
                           "build/machine")
    if info.unsupported is not None:
        why = info.unsupported()
        if why is not None:  # e.g. "device:mps-fast-math" (flashsdpa/metal.py)
            return Unsupported(why[0], RuntimeError, why[1])
    dtype = query.dtype
    if dtype not in _DTYPES:
        return Unsupported(f"dtype:{str(dtype).replace('torch.', '')}", TypeError,
                           f"query: unsupported dtype {dtype}; expected float32, float16 "
                           "or bfloat16")
    if key.dtype != dtype or value.dtype != dtype:
        return Unsupported("dtype:mismatch", TypeError,
                           f"query, key, value must share one dtype, got {dtype}, "
                           f"{key.dtype}, {value.dtype}")
    qs, ks, vs = query.shape, key.shape, value.shape  # each .shape builds a torch.Size
    nd = len(qs)
    if nd not in (3, 4) or len(ks) != nd or len(vs) != nd:
        return Unsupported("rank", ValueError,
                           f"query, key, value must all be 3-D or 4-D, got {nd}-D, "
                           f"{len(ks)}-D, {len(vs)}-D")
    if qs[-1] > MAX_HEAD_DIM or vs[-1] > MAX_HEAD_DIM:
        return Unsupported(f"head_dim>{MAX_HEAD_DIM}", ValueError,
                           f"head dims {qs[-1]}/{vs[-1]} exceed {MAX_HEAD_DIM}")
    if dropout_p != 0.0 or type(dropout_p) not in (float, int) or scale is not None:
        for name, check, arg in (("dropout_p", _checks.dropout_p, dropout_p),
                                 ("scale", _checks.scale, scale)):
            try:
                check(arg)
            except (TypeError, ValueError) as e:
                return Unsupported(name, type(e), str(e))
    if is_causal and attn_mask is not None:
        return Unsupported("causal_with_mask", ValueError,
                           "is_causal=True and an explicit attn_mask are mutually exclusive "
                           "(as in PyTorch)")
    if nd == 4:
        hq, hk, hv = qs[1], ks[1], vs[1]
        if hq != hk or hk != hv:
            if not enable_gqa:
                return Unsupported("gqa_disabled", ValueError,
                                   f"query has {hq} heads but key/value {hk}/{hv}; pass "
                                   "enable_gqa=True for grouped-query attention")
            if hk != hv or hq % hk != 0:
                return Unsupported("shape:heads", ValueError,
                                   f"query heads {hq} must be a multiple of key/value heads "
                                   f"{hk}/{hv}", shape=True)
    shapes_ok = (
        qs[0] == ks[0] == vs[0]
        and ks[-2] == vs[-2]
        and qs[-1] == ks[-1]
    )
    if not shapes_ok:
        return Unsupported("shape:broadcast", ValueError,
                           f"shapes q {tuple(qs)}, k {tuple(ks)}, v "
                           f"{tuple(vs)} are not a (batch, heads, seq, dim) attention "
                           "problem without broadcasting", shape=True)
    if attn_mask is not None:
        m = attn_mask
        if m.dtype != torch.bool and m.dtype != dtype:
            return Unsupported("mask:dtype", TypeError,
                               f"attn_mask: dtype {m.dtype} must be bool or query's {dtype}")
        if m.requires_grad and m.dtype != torch.bool and torch.is_grad_enabled():
            return Unsupported("mask_requires_grad", RuntimeError,
                               "attn_mask requires grad: flashsdpa does not compute the "
                               "gradient of a float mask (detach it, or use torch's SDPA)")
        target = (qs[0],) + ((qs[1],) if nd == 4 else ()) + (qs[-2], ks[-2])
        ok = 1 <= m.dim() <= nd and all(
            ms == 1 or ms == ts_ for ms, ts_ in zip(reversed(m.shape), reversed(target)))
        if not ok:
            return Unsupported("mask:shape", ValueError,
                               f"attn_mask: shape {tuple(m.shape)} is not broadcastable to "
                               f"{tuple(target)}", shape=True)
    return None


def _sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale, check_finite):
    """Runs a call that check_sdpa accepted (or, in the direct API, whose
    remaining problems are shapes the C ABI reports)."""
    three_d = query.dim() == 3
    q, k, v, m = query, key, value, attn_mask
    if three_d:  # (N, L, E): one head
        q, k, v = q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)
        if m is not None and m.dim() == 3:
            m = m.unsqueeze(1)
    if m is not None and m.dim() == 1:
        m = m.unsqueeze(0)
    rng = _ops.new_rng(dropout_p)
    out, _ = _ops.call_fwd(q, k, v, m, None, None, None, 0, 0, scale, bool(is_causal), False,
                           -1, -1, 0.0, float(dropout_p), rng, False, check_finite, True,
                           need_lse=False)
    return out.squeeze(1) if three_d else out


def scaled_dot_product_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Optional[Tensor] = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: Optional[float] = None,
    enable_gqa: bool = False,
) -> Tensor:
    """``torch.nn.functional.scaled_dot_product_attention``, computed by flashsdpa.

    Same signature and semantics: ``query`` ``(N, Hq, L, E)`` (or ``(N, L, E)``),
    ``key`` ``(N, Hk, S, E)``, ``value`` ``(N, Hk, S, Ev)``; ``is_causal`` is
    top-left aligned; a bool ``attn_mask`` is True where attention is allowed, a
    float mask is added to the scores; masks broadcast to ``(N, Hq, L, S)``;
    ``enable_gqa`` lets ``Hq`` be a multiple of ``Hk``; ``scale`` defaults to
    ``1/sqrt(E)``; dropout draws its seed from PyTorch's default generator.
    A query row with no visible key gives zeros.

    Unlike the SDPA patch (:func:`flashsdpa.enable`), this never falls back: what
    flashsdpa cannot do raises ``ValueError``/``TypeError``/``RuntimeError`` (e.g.
    batch broadcasting between q and k, float64, nested tensors, or a float
    mask that requires grad).
    """
    query, key, value, attn_mask = autocast_sdpa_args(query, key, value, attn_mask)
    why = check_sdpa(query, key, value, attn_mask, dropout_p, is_causal, enable_gqa, scale)
    if why is not None and not why.shape:
        raise why.exc(f"flashsdpa: {why.message}")
    return _sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale,
                 _ops.default_check_finite(query.device))


def _alibi(alibi_slopes: Optional[Tensor]) -> Optional[Tensor]:
    if alibi_slopes is None:
        return None
    if alibi_slopes.dtype != torch.float32:
        raise TypeError(f"alibi_slopes: dtype must be float32, got {alibi_slopes.dtype}")
    return alibi_slopes


def _check_qkv(q, k, v, rank: int) -> None:
    if not (isinstance(q, Tensor) and isinstance(k, Tensor) and isinstance(v, Tensor)
            and not (q.is_nested or k.is_nested or v.is_nested)
            and q.dim() == rank and k.dim() == rank and v.dim() == rank):
        # Which one, in the order q, k, v (the common case above asks once).
        for name, t in (("q", q), ("k", k), ("v", v)):
            if not isinstance(t, Tensor):
                raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
            if t.is_nested:
                raise RuntimeError(f"{name}: nested tensors are not supported")
            if t.dim() != rank:
                raise ValueError(f"{name}: expected rank {rank}, got {t.dim()}")
    info = _ops.device_info(q.device)
    if not info.available:
        raise RuntimeError(f"flashsdpa has no backend for device '{info.type}' here")

@overload
def flash_attn_func(
    q: Tensor, k: Tensor, v: Tensor, dropout_p: float = ..., softmax_scale: Optional[float] = ...,
    causal: bool = ..., window_size: Tuple[int, int] = ..., softcap: float = ...,
    alibi_slopes: Optional[Tensor] = ..., deterministic: bool = ...,
    return_attn_probs: Literal[False] = ..., *, return_lse: Literal[False] = ...,
) -> Tensor: ...
@overload
def flash_attn_func(
    q: Tensor, k: Tensor, v: Tensor, dropout_p: float = ..., softmax_scale: Optional[float] = ...,
    causal: bool = ..., window_size: Tuple[int, int] = ..., softcap: float = ...,
    alibi_slopes: Optional[Tensor] = ..., deterministic: bool = ...,
    return_attn_probs: Literal[False] = ..., *, return_lse: Literal[True],
) -> LseResult: ...
@overload
def flash_attn_func(
    q: Tensor, k: Tensor, v: Tensor, dropout_p: float, softmax_scale: Optional[float],
    causal: bool, window_size: Tuple[int, int], softcap: float,
    alibi_slopes: Optional[Tensor], deterministic: bool,
    return_attn_probs: Literal[True], *, return_lse: bool = ...,
) -> ProbsResult: ...
@overload
def flash_attn_func(
    q: Tensor, k: Tensor, v: Tensor, dropout_p: float = ..., softmax_scale: Optional[float] = ...,
    causal: bool = ..., window_size: Tuple[int, int] = ..., softcap: float = ...,
    alibi_slopes: Optional[Tensor] = ..., deterministic: bool = ...,
    *, return_attn_probs: Literal[True], return_lse: bool = ...,
) -> ProbsResult: ...
@overload
def flash_attn_func(
    q: Tensor, k: Tensor, v: Tensor, dropout_p: float = ..., softmax_scale: Optional[float] = ...,
    causal: bool = ..., window_size: Tuple[int, int] = ..., softcap: float = ...,
    alibi_slopes: Optional[Tensor] = ..., deterministic: bool = ...,
    return_attn_probs: bool = ..., *, return_lse: bool = ...,
) -> FlashResult: ...


def flash_attn_func(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    dropout_p: float = 0.0,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    window_size: Tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: Optional[Tensor] = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
    *,
    return_lse: bool = False,
) -> FlashResult:
    """FlashAttention's ``flash_attn_func``: ``q`` ``(B, Sq, Hq, D)``, ``k``/``v``
    ``(B, Sk, Hk, D)`` with ``Hq % Hk == 0`` (MQA/GQA).

    ``causal`` and ``window_size=(left, right)`` are aligned to the bottom right
    (row ``i`` sees keys ``j`` with ``i + Sk - Sq - left <= j <= i + Sk - Sq +
    right``; -1 = unbounded). ``softcap > 0`` applies ``softcap * tanh(s /
    softcap)``; ``alibi_slopes`` (float32 ``(Hq,)`` or ``(B, Hq)``) adds
    ``-slope * |i + Sk - Sq - j|``. Returns ``out`` ``(B, Sq, Hq, Dv)`` and, with
    ``return_lse``, also the log-sum-exp ``(B, Hq, Sq)`` in float32.
    ``deterministic`` makes the backward bit-reproducible.
    ``return_attn_probs`` (FlashAttention's testing flag) returns ``(out, lse,
    None)``: the probabilities are never materialised. The positional order is
    flash-attn 2.x's (``return_attn_probs`` is the 11th); ``return_lse`` is
    keyword-only.
    """
    _check_qkv(q, k, v, 4)
    wl, wr = _checks.window(window_size)
    rng = _ops.new_rng(dropout_p)
    out, lse = _ops.call_fwd(q, k, v, None, _alibi(alibi_slopes), None, None, 0, 0,
                             softmax_scale, bool(causal), True, wl, wr,
                             _checks.real("softcap", softcap), float(dropout_p), rng,
                             bool(deterministic), _ops.default_check_finite(q.device), True,
                             need_lse=return_lse or return_attn_probs, bshd=True)
    if return_attn_probs:
        return out, lse, None
    return (out, lse) if return_lse else out

@overload
def flash_attn_varlen_func(
    q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
    max_seqlen_q: int, max_seqlen_k: int, dropout_p: float = ...,
    softmax_scale: Optional[float] = ..., causal: bool = ..., window_size: Tuple[int, int] = ...,
    softcap: float = ..., alibi_slopes: Optional[Tensor] = ..., deterministic: bool = ...,
    return_attn_probs: Literal[False] = ..., block_table: Optional[Tensor] = ..., *,
    seqused_k: Optional[Tensor] = ..., return_lse: Literal[False] = ...,
) -> Tensor: ...
@overload
def flash_attn_varlen_func(
    q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
    max_seqlen_q: int, max_seqlen_k: int, dropout_p: float = ...,
    softmax_scale: Optional[float] = ..., causal: bool = ..., window_size: Tuple[int, int] = ...,
    softcap: float = ..., alibi_slopes: Optional[Tensor] = ..., deterministic: bool = ...,
    return_attn_probs: Literal[False] = ..., block_table: Optional[Tensor] = ..., *,
    seqused_k: Optional[Tensor] = ..., return_lse: Literal[True],
) -> LseResult: ...
@overload
def flash_attn_varlen_func(
    q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
    max_seqlen_q: int, max_seqlen_k: int, dropout_p: float,
    softmax_scale: Optional[float], causal: bool, window_size: Tuple[int, int],
    softcap: float, alibi_slopes: Optional[Tensor], deterministic: bool,
    return_attn_probs: Literal[True], block_table: Optional[Tensor] = ..., *,
    seqused_k: Optional[Tensor] = ..., return_lse: bool = ...,
) -> ProbsResult: ...
@overload
def flash_attn_varlen_func(
    q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
    max_seqlen_q: int, max_seqlen_k: int, dropout_p: float = ...,
    softmax_scale: Optional[float] = ..., causal: bool = ..., window_size: Tuple[int, int] = ...,
    softcap: float = ..., alibi_slopes: Optional[Tensor] = ..., deterministic: bool = ..., *,
    return_attn_probs: Literal[True], block_table: Optional[Tensor] = ...,
    seqused_k: Optional[Tensor] = ..., return_lse: bool = ...,
) -> ProbsResult: ...
@overload
def flash_attn_varlen_func(
    q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
    max_seqlen_q: int, max_seqlen_k: int, dropout_p: float = ...,
    softmax_scale: Optional[float] = ..., causal: bool = ..., window_size: Tuple[int, int] = ...,
    softcap: float = ..., alibi_slopes: Optional[Tensor] = ..., deterministic: bool = ...,
    return_attn_probs: bool = ..., block_table: Optional[Tensor] = ..., *,
    seqused_k: Optional[Tensor] = ..., return_lse: bool = ...,
) -> FlashResult: ...


def flash_attn_varlen_func(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float = 0.0,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    window_size: Tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: Optional[Tensor] = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
    block_table: Optional[Tensor] = None,
    *,
    seqused_k: Optional[Tensor] = None,
    return_lse: bool = False,
) -> FlashResult:
    """FlashAttention's ``flash_attn_varlen_func``: sequences packed along the
    first dim, ``q`` ``(total_q, Hq, D)``, ``k``/``v`` ``(total_k, Hk, D)``;
    sequence ``b`` is rows ``cu_seqlens[b]:cu_seqlens[b+1]`` (int32, ``B + 1``
    entries, on q's device). Same options as :func:`flash_attn_func`; each
    sequence is its own problem (bottom-right alignment per sequence). Returns
    ``out`` ``(total_q, Hq, Dv)`` and, with ``return_lse``, lse ``(Hq, total_q)``.
    ``block_table`` (int32 ``(B, max_pages)``; k/v are then page pools
    ``(num_pages, page_size, Hk, D)``, any page size) and ``seqused_k`` (int32
    ``(B,)``, keys used per sequence) read a KV cache in place (forward only;
    see :func:`flash_attn_with_kvcache`).
    """
    if block_table is not None or seqused_k is not None:
        out, lse = _kvcache.varlen_with_cache(
            q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
            softmax_scale, causal, window_size, softcap, alibi_slopes, block_table, seqused_k)
        if return_attn_probs:
            return out, lse, None
        return (out, lse) if return_lse else out
    _check_qkv(q, k, v, 3)
    cu_seqlens_q = _checks.cu_seqlens("cu_seqlens_q", cu_seqlens_q, q)
    cu_seqlens_k = _checks.cu_seqlens("cu_seqlens_k", cu_seqlens_k, q)
    wl, wr = _checks.window(window_size)
    rng = _ops.new_rng(dropout_p)
    out, lse = _ops.call_fwd(q, k, v, None, _alibi(alibi_slopes), cu_seqlens_q, cu_seqlens_k,
                             int(max_seqlen_q), int(max_seqlen_k), softmax_scale, bool(causal),
                             True, wl, wr, _checks.real("softcap", softcap), float(dropout_p), rng,
                             bool(deterministic), _ops.default_check_finite(q.device), False,
                             need_lse=return_lse or return_attn_probs)
    if return_attn_probs:
        return out, lse, None
    return (out, lse) if return_lse else out
