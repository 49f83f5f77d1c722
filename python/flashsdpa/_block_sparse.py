"""Block-sparse attention without an Sq x Sk mask: FlexAttention's ``BlockMask``
(or the same block lists given directly) on flashsdpa's kernels.

The pattern is a list of key blocks per (batch, head, query block), split into
full blocks (attended entirely) and partial blocks (attended where an element
mask of that block only says so); see the block-sparse fields of
``include/flashsdpa/flashsdpa.h`` for the exact semantics. A ``BlockMask``'s
``mask_mod`` is evaluated once per call on its partial blocks only,
vectorised with torch broadcasting: memory O(partial blocks x block size),
never O(Sq x Sk).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from . import _C, _checks, _ops

__all__ = ["BlockLists", "block_sparse_attention"]


@dataclass(frozen=True)
class BlockLists:
    """The block lists of a block-sparse mask, as the C ABI takes them.

    ``kv_num_blocks`` [Bm, Hm, NQB] / ``kv_indices`` [Bm, Hm, NQB, P]: the
    partial key blocks of each query block; ``kv_block_mask`` [Bm, Hm, NQB, P,
    block_q, block_k] (bool) their element masks, or None (the partial blocks
    are attended entirely). ``full_kv_num_blocks`` / ``full_kv_indices``: the
    full key blocks. int32, on the device of q; Bm in (1, B), Hm in (1, Hq)
    broadcast. Either pair may be None, not both."""

    kv_num_blocks: Optional[Tensor] = None
    kv_indices: Optional[Tensor] = None
    kv_block_mask: Optional[Tensor] = None
    full_kv_num_blocks: Optional[Tensor] = None
    full_kv_indices: Optional[Tensor] = None
    block_size: Tuple[int, int] = (128, 128)

    @classmethod
    def from_block_mask(cls, block_mask, seq_len_q: Optional[int] = None,
                        seq_len_k: Optional[int] = None) -> "BlockLists":
        """The lists of a ``torch.nn.attention.flex_attention.BlockMask``; its
        ``mask_mod`` is evaluated on the partial blocks only (skipped when it
        is ``noop_mask``). ``seq_len_*`` default to the mask's
        ``seq_lengths`` (PyTorch 2.5's ``BlockMask`` has none: its whole
        blocks, ``shape[-2:]``); they bound the indices passed to ``mask_mod``."""
        try:
            from torch.nn.attention.flex_attention import noop_mask
        except ImportError:  # PyTorch < 2.5: no BlockMask can exist
            raise TypeError(f"block_mask: expected a flashsdpa.BlockLists (PyTorch "
                            f"{torch.__version__} has no FlexAttention BlockMask: "
                            "torch.nn.attention.flex_attention needs PyTorch >= 2.5)") from None
        bq, bk = _block_size(block_mask.BLOCK_SIZE)
        lq, lk = (int(x) for x in getattr(block_mask, "seq_lengths", block_mask.shape[-2:]))
        num, idx = block_mask.kv_num_blocks, block_mask.kv_indices
        full_num, full_idx = block_mask.full_kv_num_blocks, block_mask.full_kv_indices
        if seq_len_q is not None and seq_len_k is not None and (seq_len_q < lq or seq_len_k < lk):
            # A mask built for longer sequences (FlexAttention accepts it):
            # its lists cut to these lengths, without the key blocks past Sk.
            lq, lk = min(lq, int(seq_len_q)), min(lk, int(seq_len_k))
            nqb, nkb = -(-lq // bq), -(-lk // bk)
            if num is not None:
                num, idx = _cut_lists(num, idx, nqb, nkb)
            if full_num is not None:
                full_num, full_idx = _cut_lists(full_num, full_idx, nqb, nkb)
        elem = None
        if num is not None:
            # Only the first max(count) slots are ever read.
            used = int(num.max().item()) if num.numel() else 0
            if used == 0 and full_num is not None:
                # No partial block anywhere (a block-aligned pattern): the
                # full lists alone, so no kernel looks for element masks.
                num = idx = None
            else:
                idx = idx[..., :max(used, 1)]
                if block_mask.mask_mod is not None and block_mask.mask_mod is not noop_mask:
                    elem = _partial_block_masks(block_mask.mask_mod, idx, bq, bk, lq, lk)
        return cls(num, idx, elem, full_num, full_idx, (bq, bk))


def _cut_lists(num: Tensor, idx: Tensor, nqb: int, nkb: int) -> Tuple[Tensor, Tensor]:
    """The lists of the first nqb query blocks without the key blocks >= nkb
    (kept entries moved to the front, in their order)."""
    num, idx = num[:, :, :nqb], idx[:, :, :nqb]
    slot = torch.arange(idx.shape[-1], device=idx.device)
    keep = (slot < num[..., None]) & (idx < nkb)
    order = torch.argsort((~keep).to(torch.int8), dim=-1, stable=True)
    return keep.sum(-1, dtype=torch.int32), torch.gather(idx, -1, order)


def _block_size(bs) -> Tuple[int, int]:
    if isinstance(bs, int):
        return bs, bs
    return int(bs[0]), int(bs[1])


def _partial_block_masks(mask_mod, kv_indices: Tensor, bq: int, bk: int, lq: int,
                         lk: int) -> Tensor:
    """mask_mod(b, h, q_idx, kv_idx) on every element of the partial blocks
    named by kv_indices [Bm, Hm, NQB, P]: bool [Bm, Hm, NQB, P, bq, bk].
    Indices past the sequence ends are clamped (those elements are never
    used), so a mask_mod indexing per-token tensors stays in bounds."""
    bm, hm, nqb, p = kv_indices.shape
    dev = kv_indices.device
    b = torch.arange(bm, device=dev).view(bm, 1, 1, 1, 1, 1)
    h = torch.arange(hm, device=dev).view(1, hm, 1, 1, 1, 1)
    q_idx = (torch.arange(nqb, device=dev).view(1, 1, nqb, 1, 1, 1) * bq
             + torch.arange(bq, device=dev).view(1, 1, 1, 1, bq, 1)).clamp_(max=max(lq - 1, 0))
    kv_idx = (kv_indices.to(torch.int64).clamp(min=0).view(bm, hm, nqb, p, 1, 1) * bk
              + torch.arange(bk, device=dev).view(1, 1, 1, 1, 1, bk)).clamp_(max=max(lk - 1, 0))
    m = mask_mod(b, h, q_idx, kv_idx)
    if not isinstance(m, Tensor) or m.dtype != torch.bool:
        raise TypeError("block_mask.mask_mod: must return a bool tensor when called with "
                        "broadcasting index tensors")
    return m.expand(bm, hm, nqb, p, bq, bk)


def _c_args(lists: BlockLists) -> dict:
    """The lists that are set, as the runners' keywords (flashsdpa._ops)."""
    named = dict(kv_num_blocks=lists.kv_num_blocks, kv_indices=lists.kv_indices,
                 kv_block_mask=lists.kv_block_mask, full_kv_num_blocks=lists.full_kv_num_blocks,
                 full_kv_indices=lists.full_kv_indices)
    return {n: t.detach() for n, t in named.items() if t is not None}


def _params(lists: BlockLists, scale, is_causal, window_size, softcap, dropout_p, rng,
            check_finite) -> "_C.Params":
    p = _C.Params()
    scale = _checks.scale(scale)
    if scale is not None:
        p.scale = scale
    p.causal = bool(is_causal)
    p.window_left, p.window_right = (int(w) for w in window_size)
    p.softcap = float(softcap)
    p.dropout_p = float(_checks.dropout_p(dropout_p))
    if rng is not None:
        seed, offset = (int(x) for x in rng.tolist())
        p.seed = seed & 0xFFFFFFFFFFFFFFFF
        p.offset = offset & 0xFFFFFFFFFFFFFFFF
    p.check_finite = bool(check_finite)
    p.sparse_block_q, p.sparse_block_k = lists.block_size
    return p


class _BlockSparseFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, alibi, lists, params):
        out = q.new_empty(q.shape[:-1] + (v.shape[-1],))
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        run_fwd, _ = _ops._runner(q.device)  # the C ABI (CPU) or the device's runner (MPS)
        run_fwd(params, q.detach(), k.detach(), v.detach(), out, lse, None,
                None if alibi is None else alibi.detach(), None, None, q.device, **_c_args(lists))
        ctx.save_for_backward(q, k, v, out, lse, alibi)
        ctx.lists, ctx.params = lists, params
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse, alibi = ctx.saved_tensors
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        _, run_bwd = _ops._runner(q.device)
        run_bwd(ctx.params, dout.contiguous(), q.detach(), k.detach(), v.detach(), out, lse, dq,
                dk, dv, None, None if alibi is None else alibi.detach(), None, None, q.device,
                **_c_args(ctx.lists))
        return dq, dk, dv, None, None, None


def block_sparse_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    block_mask: Union["torch.nn.attention.flex_attention.BlockMask", BlockLists],
    *,
    scale: Optional[float] = None,
    is_causal: bool = False,
    window_size: Tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: Optional[Tensor] = None,
    dropout_p: float = 0.0,
    enable_gqa: bool = False,
    return_lse: bool = False,
):
    """Attention of ``query`` [B, Hq, Sq, D] over ``key``/``value`` [B, Hk, Sk,
    D/Dv] restricted to the keys a block-sparse mask names, without an Sq x Sk
    mask: ``block_mask`` is a FlexAttention ``BlockMask`` (its ``mask_mod``
    evaluated on the partial blocks only) or a :class:`BlockLists`.

    Same result as ``F.scaled_dot_product_attention`` with the dense bool mask
    the pattern describes (``flex_attention`` with that ``BlockMask`` and no
    ``score_mod``); rows that see no key give 0. On top: ``is_causal``
    (top-left), ``window_size`` (left, right; -1 = unbounded), ``softcap``,
    ``alibi_slopes`` [Hq] or [B, Hq], ``dropout_p`` (seeded from PyTorch's
    default generator), GQA with ``enable_gqa=True``. Differentiable in q, k,
    v. Returns ``out`` [B, Hq, Sq, Dv], or ``(out, lse)`` with
    ``return_lse``. CPU, CUDA and MPS (the Metal kernels)."""
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, Tensor) or t.dim() != 4:
            raise ValueError(f"{name}: expected a 4-D tensor [B, H, S, D]")
    if query.device.type not in ("cpu", "cuda") and not _ops.has_runner(query.device):
        # A device with a registered runner (MPS: flashsdpa/metal.py, whose
        # Metal kernels read the lists) is served by it.
        raise RuntimeError(f"block_mask: the block-sparse mask is not supported on "
                           f"{query.device.type} (the CPU, CUDA and Metal backends serve it)")
    if key.shape[1] != query.shape[1] and not enable_gqa:
        raise ValueError(f"query has {query.shape[1]} heads but key/value {key.shape[1]}; pass "
                         "enable_gqa=True for grouped-query attention")
    lists = block_mask if isinstance(block_mask, BlockLists) else BlockLists.from_block_mask(
        block_mask, query.shape[2], key.shape[2])
    rng = _ops.new_rng(dropout_p)
    params = _params(lists, scale, is_causal, window_size, softcap, dropout_p, rng,
                     _ops.default_check_finite(query.device))
    out, lse = _BlockSparseFn.apply(query, key, value, alibi_slopes, lists, params)
    return (out, lse) if return_lse else out
