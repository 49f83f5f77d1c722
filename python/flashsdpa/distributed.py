"""Context parallelism: attention over a sequence split across the ranks of a
torch.distributed group (NCCL on GPUs, gloo on CPUs).

:func:`ring_flash_attn_func` and :func:`zigzag_ring_flash_attn_func` take the
arguments of the ring-flash-attention package, so switching is one import.
Tensors are ``(B, S_local, H, D)``; each rank holds a slice of the sequence:

* ``ring_``: the contiguous slice ``rank`` of ``world_size`` equal slices;
* ``zigzag_``: chunks ``rank`` and ``2 * world_size - 1 - rank`` of
  ``2 * world_size`` equal chunks, concatenated (this balances causal work).

:func:`shard` cuts a full tensor into either layout. K/V blocks travel around
the ring by point-to-point sends (``batch_isend_irecv``), each step's transfer
overlapping the attention of the block in hand; only the ``Hk`` key/value heads
travel (GQA). Each block runs flashsdpa's kernel with its log-sum-exp, and the
partial results are merged in float32. With ``causal=True`` or a
``window_size``, each block runs only where its band has keys: blocks entirely
in the future or outside the window are skipped. The backward runs flashsdpa's
backward kernel per block against the merged output and log-sum-exp,
accumulates dq in float32 and sends the float32 dK/dV accumulators around the
ring back to their owners.

:func:`ring_flash_attn_varlen_func` does the same for packed sequences (piece
r of every sequence on rank r); it has no sliding windows, ALiBi or dropout,
and there is no zigzag varlen layout (each raises an error naming the argument).

ALiBi uses the global positions: the diagonal block runs the kernel's own
ALiBi; every other block lies wholly before or after its rows, so its bias
splits into a per-key float mask (the bias of the row nearest the keys,
broadcast over rows) and a per-row constant added to the block's lse.

Dropout: the kernels draw flashsdpa's Philox stream at block-local indices,
so the mask cannot be the single-process one. The rule: each call draws one
(seed, offset) from PyTorch's default generator on each rank; the sub-block
of query chunk a and key chunk c (chunks of S/W positions for ``ring_``,
S/2W for ``zigzag_``; the sub-block is the part of the pair inside the
causal/window band) draws its keep mask with (seed, offset + a * n + c),
n the number of chunks, at its local (row, key) indices, as
``fsdpa_dropout_mask`` defines. Every element of the global matrix is thus
kept independently with probability 1 - p, the backward regenerates each
block's mask, and the result equals single-process attention with that
mask (``_dropout_keep`` builds it; the tests check exactly this).
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

from . import _C, _checks, _ops
from ._api import _check_qkv
from ._ring_comm import Ring

__all__ = ["ring_flash_attn_func", "zigzag_ring_flash_attn_func", "ring_flash_attn_varlen_func",
           "shard"]

_KV_TAG, _DKV_TAG = 0, 1


def shard(x: Tensor, rank: int, world_size: int, zigzag: bool = False, dim: int = 1) -> Tensor:
    """This rank's part of the full sequence ``x`` (sequence along ``dim``)."""
    parts = 2 * world_size if zigzag else world_size
    if x.shape[dim] % parts:
        raise ValueError(f"x: sequence length {x.shape[dim]} is not a multiple of {parts}")
    chunks = x.chunk(parts, dim)
    if not zigzag:
        return chunks[rank]
    return torch.cat([chunks[rank], chunks[parts - 1 - rank]], dim)


# ---------------------------------------------------------------------------
# Which local queries see which local keys of a block. Every local sequence is
# one (ring) or two (zigzag) chunks, each a contiguous run of global positions;
# a (query chunk, key chunk) pair is one kernel call with its own band.


def _chunks(zigzag: bool, rank: int, world_size: int, s_local: int):
    """[(local slice, global start)] of a rank's local sequence."""
    if not zigzag:
        return [(slice(0, s_local), rank * s_local)]
    c = s_local // 2
    return [(slice(0, c), rank * c), (slice(c, s_local), (2 * world_size - 1 - rank) * c)]


def _band(offset: int, lq: int, lk: int, window_left: int, window_right: int):
    """Query row i of a chunk sees key j of another when
    ``i + offset - window_left <= j <= i + offset + window_right`` (offset: the
    query chunk's global start minus the key chunk's; -1 = unbounded). Returns
    None if no row sees any key, else (first row, first key, window_left',
    window_right') of the same band in the sub-problem rows[first row:] x
    keys[first key:] with top-left alignment, which is what the kernel takes."""
    lo = None if window_left < 0 else offset - window_left  # j >= i + lo
    hi = None if window_right < 0 else offset + window_right  # j <= i + hi
    if (hi is not None and lq - 1 + hi < 0) or (lo is not None and lo > lk - 1):
        return None
    if (lo is None or lq - 1 + lo <= 0) and (hi is None or hi >= lk - 1):
        return 0, 0, -1, -1  # every row sees every key
    first_key = lo if lo is not None and lo > 0 else 0  # keys no row sees
    first_row = -hi if hi is not None and hi < 0 else 0  # rows that see no key
    shift = first_row - first_key
    return (first_row, first_key, -1 if lo is None else -(lo + shift),
            -1 if hi is None else hi + shift)


class _Block(NamedTuple):
    """One kernel call of a ring step: local query rows x local key rows of
    the block in hand, with their top-left band; q_pos/k_pos are the global
    positions of the first row and key (None with varlen, where they differ
    per sequence) and pair numbers the (query chunk, key chunk) pair in the
    grid of chunks (the dropout stream of the pair)."""
    rows: slice
    keys: slice
    window_left: int
    window_right: int
    q_pos: Optional[int]
    k_pos: Optional[int]
    pair: int


def _sub_blocks(zigzag, rank, src, world_size, s_local, window_left, window_right):
    """[_Block] of the block from rank src."""
    out = []
    n_chunks = 2 * world_size if zigzag else world_size
    for q_rows, q_start in _chunks(zigzag, rank, world_size, s_local):
        for k_rows, k_start in _chunks(zigzag, src, world_size, s_local):
            lq, lk = q_rows.stop - q_rows.start, k_rows.stop - k_rows.start
            band = _band(q_start - k_start, lq, lk, window_left, window_right)
            if band is not None:
                r0, k0, wl, wr = band
                pair = (q_start // lq) * n_chunks + k_start // lk
                out.append(_Block(slice(q_rows.start + r0, q_rows.stop),
                                  slice(k_rows.start + k0, k_rows.stop), wl, wr,
                                  q_start + r0, k_start + k0, pair))
    return out


class _Layout:
    """Which global rows a rank's local rows are: contiguous slices (ring),
    chunks r and 2W-1-r (zigzag), or, with ``cu_seqlens``, piece r of W equal
    pieces of every packed sequence (varlen ring; tensors seen as (1, total, H, D))."""

    def __init__(self, zigzag: bool = False, cu_seqlens: Optional[Tensor] = None,
                 max_seqlen: int = 0):
        self.zigzag, self.cu_seqlens, self.max_seqlen = zigzag, cu_seqlens, int(max_seqlen)

    def sub_blocks(self, rank, src, world_size, s_local, window):
        if self.cu_seqlens is None:
            return _sub_blocks(self.zigzag, rank, src, world_size, s_local, *window)
        # Without windows (checked by the caller) a block's band depends only on
        # the order of the pieces, the same in every sequence.
        every = slice(0, s_local)
        pair = rank * world_size + src
        if window[1] < 0 or src < rank:  # not causal, or the past: all of it
            return [_Block(every, every, -1, -1, None, None, pair)]
        return [_Block(every, every, -1, 0, None, None, pair)] if src == rank else []

    def varlen(self):
        return None if self.cu_seqlens is None else (self.cu_seqlens, self.max_seqlen)


def _bhsd(t: Tensor) -> Tensor:
    return t.transpose(1, 2)


class _Extras(NamedTuple):
    """ALiBi slopes (float32 [Hq] or [B, Hq]) and dropout of one ring call;
    rng: the call's (seed, offset), int64 [2], drawn once per call and saved
    for the backward."""
    alibi: Optional[Tensor] = None
    dropout_p: float = 0.0
    rng: Optional[Tensor] = None


_NO_EXTRAS = _Extras()


def _alibi_terms(slopes: Optional[Tensor], blk: _Block, lq: int, lk: int):
    """ALiBi of a block at its global positions, as what the kernel takes:
    (float mask [B or 1, Hq, 1, lk] or None, kernel slopes or None, lse shift
    [B or 1, lq, Hq, 1] or None).

    The diagonal block (same positions, same length) is the kernel's own ALiBi,
    top-left. Any other block lies wholly before or after its rows, where
    -slope * |qpos_i - kpos_j| splits into a per-key term, the bias of the row
    nearest the keys (a float mask broadcast over rows), plus a per-row
    constant (slope times the row's distance from that nearest row), which
    leaves the softmax unchanged and shifts the block's lse by it: the kernel
    sees scores no larger in magnitude than the true ones, so this costs no
    precision, and no [lq, lk] bias is materialised."""
    if slopes is None:
        return None, None, None
    if blk.q_pos == blk.k_pos and lq == lk:
        return None, slopes, None
    s = slopes.reshape(-1, slopes.shape[-1])  # (B or 1, Hq)
    i = torch.arange(lq, device=slopes.device, dtype=torch.float32)
    j = torch.arange(lk, device=slopes.device, dtype=torch.float32)
    if blk.k_pos + lk <= blk.q_pos:  # keys in the past: nearest row is the first
        key_dist, row_dist = (blk.q_pos - blk.k_pos) - j, i
    elif blk.q_pos + lq <= blk.k_pos:  # keys in the future: nearest row is the last
        key_dist, row_dist = (blk.k_pos - blk.q_pos - lq + 1) + j, (lq - 1) - i
    else:
        raise AssertionError(f"block rows {blk.q_pos}+{lq} and keys {blk.k_pos}+{lk} overlap")
    mask = -s[:, :, None, None] * key_dist.view(1, 1, 1, lk)
    shift = s[:, None, :, None] * row_dist.view(1, lq, 1, 1)
    return mask, None, shift


def _block_rng(extras: _Extras, blk: _Block) -> Optional[Tensor]:
    """The dropout stream of a block: the call's seed, its offset + the block's pair number."""
    if extras.dropout_p <= 0.0:
        return None
    seed, offset = (int(x) for x in extras.rng.tolist())
    return torch.tensor([seed, (offset + blk.pair) & (2**63 - 1)], dtype=torch.int64)


def _block_forward(q, k, v, scale, blk, extras, varlen):
    """flashsdpa's forward on (B, S, H, D) views of one block, top-left
    aligned band (per sequence with varlen = (cu_seqlens, max_seqlen), B = 1);
    (out fp32 (B, S, H, D), lse (B, S, H, 1) at the block's global positions)."""
    check = _ops.default_check_finite(q.device)
    rng = _block_rng(extras, blk)
    if varlen is not None:
        cu, max_len = varlen
        out, lse = _ops.call_fwd(q[0], k[0], v[0], None, None, cu, cu, max_len, max_len, scale,
                                 False, False, blk.window_left, blk.window_right, 0.0,
                                 extras.dropout_p, rng, False, check, False)
        return out[None].float(), lse.transpose(0, 1)[None, :, :, None]
    mask, slopes, shift = _alibi_terms(extras.alibi, blk, q.shape[1], k.shape[1])
    out, lse = _ops.call_fwd(_bhsd(q), _bhsd(k), _bhsd(v), mask, slopes, None, None, 0, 0, scale,
                             False, False, blk.window_left, blk.window_right, 0.0,
                             extras.dropout_p, rng, False, check, True)
    lse = lse.transpose(1, 2).unsqueeze(-1)
    return _bhsd(out).float(), (lse if shift is None else lse - shift)


def _merge(out: Tensor, lse: Tensor, blk_out: Tensor, blk_lse: Tensor) -> None:
    """out, lse <- the softmax-weighted union of (out, lse) and the block's, in
    place, in float32. Rows without any visible key keep out = 0, lse = -inf."""
    top = torch.maximum(lse, blk_lse)
    top = torch.where(torch.isinf(top), torch.zeros_like(top), top)
    w_old, w_blk = torch.exp(lse - top), torch.exp(blk_lse - top)
    total = w_old + w_blk
    safe = torch.where(total > 0, total, torch.ones_like(total))
    out.mul_(w_old / safe).add_(blk_out * (w_blk / safe))
    lse.copy_(top + torch.log(total))


def _block_backward(dout, q, k, v, out, lse, scale, blk, extras, deterministic, varlen):
    """flashsdpa's backward of one block against the merged out and lse (B, H, S)."""
    rng = _block_rng(extras, blk)
    if varlen is not None:
        cu, max_len = varlen
        grads = _ops.bwd(dout[0], q[0], k[0], v[0], out[0], lse[0], None, None, cu, cu, max_len,
                         max_len, scale, False, False, blk.window_left, blk.window_right, 0.0,
                         extras.dropout_p, rng, deterministic, False)
        return tuple(g[None] for g in grads)
    mask, slopes, shift = _alibi_terms(extras.alibi, blk, q.shape[1], k.shape[1])
    if shift is not None:  # the lse of the scores the kernel sees
        lse = lse + shift.squeeze(-1).transpose(1, 2)
    dq, dk, dv = _ops.bwd(_bhsd(dout), _bhsd(q), _bhsd(k), _bhsd(v), _bhsd(out), lse, mask, slopes,
                          None, None, 0, 0, scale, False, False, blk.window_left,
                          blk.window_right, 0.0, extras.dropout_p, rng, deterministic, False)
    return _bhsd(dq), _bhsd(dk), _bhsd(dv)


def ring_forward(q, k, v, scale, window, layout, group, extras=_NO_EXTRAS):
    """The ring's forward on (B, S_local, H, D) tensors: (out in q's dtype,
    lse (B, Hq, S_local) float32). No autograd (see :class:`_RingAttention`)."""
    ring = Ring(group)
    b, s, hq, _ = q.shape
    if k.shape != v.shape:
        raise ValueError("k, v: context parallelism needs equal key and value shapes")
    out = q.new_zeros(q.shape[:-1] + v.shape[-1:], dtype=torch.float32)
    lse = q.new_full((b, s, hq, 1), float("-inf"), dtype=torch.float32)
    kv = torch.stack([k, v])
    for step in range(ring.world_size):
        transfer = ring.start(kv, _KV_TAG) if step + 1 < ring.world_size else None
        for blk in layout.sub_blocks(ring.rank, ring.source(step), ring.world_size, s, window):
            blk_out, blk_lse = _block_forward(q[:, blk.rows], kv[0][:, blk.keys],
                                              kv[1][:, blk.keys], scale, blk, extras,
                                              layout.varlen())
            _merge(out[:, blk.rows], lse[:, blk.rows], blk_out, blk_lse)
        if transfer is not None:
            kv = transfer.wait()
    return out.to(q.dtype), lse.squeeze(-1).transpose(1, 2).contiguous()


def ring_backward(dout, q, k, v, out, lse, scale, window, deterministic, layout, group,
                  extras=_NO_EXTRAS):
    """The ring's backward: (dq, dk, dv) of this rank's q, k, v (their dtypes),
    given the merged out and lse (B, Hq, S_local) of :func:`ring_forward`."""
    ring = Ring(group)
    s = q.shape[1]
    dout = dout.to(q.dtype)
    dq = torch.zeros_like(q, dtype=torch.float32)
    kv = torch.stack([k, v])
    dkv_transfer = None
    for step in range(ring.world_size):
        kv_transfer = ring.start(kv, _KV_TAG) if step + 1 < ring.world_size else None
        dkv = torch.zeros_like(kv, dtype=torch.float32)
        for blk in layout.sub_blocks(ring.rank, ring.source(step), ring.world_size, s, window):
            rows, keys = blk.rows, blk.keys
            dq_b, dk_b, dv_b = _block_backward(dout[:, rows], q[:, rows], kv[0][:, keys],
                                               kv[1][:, keys], out[:, rows], lse[:, :, rows],
                                               scale, blk, extras, deterministic,
                                               layout.varlen())
            dq[:, rows] += dq_b
            dkv[0][:, keys] += dk_b
            dkv[1][:, keys] += dv_b
        if dkv_transfer is not None:  # the accumulator of this block, from the previous rank
            dkv += dkv_transfer.wait()
        dkv_transfer = ring.start(dkv, _DKV_TAG)
        if kv_transfer is not None:
            kv = kv_transfer.wait()
    dkv = dkv_transfer.wait()  # our own block's, back from its trip around the ring
    return dq.to(q.dtype), dkv[0].to(k.dtype), dkv[1].to(v.dtype)


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, scale, window, deterministic, layout, group, extras):
        out, lse = ring_forward(q, k, v, scale, window, layout, group, extras)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.args = (scale, window, deterministic, layout, group, extras)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        scale, window, deterministic, layout, group, extras = ctx.args
        grads = ring_backward(dout, q, k, v, out, lse, scale, window, deterministic, layout,
                              group, extras)
        return grads + (None,) * 6


def _extras(q: Tensor, dropout_p, alibi_slopes: Optional[Tensor], varlen: bool) -> _Extras:
    p = _checks.dropout_p(dropout_p)
    if varlen and p > 0.0:
        raise NotImplementedError("dropout_p: dropout is not supported by the varlen ring")
    if alibi_slopes is not None:
        if varlen:
            raise NotImplementedError("alibi_slopes: ALiBi is not supported by the varlen ring")
        b, hq = q.shape[0], q.shape[2]
        if not isinstance(alibi_slopes, Tensor) or alibi_slopes.dtype != torch.float32:
            raise TypeError("alibi_slopes: expected a float32 torch.Tensor")
        if tuple(alibi_slopes.shape) not in ((hq,), (b, hq)):
            raise ValueError(f"alibi_slopes: expected shape ({hq},) or ({b}, {hq}), got "
                             f"{tuple(alibi_slopes.shape)}")
        if alibi_slopes.device != q.device:
            raise ValueError(f"alibi_slopes: on {alibi_slopes.device}, q on {q.device}")
    return _Extras(alibi_slopes, p, _ops.new_rng(p))


def _ring_attention(q, k, v, dropout_p, softmax_scale, causal, window_size, alibi_slopes,
                    deterministic, return_attn_probs, group, layout):
    wl, wr = (int(w) for w in window_size)
    window = (-1 if wl < 0 else wl, 0 if causal else (-1 if wr < 0 else wr))
    if layout.zigzag and q.shape[1] % 2:
        raise ValueError(f"q: zigzag needs an even local sequence length, got {q.shape[1]}")
    if k.shape[1] != q.shape[1]:
        raise ValueError(f"k: local sequence length {k.shape[1]} differs from q's {q.shape[1]}")
    extras = _extras(q, dropout_p, alibi_slopes, layout.cu_seqlens is not None)
    out, lse = _RingAttention.apply(q, k, v, softmax_scale, window, bool(deterministic), layout,
                                    group, extras)
    if return_attn_probs:
        return out, lse, None
    return out


def _dropout_keep(layout: "_Layout", rank: int, world_size: int, b: int, hq: int, hk: int,
                  s_local: int, window, dropout_p: float, rng: Tensor) -> Tensor:
    """The dropout keep mask a ring call with (seed, offset) = rng draws on
    rank ``rank``: bool [B, Hq, S_local, S] with the keys in global order (the
    rule of the module doc made explicit, for checks; padded layouts only)."""
    keep = torch.zeros(b, hq, s_local, s_local * world_size, dtype=torch.bool)
    extras = _Extras(None, dropout_p, rng)
    for src in range(world_size):
        for blk in layout.sub_blocks(rank, src, world_size, s_local, window):
            lq, lk = blk.rows.stop - blk.rows.start, blk.keys.stop - blk.keys.start
            p = _ops._params(None, False, False, -1, -1, 0.0, 0, 0, dropout_p,
                             _block_rng(extras, blk), False, False)
            sub = torch.empty(b, hq, lq, lk, dtype=torch.bool)
            _C.dropout_mask(p, torch.empty(b, hq, lq, 1), torch.empty(b, hk, lk, 1), sub)
            keep[:, :, blk.rows, blk.k_pos:blk.k_pos + lk] = sub
    return keep


def ring_flash_attn_func(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    dropout_p: float = 0.0,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    window_size: Tuple[int, int] = (-1, -1),
    alibi_slopes: Optional[Tensor] = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
    group: Optional[dist.ProcessGroup] = None,
):
    """Attention over a sequence cut into ``world_size`` contiguous slices, one
    per rank of ``group``: ``q`` ``(B, S_local, Hq, D)``, ``k``/``v``
    ``(B, S_local, Hk, D)``. Returns this rank's ``out`` ``(B, S_local, Hq, D)``
    and, with ``return_attn_probs``, ``(out, lse (B, Hq, S_local) float32, None)``."""
    _check_qkv(q, k, v, 4)
    return _ring_attention(q, k, v, dropout_p, softmax_scale, causal, window_size,
                           alibi_slopes, deterministic, return_attn_probs, group, _Layout())


def zigzag_ring_flash_attn_func(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    dropout_p: float = 0.0,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    window_size: Tuple[int, int] = (-1, -1),
    alibi_slopes: Optional[Tensor] = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
    group: Optional[dist.ProcessGroup] = None,
):
    """:func:`ring_flash_attn_func` with the zigzag layout: rank r holds chunks
    r and 2W-1-r of the sequence cut into 2W chunks (see :func:`shard`)."""
    _check_qkv(q, k, v, 4)
    return _ring_attention(q, k, v, dropout_p, softmax_scale, causal, window_size,
                           alibi_slopes, deterministic, return_attn_probs, group,
                           _Layout(zigzag=True))


def ring_flash_attn_varlen_func(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens: Tensor,
    max_seqlen: int,
    dropout_p: float = 0.0,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    window_size: Tuple[int, int] = (-1, -1),
    alibi_slopes: Optional[Tensor] = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
    group: Optional[dist.ProcessGroup] = None,
):
    """Packed sequences under context parallelism: every sequence is cut into
    ``world_size`` equal contiguous pieces and rank r holds piece r of each,
    packed: ``q`` ``(total_local, Hq, D)``, ``k``/``v`` ``(total_local, Hk, D)``,
    ``cu_seqlens`` the int32 ``(B + 1,)`` prefix sums of the local piece lengths
    (the same on every rank), ``max_seqlen`` the longest local piece. Returns
    ``out`` ``(total_local, Hq, D)`` and, with ``return_attn_probs``,
    ``(out, lse (Hq, total_local) float32, None)``. No sliding windows."""
    _check_qkv(q, k, v, 3)
    if not isinstance(cu_seqlens, Tensor) or cu_seqlens.dtype != torch.int32:
        raise TypeError("cu_seqlens: expected an int32 torch.Tensor")
    if tuple(int(w) for w in window_size) != (-1, -1):
        raise NotImplementedError("window_size: sliding windows are not supported by the varlen "
                                  "ring")
    res = _ring_attention(q[None], k[None], v[None], dropout_p, softmax_scale, causal,
                          window_size, alibi_slopes, deterministic, return_attn_probs, group,
                          _Layout(cu_seqlens=cu_seqlens, max_seqlen=max_seqlen))
    if return_attn_probs:
        return res[0][0], res[1][0], None
    return res[0]
