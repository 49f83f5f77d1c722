"""flashsdpa.block_sparse_attention: FlexAttention's BlockMask (and the raw
block lists) against a dense-mask fp64 reference, forward and gradients; the
memory of a long call; errors."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import flashsdpa
from flashsdpa import BlockLists, _ops
from conftest import assert_close_rule

try:  # FlexAttention (PyTorch >= 2.5) builds BlockMasks; the raw lists need no FlexAttention.
    from torch.nn.attention.flex_attention import create_block_mask, create_mask
except ImportError:
    create_block_mask = create_mask = None

needs_flex = pytest.mark.skipif(
    create_block_mask is None,
    reason=f"PyTorch {torch.__version__} has no torch.nn.attention.flex_attention (added in 2.5): "
           "no BlockMask to pass")


def _create_block_mask_keeps_block_size() -> bool:
    """False on PyTorch 2.5, whose create_block_mask builds the lists with the
    BLOCK_SIZE asked for but labels the BlockMask with the default 128, and
    calls mask_mod on indices up to the lengths rounded up to whole blocks."""
    bm = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, 256, 256, device="cpu",
                           BLOCK_SIZE=64)
    return tuple(bm.BLOCK_SIZE) == (64, 64)


KEEPS_BLOCK_SIZE = create_block_mask is None or _create_block_mask_keeps_block_size()


def block_mask(mask_mod, b, h, sq, sk, device, block):
    """create_block_mask(..., BLOCK_SIZE=block). On PyTorch 2.5 (above) the
    BlockMask such a user would build by hand: mask_mod given in-range indices
    while PyTorch builds the lists, which are then labelled with their real
    block size (BlockMask.from_kv_blocks) and carry the caller's mask_mod."""
    if KEEPS_BLOCK_SIZE:
        return create_block_mask(mask_mod, b, h, sq, sk, device=device, BLOCK_SIZE=block)
    from torch.nn.attention.flex_attention import BlockMask

    def in_range(b_, h_, qi, ki):
        return mask_mod(b_, h_, qi.clamp(max=sq - 1), ki.clamp(max=sk - 1))

    bm = create_block_mask(in_range, b, h, sq, sk, device=device, BLOCK_SIZE=block)
    bq, bk = (block, block) if isinstance(block, int) else block
    return BlockMask.from_kv_blocks(bm.kv_num_blocks, bm.kv_indices, bm.full_kv_num_blocks,
                                    bm.full_kv_indices, BLOCK_SIZE=(bq, bk), mask_mod=mask_mod)


def dense_attention(q, k, v, mask, scale=None):
    """Softmax attention with a dense bool mask [B|1, H|1, Sq, Sk]; rows that
    see no key give 0 (flashsdpa's semantics). GQA by repeating k/v."""
    g = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(g, 1)
    v = v.repeat_interleave(g, 1)
    s = (q @ k.transpose(-1, -2)) * (scale if scale is not None else q.shape[-1] ** -0.5)
    s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s.float() if s.dtype != torch.float64 else s, -1).nan_to_num(0.0)
    return p.to(v.dtype) @ v


def grads(fn, tensors, dout):
    ts = [t.detach().clone().requires_grad_(True) for t in tensors]
    out = fn(*ts)
    return [out.detach()] + [g.detach() for g in torch.autograd.grad(out, ts, dout.to(out.dtype))]


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and _ops.device_available("cuda")
                     else [])


def _to(block_mask, device):
    if isinstance(block_mask, BlockLists):
        return BlockLists(*(None if t is None else t.to(device) for t in (
            block_mask.kv_num_blocks, block_mask.kv_indices, block_mask.kv_block_mask,
            block_mask.full_kv_num_blocks, block_mask.full_kv_indices)), block_mask.block_size)
    return block_mask.to(device)


def check_against_dense(q, k, v, block_mask, dense, dtype, device="cpu", **kw):
    """block_sparse_attention (on `device`) vs the dense mask: ours within 2x
    the error of the same-precision dense computation (CPU), both measured
    against fp64."""
    torch.manual_seed(5)
    dout = torch.randn(q.shape[:-1] + (v.shape[-1],), dtype=torch.float64)
    ins = [t.to(dtype) for t in (q, k, v)]
    bm = _to(block_mask, device)
    ours = grads(lambda a, b, c: flashsdpa.block_sparse_attention(a, b, c, bm, **kw),
                 [t.to(device) for t in ins], dout.to(device))
    same = grads(lambda a, b, c: dense_attention(a, b, c, dense), ins, dout)
    ref = grads(lambda a, b, c: dense_attention(a, b, c, dense), [t.double() for t in ins], dout)
    for name, o, s, r in zip(("out", "dq", "dk", "dv"), ours, same, ref):
        assert_close_rule(name, o, s, r, dtype)


def causal_window(w):
    return lambda b, h, qi, ki: (qi >= ki) & (qi - ki < w)


def prefix_lm(prefix):
    return lambda b, h, qi, ki: (ki < prefix) | (qi >= ki)


def document(doc_ids):
    return lambda b, h, qi, ki: doc_ids[qi] == doc_ids[ki]


def per_head_stride(b, h, qi, ki):
    # Differs per head: head h sees keys j with (j // 8 + h) % 3 != 0, causal.
    return ((ki // 8 + h) % 3 != 0) & (qi >= ki)


def lists_of(mask_mod, sq, sk, block):
    """The BlockLists of mask_mod(b=0, h=0, q_idx, kv_idx) [Sq, Sk] with square
    blocks of `block`, built densely here (no FlexAttention): full blocks where
    every in-range element is kept, partial ones (with their element masks)
    where some are."""
    nqb, nkb = -(-sq // block), -(-sk // block)
    qi = torch.arange(nqb * block).clamp(max=sq - 1).view(-1, 1)
    ki = torch.arange(nkb * block).clamp(max=sk - 1).view(1, -1)
    inside = (torch.arange(nqb * block) < sq).view(-1, 1) & (torch.arange(nkb * block) < sk)
    dense = mask_mod(torch.tensor(0), torch.tensor(0), qi, ki) & inside
    tiles = dense.view(nqb, block, nkb, block).transpose(1, 2)  # [NQB, NKB, bq, bk]
    inside_tiles = inside.view(nqb, block, nkb, block).transpose(1, 2)
    full = (tiles == inside_tiles).all(-1).all(-1)
    partial = tiles.any(-1).any(-1) & ~full

    def as_lists(keep):
        num = keep.sum(-1).to(torch.int32).view(1, 1, nqb)
        order = torch.argsort((~keep).to(torch.int8), dim=-1, stable=True)
        return num, order.to(torch.int32).view(1, 1, nqb, nkb)

    num, idx = as_lists(partial)
    elem = torch.gather(tiles, 1, idx[0, 0].long().view(nqb, nkb, 1, 1).expand_as(tiles))
    full_num, full_idx = as_lists(full)
    return BlockLists(num, idx, elem.view(1, 1, nqb, nkb, block, block), full_num, full_idx,
                      (block, block))


def _inputs(b, hq, hk, sq, sk, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, hq, sq, d, generator=g, dtype=torch.float64),
            torch.randn(b, hk, sk, d, generator=g, dtype=torch.float64),
            torch.randn(b, hk, sk, d, generator=g, dtype=torch.float64))


@needs_flex
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("pattern,b,h,block", [
    ("causal_window", 1, 1, 64),
    ("prefix_lm", 2, 1, 32),
    ("document", 1, 1, (32, 64)),
    ("per_head", 1, 4, 16),
    ("block_causal", 1, 1, 64),  # block-aligned: no partial block, the full lists alone
])
def test_block_mask_matches_dense(pattern, b, h, block, dtype, device):
    sq = sk = 301  # not a multiple of any block size
    hq, hk = 4, 2  # GQA
    q, k, v = _inputs(2, hq, hk, sq, sk, 40)
    doc_ids = torch.repeat_interleave(torch.arange(4), torch.tensor([70, 100, 31, 100]))

    def mask_mod(dev):  # a mask_mod's captured tensors live where its BlockMask does
        return {"causal_window": causal_window(90), "prefix_lm": prefix_lm(50),
                "document": document(doc_ids.to(dev)), "per_head": per_head_stride,
                "block_causal": lambda b, h, qi, ki: qi // 64 >= ki // 64}[pattern]

    bb, hh = b if b > 1 else None, h if h > 1 else None
    bm = block_mask(mask_mod(device), bb, hh, sq, sk, device, block)
    dense = create_mask(mask_mod("cpu"), bb, hh, sq, sk, device="cpu")
    check_against_dense(q, k, v, bm, dense, dtype, device, enable_gqa=True)


@needs_flex
def test_mask_built_for_longer_sequences_is_cut():
    """A BlockMask made for 512 tokens on 300-token inputs (FlexAttention
    accepts it): its lists are cut to the inputs' blocks (the band reaches
    key blocks past the 300 keys)."""
    mm = lambda b, h, qi, ki: (qi - ki).abs() < 100
    bm = block_mask(mm, None, None, 512, 512, "cpu", 64)
    dense = create_mask(mm, None, None, 300, 300, device="cpu")
    q, k, v = _inputs(1, 2, 2, 300, 300, 32)
    check_against_dense(q, k, v, bm, dense, torch.float32)


class _BlockMaskOf25:
    """A BlockMask as PyTorch 2.5 has it: no ``seq_lengths``; its ``shape``
    is whole blocks."""

    def __init__(self, bm):
        self._bm = bm

    def __getattr__(self, name):
        if name == "seq_lengths":
            raise AttributeError(name)
        return getattr(self._bm, name)

    @property
    def shape(self):
        *batch, nqb, nkb = self._bm.kv_indices.shape
        return (*batch, nqb * self._bm.BLOCK_SIZE[0], nkb * self._bm.BLOCK_SIZE[1])

    def to(self, device):
        return _BlockMaskOf25(self._bm.to(device))


@needs_flex
def test_block_mask_without_seq_lengths():
    """A BlockMask without ``seq_lengths`` (PyTorch 2.5's): its whole-block
    extent (384 here) is cut to the inputs' 300 tokens, and mask_mod sees
    indices within them (document() indexes a 300-entry tensor)."""
    sq = sk = 300
    doc_ids = torch.repeat_interleave(torch.arange(3), torch.tensor([90, 130, 80]))
    mm = document(doc_ids)
    bm = _BlockMaskOf25(block_mask(mm, None, None, sq, sk, "cpu", 128))
    assert bm.shape[-2:] == (384, 384) and not hasattr(bm, "seq_lengths")
    dense = create_mask(mm, None, None, sq, sk, device="cpu")
    q, k, v = _inputs(1, 2, 2, sq, sk, 32)
    check_against_dense(q, k, v, bm, dense, torch.float32)


def test_block_lists_without_element_mask_are_full_blocks():
    """The low-level form: partial lists without kv_block_mask attend their
    blocks entirely; an empty query block gives 0."""
    sq, sk, bq, bk = 100, 130, 16, 32
    nqb, nkb = (sq + bq - 1) // bq, (sk + bk - 1) // bk
    g = torch.Generator().manual_seed(3)
    keep = torch.rand(1, 1, nqb, nkb, generator=g) < 0.5
    keep[..., 2, :] = False  # query block 2 sees nothing
    num = keep.sum(-1).to(torch.int32)
    idx = torch.argsort((~keep).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    lists = BlockLists(kv_num_blocks=num, kv_indices=idx, block_size=(bq, bk))
    dense = keep.repeat_interleave(bq, 2).repeat_interleave(bk, 3)[..., :sq, :sk]
    q, k, v = _inputs(1, 2, 2, sq, sk, 24)
    check_against_dense(q, k, v, lists, dense, torch.float32)
    out = flashsdpa.block_sparse_attention(q.float(), k.float(), v.float(), lists)
    assert (out[:, :, 2 * bq:3 * bq] == 0).all()


@needs_flex
def test_combined_with_causal_and_dropout_matches_flashsdpa_dense():
    """Dropout draws the same Philox mask as the dense-mask SDPA call with the
    same seed (the keep decision depends on (b, h, i, j) only)."""
    sq = 200
    mm = prefix_lm(40)
    bm = block_mask(mm, None, None, sq, sq, "cpu", 64)
    dense = create_mask(mm, None, None, sq, sq, device="cpu")
    causal = torch.ones(sq, sq, dtype=torch.bool).tril()
    q, k, v = (t.float() for t in _inputs(1, 2, 2, sq, sq, 32))
    torch.manual_seed(11)
    ours = flashsdpa.block_sparse_attention(q, k, v, bm, is_causal=True, dropout_p=0.3)
    torch.manual_seed(11)
    theirs = flashsdpa.scaled_dot_product_attention(q, k, v, attn_mask=dense & causal,
                                                    dropout_p=0.3)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_softcap_and_alibi_match_the_fp64_reference():
    """softcap and ALiBi on top of the lists, against the C++ fp64 oracle with
    the same lists."""
    from flashsdpa import _C
    sq, sk = 150, 170
    lists = lists_of(causal_window(60), sq, sk, 32)
    q, k, v = (t.float() for t in _inputs(1, 2, 1, sq, sk, 16))
    slopes = torch.tensor([0.5, 0.25])
    out = flashsdpa.block_sparse_attention(q, k, v, lists, softcap=3.0, alibi_slopes=slopes,
                                           enable_gqa=True)
    p = _C.Params()
    p.softcap = 3.0
    p.sparse_block_q, p.sparse_block_k = lists.block_size
    ref = torch.empty(out.shape, dtype=torch.float64)
    _C.reference_forward(p, q, k, v, ref, None, None, slopes, kv_num_blocks=lists.kv_num_blocks,
                         kv_indices=lists.kv_indices, kv_block_mask=lists.kv_block_mask,
                         full_kv_num_blocks=lists.full_kv_num_blocks,
                         full_kv_indices=lists.full_kv_indices)
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-5)


def test_bad_lists_raise_naming_the_argument():
    sq = 64
    bm = lists_of(causal_window(20), sq, sq, 16)
    idx = bm.kv_indices.clone()
    idx[0, 0, 1, 0] = 99
    bad = BlockLists(bm.kv_num_blocks, idx, None, bm.full_kv_num_blocks, bm.full_kv_indices,
                     (16, 16))
    q = torch.randn(1, 1, sq, 8)
    with pytest.raises(ValueError, match="kv_indices: entry \\[0, 0, 1, 0\\] is 99"):
        flashsdpa.block_sparse_attention(q, q, q, bad)
    wrong = BlockLists(bm.kv_num_blocks.long(), bm.kv_indices, block_size=(16, 16))
    with pytest.raises(TypeError, match="kv_num_blocks: unsupported dtype int64"):
        flashsdpa.block_sparse_attention(q, q, q, wrong)
    with pytest.raises(ValueError, match="enable_gqa=True"):
        flashsdpa.block_sparse_attention(q.expand(1, 2, sq, 8), q, q, bm)


def test_other_devices_refuse_with_a_clear_error():
    """MPS (and any device but CPU and CUDA) raises before touching the data
    (checked with meta tensors, which every machine has)."""
    q = torch.empty(1, 1, 128, 16, device="meta")
    lists = BlockLists(full_kv_num_blocks=torch.ones(1, 1, 1, dtype=torch.int32),
                       full_kv_indices=torch.zeros(1, 1, 1, 1, dtype=torch.int32))
    with pytest.raises(RuntimeError, match="block-sparse mask is not supported on meta"):
        flashsdpa.block_sparse_attention(q, q, q, lists)


@pytest.mark.parametrize("device", DEVICES)
def test_block_lists_on_device_without_element_mask(device):
    """The raw lists with partial blocks only (no element mask), a block size
    unlike the kernels' tiles, on each device."""
    sq, sk, bq, bk = 300, 517, 48, 80
    nqb, nkb = (sq + bq - 1) // bq, (sk + bk - 1) // bk
    g = torch.Generator().manual_seed(4)
    keep = torch.rand(1, 2, nqb, nkb, generator=g) < 0.4
    num = keep.sum(-1).to(torch.int32)
    idx = torch.argsort((~keep).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    lists = BlockLists(kv_num_blocks=num, kv_indices=idx, block_size=(bq, bk))
    dense = keep.repeat_interleave(bq, 2).repeat_interleave(bk, 3)[..., :sq, :sk]
    q, k, v = _inputs(1, 2, 1, sq, sk, 64)
    check_against_dense(q, k, v, lists, dense, torch.bfloat16, device, enable_gqa=True)


_MEMORY_SCRIPT = textwrap.dedent("""
    import inspect, sys, torch, flashsdpa
    from torch.nn.attention.flex_attention import BlockMask

    S, H, D, BLK = int(sys.argv[1]), 2, 32, 128
    n = S // BLK
    # BigBird-style: a window of 3 blocks, 1 global block, 2 random blocks,
    # built as block lists directly (create_block_mask would evaluate
    # mask_mod on all S x S elements).
    g = torch.Generator().manual_seed(0)
    rows = []
    for qb in range(n):
        blocks = {0, max(qb - 1, 0), qb, min(qb + 1, n - 1)}
        blocks |= set(torch.randint(0, n, (2,), generator=g).tolist())
        rows.append(sorted(blocks))
    # One slot per key block, as BlockMask builds them (PyTorch 2.7 derives its
    # transposed lists from that width).
    full_num = torch.tensor([[[len(r) for r in rows]]], dtype=torch.int32)
    full_idx = torch.zeros(1, 1, n, n, dtype=torch.int32)
    for qb, r in enumerate(rows):
        full_idx[0, 0, qb, :len(r)] = torch.tensor(r, dtype=torch.int32)
    empty_num = torch.zeros(1, 1, n, dtype=torch.int32)
    empty_idx = torch.zeros(1, 1, n, n, dtype=torch.int32)
    # seq_lengths: PyTorch >= 2.6 (S is whole blocks, the extent 2.5 assumes)
    extra = ({"seq_lengths": (S, S)} if "seq_lengths" in
             inspect.signature(BlockMask.from_kv_blocks).parameters else {})
    bm = BlockMask.from_kv_blocks(empty_num, empty_idx, full_num, full_idx, BLOCK_SIZE=BLK,
                                  **extra)
    q, k, v = (torch.randn(1, H, S, D, requires_grad=True) for _ in range(3))
    # Warm-up (thread pool, per-thread scratch) on 2 blocks, outside the measurement.
    warm = flashsdpa.BlockLists(full_kv_num_blocks=torch.ones(1, 1, 2, dtype=torch.int32),
                                full_kv_indices=torch.zeros(1, 1, 2, 1, dtype=torch.int32),
                                block_size=(BLK, BLK))
    flashsdpa.block_sparse_attention(q[:, :, :2 * BLK], k[:, :, :2 * BLK], v[:, :, :2 * BLK],
                                     warm).sum().backward()
    q.grad = k.grad = v.grad = None
    def status_kib(field):
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith(field + ":"))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak (VmHWM) to the current resident size
    before = status_kib("VmRSS")
    out = flashsdpa.block_sparse_attention(q, k, v, bm)
    out.sum().backward()
    peak = status_kib("VmHWM")
    print(max(peak - before, 0) * 1024, q.numel() * 4)
""")


def _peak_growth(S: int):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(S)], capture_output=True,
                       text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    growth, q_bytes = (int(x) for x in r.stdout.split())
    print(f"S={S}: peak RSS growth {growth / 2**20:.1f} MiB (one q tensor {q_bytes / 2**20:.1f} MiB)")
    return growth


@needs_flex
@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="reads the peak resident size from /proc (Linux)")
def test_long_sequence_memory_is_linear():
    """Forward + backward with a BigBird-style BlockMask at S and 2S tokens
    (16k and 32k by default; FLASHSDPA_SPARSE_MEMORY_S=65536 runs 64k and
    128k). What is measured: in a fresh process per size, the growth of the
    peak resident set size (VmHWM, reset just before the call through
    /proc/self/clear_refs) over the resident size then; it bounds every
    allocation of the call (torch's and the library's: out, the gradients,
    the packed panels and dQ accumulators). Doubling S must less than triple
    it (an O(S^2) term would quadruple it), and at 2S it must stay below an
    eighth of one 2S x 2S bool mask."""
    S = int(os.environ.get("FLASHSDPA_SPARSE_MEMORY_S", 16384))
    small, large = _peak_growth(S), _peak_growth(2 * S)
    assert large < 3 * small, f"growth {small} -> {large} bytes when S doubles: not O(S)"
    assert large < (2 * S) ** 2 // 8, f"{large} bytes at S={2 * S}: O(S^2)"
