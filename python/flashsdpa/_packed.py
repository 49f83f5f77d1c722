"""FlashAttention 2.x's packed entry points: q, k and v stacked in one tensor
(``qkvpacked``) or k and v stacked (``kvpacked``), padded and varlen.

Same signatures, positional order and return values as flash-attn 2.x, so
switching is one import. They unstack views and call :func:`flash_attn_func` /
:func:`flash_attn_varlen_func`; autograd writes the gradient of the packed
tensor through those views.
"""
from __future__ import annotations

from typing import Literal, Optional, Tuple, overload

from torch import Tensor

from ._api import (FlashResult, LseResult, ProbsResult, flash_attn_func,
                   flash_attn_varlen_func)

__all__ = [
    "flash_attn_qkvpacked_func",
    "flash_attn_kvpacked_func",
    "flash_attn_varlen_qkvpacked_func",
    "flash_attn_varlen_kvpacked_func",
]


def _unstack(packed: Tensor, name: str, dim: int, count: int) -> Tuple[Tensor, ...]:
    if not isinstance(packed, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(packed).__name__}")
    if packed.dim() <= dim or packed.shape[dim] != count:
        raise ValueError(f"{name}: expected size {count} at dim {dim} (the packing dim), got "
                         f"shape {tuple(packed.shape)}")
    return packed.unbind(dim)


@overload
def flash_attn_qkvpacked_func(
    qkv: Tensor, dropout_p: float = ..., softmax_scale: Optional[float] = ..., causal: bool = ...,
    window_size: Tuple[int, int] = ..., softcap: float = ..., alibi_slopes: Optional[Tensor] = ...,
    deterministic: bool = ..., return_attn_probs: Literal[False] = ..., *,
    return_lse: Literal[False] = ...,
) -> Tensor: ...
@overload
def flash_attn_qkvpacked_func(
    qkv: Tensor, dropout_p: float = ..., softmax_scale: Optional[float] = ..., causal: bool = ...,
    window_size: Tuple[int, int] = ..., softcap: float = ..., alibi_slopes: Optional[Tensor] = ...,
    deterministic: bool = ..., return_attn_probs: Literal[False] = ..., *,
    return_lse: Literal[True],
) -> LseResult: ...
@overload
def flash_attn_qkvpacked_func(
    qkv: Tensor, dropout_p: float, softmax_scale: Optional[float], causal: bool,
    window_size: Tuple[int, int], softcap: float, alibi_slopes: Optional[Tensor],
    deterministic: bool, return_attn_probs: Literal[True], *, return_lse: bool = ...,
) -> ProbsResult: ...
@overload
def flash_attn_qkvpacked_func(
    qkv: Tensor, dropout_p: float = ..., softmax_scale: Optional[float] = ..., causal: bool = ...,
    window_size: Tuple[int, int] = ..., softcap: float = ..., alibi_slopes: Optional[Tensor] = ...,
    deterministic: bool = ..., *, return_attn_probs: Literal[True], return_lse: bool = ...,
) -> ProbsResult: ...
@overload
def flash_attn_qkvpacked_func(
    qkv: Tensor, dropout_p: float = ..., softmax_scale: Optional[float] = ..., causal: bool = ...,
    window_size: Tuple[int, int] = ..., softcap: float = ..., alibi_slopes: Optional[Tensor] = ...,
    deterministic: bool = ..., return_attn_probs: bool = ..., *, return_lse: bool = ...,
) -> FlashResult: ...


def flash_attn_qkvpacked_func(
    qkv: Tensor,
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
    """``qkv`` ``(B, S, 3, H, D)``; otherwise :func:`flash_attn_func`."""
    q, k, v = _unstack(qkv, "qkv", 2, 3)
    return flash_attn_func(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap,
                           alibi_slopes, deterministic, return_attn_probs, return_lse=return_lse)


@overload
def flash_attn_kvpacked_func(
    q: Tensor, kv: Tensor, dropout_p: float = ..., softmax_scale: Optional[float] = ...,
    causal: bool = ..., window_size: Tuple[int, int] = ..., softcap: float = ...,
    alibi_slopes: Optional[Tensor] = ..., deterministic: bool = ...,
    return_attn_probs: Literal[False] = ..., *, return_lse: Literal[False] = ...,
) -> Tensor: ...
@overload
def flash_attn_kvpacked_func(
    q: Tensor, kv: Tensor, dropout_p: float = ..., softmax_scale: Optional[float] = ...,
    causal: bool = ..., window_size: Tuple[int, int] = ..., softcap: float = ...,
    alibi_slopes: Optional[Tensor] = ..., deterministic: bool = ...,
    return_attn_probs: Literal[False] = ..., *, return_lse: Literal[True],
) -> LseResult: ...
@overload
def flash_attn_kvpacked_func(
    q: Tensor, kv: Tensor, dropout_p: float, softmax_scale: Optional[float], causal: bool,
    window_size: Tuple[int, int], softcap: float, alibi_slopes: Optional[Tensor],
    deterministic: bool, return_attn_probs: Literal[True], *, return_lse: bool = ...,
) -> ProbsResult: ...
@overload
def flash_attn_kvpacked_func(
    q: Tensor, kv: Tensor, dropout_p: float = ..., softmax_scale: Optional[float] = ...,
    causal: bool = ..., window_size: Tuple[int, int] = ..., softcap: float = ...,
    alibi_slopes: Optional[Tensor] = ..., deterministic: bool = ..., *,
    return_attn_probs: Literal[True], return_lse: bool = ...,
) -> ProbsResult: ...
@overload
def flash_attn_kvpacked_func(
    q: Tensor, kv: Tensor, dropout_p: float = ..., softmax_scale: Optional[float] = ...,
    causal: bool = ..., window_size: Tuple[int, int] = ..., softcap: float = ...,
    alibi_slopes: Optional[Tensor] = ..., deterministic: bool = ..., return_attn_probs: bool = ...,
    *, return_lse: bool = ...,
) -> FlashResult: ...


def flash_attn_kvpacked_func(
    q: Tensor,
    kv: Tensor,
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
    """``q`` ``(B, Sq, Hq, D)``, ``kv`` ``(B, Sk, 2, Hk, D)`` (GQA: ``Hq % Hk == 0``);
    otherwise :func:`flash_attn_func`."""
    k, v = _unstack(kv, "kv", 2, 2)
    return flash_attn_func(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap,
                           alibi_slopes, deterministic, return_attn_probs, return_lse=return_lse)


@overload
def flash_attn_varlen_qkvpacked_func(
    qkv: Tensor, cu_seqlens: Tensor, max_seqlen: int, dropout_p: float = ...,
    softmax_scale: Optional[float] = ..., causal: bool = ..., window_size: Tuple[int, int] = ...,
    softcap: float = ..., alibi_slopes: Optional[Tensor] = ..., deterministic: bool = ...,
    return_attn_probs: Literal[False] = ..., *, return_lse: Literal[False] = ...,
) -> Tensor: ...
@overload
def flash_attn_varlen_qkvpacked_func(
    qkv: Tensor, cu_seqlens: Tensor, max_seqlen: int, dropout_p: float = ...,
    softmax_scale: Optional[float] = ..., causal: bool = ..., window_size: Tuple[int, int] = ...,
    softcap: float = ..., alibi_slopes: Optional[Tensor] = ..., deterministic: bool = ...,
    return_attn_probs: Literal[False] = ..., *, return_lse: Literal[True],
) -> LseResult: ...
@overload
def flash_attn_varlen_qkvpacked_func(
    qkv: Tensor, cu_seqlens: Tensor, max_seqlen: int, dropout_p: float,
    softmax_scale: Optional[float], causal: bool, window_size: Tuple[int, int], softcap: float,
    alibi_slopes: Optional[Tensor], deterministic: bool, return_attn_probs: Literal[True], *,
    return_lse: bool = ...,
) -> ProbsResult: ...
@overload
def flash_attn_varlen_qkvpacked_func(
    qkv: Tensor, cu_seqlens: Tensor, max_seqlen: int, dropout_p: float = ...,
    softmax_scale: Optional[float] = ..., causal: bool = ..., window_size: Tuple[int, int] = ...,
    softcap: float = ..., alibi_slopes: Optional[Tensor] = ..., deterministic: bool = ..., *,
    return_attn_probs: Literal[True], return_lse: bool = ...,
) -> ProbsResult: ...
@overload
def flash_attn_varlen_qkvpacked_func(
    qkv: Tensor, cu_seqlens: Tensor, max_seqlen: int, dropout_p: float = ...,
    softmax_scale: Optional[float] = ..., causal: bool = ..., window_size: Tuple[int, int] = ...,
    softcap: float = ..., alibi_slopes: Optional[Tensor] = ..., deterministic: bool = ...,
    return_attn_probs: bool = ..., *, return_lse: bool = ...,
) -> FlashResult: ...


def flash_attn_varlen_qkvpacked_func(
    qkv: Tensor,
    cu_seqlens: Tensor,
    max_seqlen: int,
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
    """``qkv`` ``(total, 3, H, D)``, one ``cu_seqlens`` for q and k; otherwise
    :func:`flash_attn_varlen_func`."""
    q, k, v = _unstack(qkv, "qkv", 1, 3)
    return flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen,
                                  dropout_p, softmax_scale, causal, window_size, softcap,
                                  alibi_slopes, deterministic, return_attn_probs,
                                  return_lse=return_lse)


@overload
def flash_attn_varlen_kvpacked_func(
    q: Tensor, kv: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor, max_seqlen_q: int,
    max_seqlen_k: int, dropout_p: float = ..., softmax_scale: Optional[float] = ...,
    causal: bool = ..., window_size: Tuple[int, int] = ..., softcap: float = ...,
    alibi_slopes: Optional[Tensor] = ..., deterministic: bool = ...,
    return_attn_probs: Literal[False] = ..., *, return_lse: Literal[False] = ...,
) -> Tensor: ...
@overload
def flash_attn_varlen_kvpacked_func(
    q: Tensor, kv: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor, max_seqlen_q: int,
    max_seqlen_k: int, dropout_p: float = ..., softmax_scale: Optional[float] = ...,
    causal: bool = ..., window_size: Tuple[int, int] = ..., softcap: float = ...,
    alibi_slopes: Optional[Tensor] = ..., deterministic: bool = ...,
    return_attn_probs: Literal[False] = ..., *, return_lse: Literal[True],
) -> LseResult: ...
@overload
def flash_attn_varlen_kvpacked_func(
    q: Tensor, kv: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor, max_seqlen_q: int,
    max_seqlen_k: int, dropout_p: float, softmax_scale: Optional[float], causal: bool,
    window_size: Tuple[int, int], softcap: float, alibi_slopes: Optional[Tensor],
    deterministic: bool, return_attn_probs: Literal[True], *, return_lse: bool = ...,
) -> ProbsResult: ...
@overload
def flash_attn_varlen_kvpacked_func(
    q: Tensor, kv: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor, max_seqlen_q: int,
    max_seqlen_k: int, dropout_p: float = ..., softmax_scale: Optional[float] = ...,
    causal: bool = ..., window_size: Tuple[int, int] = ..., softcap: float = ...,
    alibi_slopes: Optional[Tensor] = ..., deterministic: bool = ..., *,
    return_attn_probs: Literal[True], return_lse: bool = ...,
) -> ProbsResult: ...
@overload
def flash_attn_varlen_kvpacked_func(
    q: Tensor, kv: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor, max_seqlen_q: int,
    max_seqlen_k: int, dropout_p: float = ..., softmax_scale: Optional[float] = ...,
    causal: bool = ..., window_size: Tuple[int, int] = ..., softcap: float = ...,
    alibi_slopes: Optional[Tensor] = ..., deterministic: bool = ..., return_attn_probs: bool = ...,
    *, return_lse: bool = ...,
) -> FlashResult: ...


def flash_attn_varlen_kvpacked_func(
    q: Tensor,
    kv: Tensor,
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
    *,
    return_lse: bool = False,
) -> FlashResult:
    """``q`` ``(total_q, Hq, D)``, ``kv`` ``(total_k, 2, Hk, D)``; otherwise
    :func:`flash_attn_varlen_func`."""
    k, v = _unstack(kv, "kv", 1, 2)
    return flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                  max_seqlen_k, dropout_p, softmax_scale, causal, window_size,
                                  softcap, alibi_slopes, deterministic, return_attn_probs,
                                  return_lse=return_lse)
