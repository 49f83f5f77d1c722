"""Hugging Face transformers: flashsdpa as an ``attn_implementation``.

:func:`register_transformers` registers an attention function with
transformers' ``AttentionInterface`` and, where the installed version has it,
a mask function with ``AttentionMaskInterface`` (the public registries models
look ``config._attn_implementation`` up in), under a name without "flash" in
it: transformers treats such names as a FlashAttention kernel to import or
download from the Hub.

The attention function works like transformers' FlashAttention-2 path, without
its private module globals: the mask function is transformers' own
``flash_attention_mask`` (``None`` or the 2-D padding mask, never an O(S^2)
tensor); padded batches are unpadded and run by :func:`flash_attn_varlen_func`,
as are padding-free packed batches (``cu_seq_lens_q/k`` keywords, or restarting
``position_ids``); everything else runs :func:`flash_attn_func`. Causal
attention is aligned to the bottom right (so a query chunk after a KV cache
sees the cache), sliding windows become ``window_size``, GQA needs no repeat.
A 4-D mask a caller built itself goes through flashsdpa's SDPA.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ._api import flash_attn_func, flash_attn_varlen_func, scaled_dot_product_attention

__all__ = ["TRANSFORMERS_NAME", "register_transformers", "attention_forward"]

TRANSFORMERS_NAME = "fsdpa"


def _cu_seqlens(lengths: Tensor) -> Tensor:
    return torch.nn.functional.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))


def _window(sliding_window: Optional[int], is_causal: bool) -> Tuple[int, int]:
    # transformers' sliding window of W keys: the token itself and W - 1 before it
    if sliding_window is None:
        return -1, -1
    return sliding_window - 1, (0 if is_causal else sliding_window - 1)


def _packed_cu_seqlens(position_ids: Tensor) -> Optional[Tensor]:
    """cu_seqlens of a (1, S) row of concatenated sequences (positions restart at
    each sequence's start), or None if it holds one sequence."""
    if position_ids is None or position_ids.dim() != 2 or position_ids.shape[0] != 1:
        return None
    pos = position_ids[0]
    if pos.numel() <= 1:
        return None
    starts = torch.nonzero(torch.diff(pos) != 1).flatten() + 1
    if starts.numel() == 0:
        return None
    bounds = torch.cat([pos.new_zeros(1), starts, pos.new_full((1,), pos.numel())])
    return bounds.to(torch.int32)


def attention_forward(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Optional[Tensor],
    dropout: float = 0.0,
    scaling: Optional[float] = None,
    sliding_window: Optional[int] = None,
    softcap: Optional[float] = None,
    is_causal: Optional[bool] = None,
    **kwargs,
) -> Tuple[Tensor, None]:
    """transformers' attention-function contract: ``query`` ``(B, Hq, Sq, D)``,
    ``key``/``value`` ``(B, Hk, Sk, D)``; returns ``((B, Sq, Hq, Dv), None)``."""
    if kwargs.get("s_aux") is not None:
        raise ValueError("s_aux: attention sinks are not supported by flashsdpa")
    is_causal = bool(module.is_causal if is_causal is None else is_causal)
    window = _window(sliding_window, is_causal)
    common = dict(dropout_p=float(dropout), softmax_scale=scaling, causal=is_causal,
                  window_size=window, softcap=float(softcap or 0.0))
    b, hq, sq, _ = query.shape
    sk = key.shape[2]
    q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)  # BSHD

    if attention_mask is not None and attention_mask.dim() == 4:
        # a mask the caller built: every constraint is in it
        out = scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                           dropout_p=float(dropout), scale=scaling,
                                           enable_gqa=True)
        return out.transpose(1, 2).contiguous(), None

    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    if cu_q is None and attention_mask is None and b == 1 and sq == sk:
        cu_q = cu_k = _packed_cu_seqlens(kwargs.get("position_ids"))
    if cu_q is not None and cu_k is not None:  # padding-free packing along the sequence
        max_q = kwargs.get("max_length_q") or int((cu_q[1:] - cu_q[:-1]).max())
        max_k = kwargs.get("max_length_k") or int((cu_k[1:] - cu_k[:-1]).max())
        out = flash_attn_varlen_func(q.reshape(-1, hq, q.shape[-1]),
                                     k.reshape(-1, k.shape[2], k.shape[-1]),
                                     v.reshape(-1, v.shape[2], v.shape[-1]),
                                     cu_q.to(torch.int32), cu_k.to(torch.int32), int(max_q),
                                     int(max_k), **common)
        return out.view(b, sq, hq, -1), None

    if attention_mask is not None:  # 2-D padding mask (B, Sk): True/1 = a real token
        mask = attention_mask[:, -sk:].bool()
        keep_k = mask
        if mask.shape[1] < sk:  # a static cache: the slots after the mask are unused
            keep_k = torch.nn.functional.pad(mask, (0, sk - mask.shape[1]), value=False)
        if sq == 1:  # a decode step: the query is a real token
            keep_q = mask.new_ones(b, 1)
        else:  # a prompt, or a chunk after a cache: its tokens end the mask
            keep_q = mask[:, -sq:]
        len_k, len_q = keep_k.sum(-1, dtype=torch.int32), keep_q.sum(-1, dtype=torch.int32)
        out_packed = flash_attn_varlen_func(q[keep_q], k[keep_k], v[keep_k], _cu_seqlens(len_q),
                                            _cu_seqlens(len_k), int(len_q.max()),
                                            int(len_k.max()), **common)
        out = out_packed.new_zeros(b, sq, hq, out_packed.shape[-1])
        out[keep_q] = out_packed
        return out, None

    return flash_attn_func(q, k, v, **common), None


def register_transformers(name: str = TRANSFORMERS_NAME) -> str:
    """Registers flashsdpa with transformers and returns the name to pass as
    ``attn_implementation`` (``from_pretrained``, ``from_config``,
    ``model.set_attn_implementation``)."""
    if "flash" in name:
        raise ValueError(f"name: {name!r} contains 'flash', which transformers reserves for "
                         "FlashAttention packages and Hub kernels")
    from transformers import AttentionInterface

    AttentionInterface.register(name, attention_forward)
    try:
        from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask
    except ImportError:  # older transformers: models build masks by name themselves
        pass
    else:
        AttentionMaskInterface.register(name, flash_attention_mask)
    return name
