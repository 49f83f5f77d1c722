"""flashsdpa.distributed on CPU: 2, 3 and 4 gloo processes on 127.0.0.1.
Every rank checks its slice of out, lse, dq, dk, dv against attention over the
whole sequence in one process, with FlashAttention's 2x rule (truth: fp64;
same-precision reference: PyTorch's math SDPA in the test dtype), for ring and
zigzag layouts and packed sequences (varlen), causal or not, sliding windows,
MHA and GQA, float32 and bfloat16, ALiBi at global positions, dropout (the
reference uses the mask the documented per-block rule draws, whose drop rate
and block independence are checked too), and that no value is NaN."""
from __future__ import annotations

import pytest
import torch

from flashsdpa import distributed as fd
from dist_harness import run_ranks

CASES = [  # (layout, causal, window_size, hq, hk, dtype)
    (layout, causal, (-1, -1), hq, hk, dtype)
    for layout in ("ring", "zigzag")
    for causal in (False, True)
    for hq, hk in ((4, 4), (4, 2))
    for dtype in (torch.float32, torch.bfloat16)
]
# sliding windows that cut through chunks (5 rows per zigzag chunk, 10 per ring slice)
RING_WINDOWS, ZIGZAG_WINDOWS = ([(layout, causal, window, 4, 2, dtype)
                                 for causal, window, dtype in ((True, (7, -1), torch.float32),
                                                               (False, (5, 3), torch.bfloat16),
                                                               (False, (-1, 12), torch.float32))]
                                for layout in ("ring", "zigzag"))
# 2 ranks run every case; 3 and 4 ranks (each case costs them more) run one
# case per layout and mask, pairing MHA with fp32 and GQA with bf16 so that
# both dtypes and both head layouts are still covered.
SUBSET = [c for c in CASES if (c[3] == c[4]) == (c[5] == torch.float32)
          and (c[3] == c[4]) == ((c[0] == "ring") == c[1])]
# ALiBi (global positions; [Hq] or per-batch [B, Hq] slopes) and dropout
# (the documented per-block rule), in both layouts, causal or not, with a window
EXTRA_CASES = [  # (layout, causal, window_size, hq, hk, dtype, extra)
    ("ring", True, (-1, -1), 4, 2, torch.float32, "alibi"),
    ("zigzag", True, (-1, -1), 4, 4, torch.bfloat16, "alibi"),
    ("ring", False, (-1, -1), 4, 4, torch.bfloat16, "alibi_batch"),
    ("zigzag", False, (7, 3), 4, 2, torch.float32, "alibi"),
    ("ring", False, (-1, -1), 4, 2, torch.bfloat16, "dropout"),
    ("zigzag", True, (-1, -1), 4, 4, torch.float32, "dropout"),
    ("zigzag", False, (6, -1), 4, 2, torch.float32, "alibi_dropout"),
]
EXTRA_SUBSET = [c for c in EXTRA_CASES if c[1]]  # the causal ones: every layout and extra
CASES_BY_WORLD = {2: [c + (None,) for c in CASES + RING_WINDOWS + ZIGZAG_WINDOWS] + EXTRA_CASES,
                  3: [c + (None,) for c in SUBSET + RING_WINDOWS] + EXTRA_SUBSET,
                  4: [c + (None,) for c in SUBSET + ZIGZAG_WINDOWS] + EXTRA_SUBSET}
DROP_P = 0.3


def _global_keep(world, zigzag, b, hq, hk, s_total, window, rng):
    """The whole sequence's dropout keep mask [B, Hq, S, S] that the ranks' ring
    calls drew with (seed, offset) = rng on every rank."""
    layout = fd._Layout(zigzag=zigzag)
    rows = torch.arange(s_total)
    keep = torch.zeros(b, hq, s_total, s_total, dtype=torch.bool)
    for r in range(world):
        keep[:, :, fd.shard(rows, r, world, zigzag, dim=0)] = fd._dropout_keep(
            layout, r, world, b, hq, hk, s_total // world, window, DROP_P, rng)
    return keep


def _check_keep_statistics(keep, allowed, n_chunks, what):
    """Every attended element is kept with probability 1 - p, and no two
    chunk pairs (whole blocks inside the band) draw the same mask."""
    import math

    kept = keep[:, :, allowed]
    rate = 1.0 - kept.double().mean().item()
    sigma = math.sqrt(DROP_P * (1 - DROP_P) / kept.numel())
    assert abs(rate - DROP_P) < 5 * sigma, f"{what}: drop rate {rate:.4f} vs p={DROP_P}"
    c = keep.shape[-1] // n_chunks
    blocks = [keep[..., a * c:(a + 1) * c, e * c:(e + 1) * c] for a in range(n_chunks)
              for e in range(n_chunks) if allowed[a * c:(a + 1) * c, e * c:(e + 1) * c].all()]
    for x in range(len(blocks)):
        for y in range(x):
            assert not torch.equal(blocks[x], blocks[y]), f"{what}: two blocks share a mask"


def _check_case(rank, world, layout, causal, window, hq, hk, dtype, extra):
    from conftest import assert_close_rule, attention_ref, torch_math_sdpa
    from flashsdpa import _ops

    zigzag = layout == "zigzag"
    b, d = 2, 16
    s_total = 2 * world * 5  # 5 rows per zigzag chunk, 10 per ring slice
    g = torch.Generator().manual_seed(1000 + 7 * hq + hk + int(causal))
    q = torch.randn(b, s_total, hq, d, generator=g)
    k = torch.randn(b, s_total, hk, d, generator=g)
    v = torch.randn(b, s_total, hk, d, generator=g)
    dout = torch.randn(b, s_total, hq, d, generator=g)
    slopes = None
    if extra is not None and extra.startswith("alibi"):
        slopes = torch.rand((b, hq) if extra == "alibi_batch" else (hq,), generator=g) + 0.2
    dropout_p = DROP_P if extra is not None and extra.endswith("dropout") else 0.0

    i, j = torch.arange(s_total).view(-1, 1), torch.arange(s_total).view(1, -1)
    allowed = torch.ones(s_total, s_total, dtype=torch.bool)
    if window[0] >= 0:
        allowed &= j >= i - window[0]
    if causal:
        allowed &= j <= i
    elif window[1] >= 0:
        allowed &= j <= i + window[1]

    keep, seed = None, 5000 + world
    if dropout_p:
        torch.manual_seed(seed)
        keep = _global_keep(world, zigzag, b, hq, hk, s_total,
                            (window[0], 0 if causal else window[1]), _ops.new_rng(dropout_p))
        _check_keep_statistics(keep, allowed, 2 * world if zigzag else world,
                               f"world {world} {layout}")

    def full(q_, k_, v_):  # single-process attention over the whole sequence, (B, S, H, D)
        t = (q_.transpose(1, 2), k_.transpose(1, 2), v_.transpose(1, 2))
        if slopes is None and keep is None:
            o = torch_math_sdpa(*t, attn_mask=allowed, enable_gqa=True)
        else:
            o = attention_ref(*t, causal=causal, window=window, alibi=slopes, keep=keep,
                              dropout_p=dropout_p)
        return o.transpose(1, 2)

    def grads(fn, ts, do):
        ts = [t.detach().clone().requires_grad_() for t in ts]
        o = fn(*ts)
        return [o.detach()] + list(torch.autograd.grad(o, ts, do.to(o.dtype)))

    ref = grads(full, [t.double() for t in (q, k, v)], dout.double())
    pt = grads(full, [t.to(dtype) for t in (q, k, v)], dout)

    fn = fd.zigzag_ring_flash_attn_func if zigzag else fd.ring_flash_attn_func
    local = [fd.shard(t.to(dtype), rank, world, zigzag).requires_grad_() for t in (q, k, v)]
    torch.manual_seed(seed)  # every rank draws the (seed, offset) _global_keep used
    out, lse, probs = fn(*local, dropout_p=dropout_p, causal=causal, window_size=window,
                         alibi_slopes=slopes, return_attn_probs=True)
    assert probs is None and lse.dtype == torch.float32 and lse.shape == (b, hq, local[0].shape[1])
    ours = [out.detach()] + list(torch.autograd.grad(out, local,
                                                     fd.shard(dout, rank, world, zigzag).to(dtype)))
    what = (f"world {world} rank {rank} {layout} causal={causal} window={window} hq={hq} "
            f"hk={hk} {dtype} {extra}")
    for name, a, bb, c in zip(["out", "dq", "dk", "dv"], ours, pt, ref):
        assert a.dtype == dtype, f"{what} {name}: dtype {a.dtype}"
        assert not torch.isnan(a).any(), f"{what} {name}: NaN"
        assert_close_rule(f"{what} {name}", a, fd.shard(bb, rank, world, zigzag),
                          fd.shard(c, rank, world, zigzag), dtype)
    # lse: the natural-log log-sum-exp of this rank's rows over the whole
    # sequence (of the scores before dropout, as in FlashAttention)
    q64, k64 = (t.to(dtype).double() for t in (q, k))  # the inputs the kernels saw
    s = torch.einsum("bqhd,bkhd->bhqk", q64, k64.repeat_interleave(hq // hk, 2))
    s = s / d ** 0.5
    if slopes is not None:
        s = s - slopes.double().view(-1, hq, 1, 1) * (i - j).abs()
    s = s.masked_fill(~allowed, float("-inf"))
    full_lse = torch.logsumexp(s, -1)
    torch.testing.assert_close(lse.double(), fd.shard(full_lse, rank, world, zigzag, dim=2),
                               atol=1e-4, rtol=1e-4, msg=what + " lse")


VARLEN_CASES = {2: [(c, d) for c in (False, True) for d in (torch.float32, torch.bfloat16)],
                3: [(False, torch.bfloat16), (True, torch.float32)],
                4: [(False, torch.float32), (True, torch.bfloat16)]}


def _check_varlen_case(rank, world, causal, dtype):
    """ring_flash_attn_varlen_func: piece `rank` of every packed sequence."""
    from conftest import assert_close_rule, torch_math_sdpa

    hq, hk, d = 4, 2, 16
    local_lengths = [3, 1, 6]
    lengths = [n * world for n in local_lengths]
    g = torch.Generator().manual_seed(2000 + int(causal))
    q, k, v, dout = (torch.randn(sum(lengths), h, d, generator=g) for h in (hq, hk, hk, hq))
    starts = [sum(lengths[:i]) for i in range(len(lengths))]

    def local_rows(x):  # piece `rank` of each sequence, packed
        return torch.cat([x[s + rank * n: s + (rank + 1) * n]
                          for s, n in zip(starts, local_lengths)])

    def full(q_, k_, v_):  # each whole sequence on its own, in one process
        outs = []
        for s, n in zip(starts, lengths):
            sl = slice(s, s + n)
            o = torch_math_sdpa(q_[sl].transpose(0, 1)[None], k_[sl].transpose(0, 1)[None],
                                v_[sl].transpose(0, 1)[None], is_causal=causal, enable_gqa=True)
            outs.append(o[0].transpose(0, 1))
        return torch.cat(outs)

    def grads(fn, ts, do):
        ts = [t.detach().clone().requires_grad_() for t in ts]
        o = fn(*ts)
        return [o.detach()] + list(torch.autograd.grad(o, ts, do.to(o.dtype)))

    ref = grads(full, [t.double() for t in (q, k, v)], dout.double())
    pt = grads(full, [t.to(dtype) for t in (q, k, v)], dout)
    cu = torch.tensor([0] + torch.tensor(local_lengths).cumsum(0).tolist(), dtype=torch.int32)
    local = [local_rows(t.to(dtype)).requires_grad_() for t in (q, k, v)]
    out, lse, _ = fd.ring_flash_attn_varlen_func(*local, cu, max(local_lengths), causal=causal,
                                                 return_attn_probs=True)
    assert lse.shape == (hq, local[0].shape[0])
    ours = [out.detach()] + list(torch.autograd.grad(out, local, local_rows(dout).to(dtype)))
    what = f"varlen world {world} rank {rank} causal={causal} {dtype}"
    for name, a, bb, c in zip(["out", "dq", "dk", "dv"], ours, pt, ref):
        assert not torch.isnan(a).any(), f"{what} {name}: NaN"
        assert_close_rule(f"{what} {name}", a, local_rows(bb), local_rows(c), dtype)


def _all_cases(rank, world):
    for case in CASES_BY_WORLD[world]:
        _check_case(rank, world, *case)
    for case in VARLEN_CASES[world]:
        _check_varlen_case(rank, world, *case)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_context_parallel_matches_single_process(world):
    run_ranks(_all_cases, world)


def test_unsupported_arguments_raise_clear_errors():
    q = torch.randn(1, 4, 2, 8)
    cu = torch.tensor([0, 4], dtype=torch.int32)
    with pytest.raises(NotImplementedError, match="dropout_p"):
        fd.ring_flash_attn_varlen_func(q[0], q[0], q[0], cu, 4, dropout_p=0.1)
    with pytest.raises(NotImplementedError, match="alibi_slopes"):
        fd.ring_flash_attn_varlen_func(q[0], q[0], q[0], cu, 4, alibi_slopes=torch.ones(2))
    with pytest.raises(ValueError, match="alibi_slopes: expected shape"):
        fd.zigzag_ring_flash_attn_func(q, q, q, alibi_slopes=torch.ones(3))
    with pytest.raises(TypeError, match="alibi_slopes: expected a float32"):
        fd.zigzag_ring_flash_attn_func(q, q, q, alibi_slopes=torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="dropout_p"):
        fd.ring_flash_attn_func(q, q, q, dropout_p=1.5)
    with pytest.raises(RuntimeError, match="not initialised"):
        fd.ring_flash_attn_func(q, q, q)
    with pytest.raises(NotImplementedError, match="window_size"):
        fd.ring_flash_attn_varlen_func(q[0], q[0], q[0], torch.tensor([0, 4], dtype=torch.int32),
                                       4, window_size=(2, 0))
    with pytest.raises(TypeError, match="cu_seqlens"):
        fd.ring_flash_attn_varlen_func(q[0], q[0], q[0], torch.tensor([0, 4]), 4)
    with pytest.raises(ValueError, match="multiple of 4"):
        fd.shard(torch.randn(1, 6, 1, 1), 0, 2, zigzag=True)


def test_merge_keeps_rows_without_keys_finite():
    """Partials of rows that see nothing (lse -inf) merge without NaN: a row
    empty in both stays out 0, lse -inf; a row empty in one takes the other."""
    out = torch.zeros(1, 3, 1, 2)
    lse = torch.tensor([-float("inf"), -float("inf"), 0.5]).view(1, 3, 1, 1)
    blk_out = torch.tensor([[0.0, 0.0], [1.0, 2.0], [3.0, 4.0]]).view(1, 3, 1, 2)
    blk_lse = torch.tensor([-float("inf"), 0.25, -float("inf")]).view(1, 3, 1, 1)
    out[0, 2, 0] = torch.tensor([5.0, 6.0])
    fd._merge(out, lse, blk_out, blk_lse)
    assert not out.isnan().any() and not lse.isnan().any()
    assert torch.equal(out[0, 0, 0], torch.zeros(2)) and lse[0, 0, 0, 0] == -float("inf")
    assert torch.equal(out[0, 1, 0], torch.tensor([1.0, 2.0])) and lse[0, 1, 0, 0] == 0.25
    assert torch.equal(out[0, 2, 0], torch.tensor([5.0, 6.0])) and lse[0, 2, 0, 0] == 0.5


def test_band_matches_the_mask_it_stands_for():
    """_band's sub-problem (rows and keys cut off, top-left band) selects exactly
    the (row, key) pairs of the global band, for every offset and window."""
    for lq, lk in ((5, 5), (4, 7)):
        for offset in range(-12, 13):
            for wl in (-1, 0, 2, 6):
                for wr in (-1, 0, 3):
                    i, j = torch.arange(lq).view(-1, 1), torch.arange(lk).view(1, -1)
                    want = torch.ones(lq, lk, dtype=torch.bool)
                    if wl >= 0:
                        want &= j >= i + offset - wl
                    if wr >= 0:
                        want &= j <= i + offset + wr
                    band = fd._band(offset, lq, lk, wl, wr)
                    got = torch.zeros(lq, lk, dtype=torch.bool)
                    if band is not None:
                        r0, k0, bl, br = band
                        ii, jj = i[r0:] - r0, j[:, k0:] - k0
                        sub = torch.ones(lq - r0, lk - k0, dtype=torch.bool)
                        if bl >= 0:
                            sub &= jj >= ii - bl
                        if br >= 0:
                            sub &= jj <= ii + br
                        got[r0:, k0:] = sub
                    assert torch.equal(got, want), (lq, lk, offset, wl, wr, band)
                    assert band is None or want.any(), "an empty band must be skipped"
