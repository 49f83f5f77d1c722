"""flash_attn_with_kvcache, paged / seqused_k varlen, merge_attn_states.

The truth is built independently of the library's cache addressing: the
test keeps its own model of the cache (appends and rotary done here with
plain loops), gathers each sequence's keys into a dense tensor, and runs
conftest.attention_ref on it in float64 (and in the input dtype for
FlashAttention's 2x error rule). Unused cache rows and pages are poisoned
with NaN, so reading one shows up as a non-finite output. The cache after
the call must equal the model exactly. Every test runs on each device of
conftest.DEVICES (the CPU, and CUDA when a GPU is present); on CUDA the
value checks are the caller's contract unless FLASHSDPA_CHECK_INDICES=1,
which the bad-input tests set there.
"""
from __future__ import annotations

import math

import pytest
import torch

import flashsdpa
from flashsdpa import _C
from conftest import DEVICES, LOWP, assert_close_rule, attention_ref

PAGE_SIZES = [None, 1, 16, 64, 256]  # None: a contiguous cache

CASES = {
    # name: (Sq, S_new, options)
    "decode": (1, 1, {}),
    "decode_gqa_causal": (1, 1, {"causal": True, "hk": 1}),
    "append_rotary_interleaved_causal": (4, 4, {"causal": True, "rotary": (32, True)}),
    "append_rotary_neox": (3, 3, {"rotary": (64, False)}),
    "no_append_window_softcap": (5, 0, {"causal": True, "window": (7, 0), "softcap": 4.0}),
    "batch_idx_append": (2, 2, {"causal": True, "batch_idx": True}),
    "leftpad_alibi": (3, 3, {"causal": True, "leftpad": True, "alibi": True}),
    "dv_ne_d_window": (2, 2, {"window": (16, 3), "d": 48, "dv": 80}),
    "prefill_chunk": (19, 19, {"causal": True, "rotary": (16, False), "hk": 2}),
    # > 64 query rows: the CPU packs K/V panels through the page table
    "prefill_long": (70, 70, {"causal": True, "hk": 2, "softcap": 6.0}),
}


def _rotate_ref(x, pos, cos, sin, interleaved):
    """Rotary embedding of x [S, H, D] (float32 math, rounded once) with
    per-token positions pos [S]: an independent statement of the formula,
    one feature pair at a time."""
    rd = 2 * cos.shape[1]
    out = x.float().clone()
    c, n = cos[pos].float(), sin[pos].float()  # [S, rd / 2]
    for j in range(rd // 2):
        a, b = (2 * j, 2 * j + 1) if interleaved else (j, j + rd // 2)
        xa, xb = x[:, :, a].float(), x[:, :, b].float()
        cj, nj = c[:, j:j + 1], n[:, j:j + 1]
        out[:, :, a] = xa * cj - xb * nj
        out[:, :, b] = xa * nj + xb * cj
    return out.to(x.dtype)


class CacheModel:
    """The test's own KV cache: where each (sequence, position) lives."""

    def __init__(self, gen, batch, rows, capacity, hk, d, dv, dtype, page_size):
        self.page_size, self.capacity = page_size, capacity
        if page_size is None:
            shape_k, shape_v = (rows, capacity, hk, d), (rows, capacity, hk, dv)
            self.block_table = None
        else:
            max_pages = -(-capacity // page_size)
            num_pages = rows * max_pages + 3  # spare pages, never referenced
            perm = torch.randperm(num_pages, generator=gen)[: rows * max_pages]
            self.block_table = perm.view(rows, max_pages).to(torch.int32)
            shape_k, shape_v = (num_pages, page_size, hk, d), (num_pages, page_size, hk, dv)
        self.k = torch.full(shape_k, float("nan"), dtype=dtype)
        self.v = torch.full(shape_v, float("nan"), dtype=dtype)

    def slots(self, row, begin, end):
        """(first, second) cache indices of positions [begin, end) of a row."""
        pos = torch.arange(begin, end)
        if self.page_size is None:
            return torch.full_like(pos, row), pos
        return self.block_table[row, pos // self.page_size].long(), pos % self.page_size

    def fill(self, gen, row, begin, end):
        i = self.slots(row, begin, end)
        self.k[i] = torch.randn((end - begin,) + self.k.shape[2:], generator=gen).to(self.k.dtype)
        self.v[i] = torch.randn((end - begin,) + self.v.shape[2:], generator=gen).to(self.v.dtype)

    def gather(self, row, begin, end):
        i = self.slots(row, begin, end)
        return self.k[i], self.v[i]


def _alibi_slopes(h):
    return torch.tensor([2.0 ** (-8.0 * (i + 1) / h) for i in range(h)], dtype=torch.float32)


def _setup(case, page_size, dtype, seed=0):
    sq, s_new, o = CASES[case]
    gen = torch.Generator().manual_seed(seed)
    batch, hq, hk = 3, 8, o.get("hk", 4)
    d, dv = o.get("d", 64), o.get("dv", o.get("d", 64))
    capacity = 300
    rows = batch + 2 if o.get("batch_idx") else batch
    model = CacheModel(gen, batch, rows, capacity, hk, d, dv, dtype, page_size)
    batch_idx = (torch.randperm(rows, generator=gen)[:batch].to(torch.int32)
                 if o.get("batch_idx") else None)
    row_of = batch_idx.tolist() if batch_idx is not None else list(range(batch))
    seqlens = torch.tensor([0, 131, capacity - s_new - 5], dtype=torch.int32)[:batch]
    if s_new == 0:
        seqlens = torch.tensor([1, 131, capacity], dtype=torch.int32)[:batch]
    leftpad = (torch.tensor([0, 40, 200], dtype=torch.int32)[:batch] if o.get("leftpad") else None)
    for b in range(batch):
        begin = int(leftpad[b]) if leftpad is not None else 0
        model.fill(gen, row_of[b], begin, int(seqlens[b]))
    q = torch.randn(batch, sq, hq, d, generator=gen).to(dtype)
    k_new = torch.randn(batch, s_new, hk, d, generator=gen).to(dtype) if s_new else None
    v_new = torch.randn(batch, s_new, hk, dv, generator=gen).to(dtype) if s_new else None
    rot = None
    if "rotary" in o:
        rd, interleaved = o["rotary"]
        theta = 1.0 / (10000 ** (torch.arange(0, rd, 2).float() / rd))
        ang = torch.arange(capacity).float().unsqueeze(1) * theta
        rot = (ang.cos().to(dtype), ang.sin().to(dtype), interleaved)
    return dict(sq=sq, s_new=s_new, o=o, batch=batch, hq=hq, hk=hk, model=model,
                batch_idx=batch_idx, row_of=row_of, seqlens=seqlens, leftpad=leftpad, q=q,
                k_new=k_new, v_new=v_new, rot=rot)


def _expected(s, dtype):
    """Model the append (and rotary), then each sequence's truth."""
    m, o = s["model"], s["o"]
    windowed = o.get("causal") or "window" in o
    outs64, outs_lp = [], []
    for b in range(s["batch"]):
        row, c = s["row_of"][b], int(s["seqlens"][b])
        q = s["q"][b]
        if s["s_new"]:
            k_new, v_new = s["k_new"][b], s["v_new"][b]
            if s["rot"] is not None:
                cos, sin, inter = s["rot"]
                k_new = _rotate_ref(k_new, torch.arange(c, c + s["s_new"]), cos, sin, inter)
                qpos = torch.arange(c, c + s["sq"]) if windowed else torch.full((s["sq"],), c)
                q = _rotate_ref(q, qpos, cos, sin, inter)
            slots = m.slots(row, c, c + s["s_new"])
            m.k[slots], m.v[slots] = k_new, v_new
        begin = int(s["leftpad"][b]) if s["leftpad"] is not None else 0
        k, v = m.gather(row, begin, c + s["s_new"])
        kw = {"causal": o.get("causal", False), "window": o.get("window", (-1, -1)),
              "softcap": o.get("softcap", 0.0)}
        if o.get("alibi"):
            kw["alibi"] = _alibi_slopes(s["hq"])
        qh, kh, vh = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        outs64.append(attention_ref(qh.double(), kh.double(), vh.double(), **kw)[0].transpose(0, 1))
        lp = qh.float() if dtype == torch.float32 else qh
        outs_lp.append(attention_ref(lp, kh.to(lp.dtype), vh.to(lp.dtype), **kw)[0].transpose(0, 1))
    return torch.stack(outs64), torch.stack(outs_lp)


def _to(t, device):
    return None if t is None else t.to(device)


def _run(s, page_size, return_lse=False, device="cpu"):
    """The call on `device`; returns its result (on the device) and the
    caches after it (on the CPU)."""
    m, o = s["model"], s["o"]
    k_cache, v_cache = m.k.clone().to(device), m.v.clone().to(device)
    kw = dict(k=_to(s["k_new"], device), v=_to(s["v_new"], device),
              cache_batch_idx=_to(s["batch_idx"], device), cache_leftpad=_to(s["leftpad"], device),
              block_table=_to(m.block_table, device), causal=o.get("causal", False),
              window_size=o.get("window", (-1, -1)), softcap=o.get("softcap", 0.0),
              return_softmax_lse=return_lse)
    kw["cache_seqlens"] = _to(s["seqlens"], device)
    if s["rot"] is not None:
        cos, sin, kw["rotary_interleaved"] = s["rot"]
        kw["rotary_cos"], kw["rotary_sin"] = cos.to(device), sin.to(device)
    if o.get("alibi"):
        kw["alibi_slopes"] = _alibi_slopes(s["hq"]).to(device)
    res = flashsdpa.flash_attn_with_kvcache(s["q"].to(device), k_cache, v_cache, **kw)
    return res, k_cache.cpu(), v_cache.cpu()


def _grid():
    """bf16 (the serving dtype): every case on every cache layout (but one). fp32 and
    fp16: every case on the contiguous cache and on one page size, rotating
    through the sizes, so each dtype meets every layout while CI time stays
    bounded."""
    grid = []
    for n, case in enumerate(CASES):
        # prefill_long's low-precision torch reference is the slow part of
        # this file: two bf16 layouts only.
        for page in PAGE_SIZES if case != "prefill_long" else (None, 16):
            grid.append((case, page, torch.bfloat16))
        for m, dtype in enumerate((torch.float32, torch.float16)):
            paged = PAGE_SIZES[1:]
            grid += [(case, None, dtype), (case, paged[(n + 2 * m) % len(paged)], dtype)]
    return grid


@pytest.mark.parametrize("case,page_size,dtype", _grid(),
                         ids=lambda x: x if isinstance(x, str) else
                         (str(x).replace("torch.", "") if isinstance(x, torch.dtype)
                          else (f"page{x}" if x else "contig")))
@pytest.mark.parametrize("device", DEVICES)
def test_with_kvcache(case, page_size, dtype, device):
    s = _setup(case, page_size, dtype)
    (out, lse), k_cache, v_cache = _run(s, page_size, return_lse=True, device=device)
    ref64, ref_lp = _expected(s, dtype)
    assert_close_rule(f"{case} out", out, ref_lp, ref64, dtype)
    assert lse.shape == (s["batch"], s["hq"], s["sq"]) and lse.dtype == torch.float32
    # The cache: appended rows where they belong, every other row (NaN poison
    # included) untouched. equal_nan: unused rows stay NaN.
    assert torch.equal(k_cache.isnan(), s["model"].k.isnan()), "k_cache: NaN rows moved"
    assert torch.equal(torch.nan_to_num(k_cache), torch.nan_to_num(s["model"].k)), "k_cache differs"
    assert torch.equal(torch.nan_to_num(v_cache), torch.nan_to_num(s["model"].v)), "v_cache differs"
    assert torch.equal(v_cache.isnan(), s["model"].v.isnan()), "v_cache: NaN rows moved"


@pytest.mark.parametrize("device", DEVICES)
def test_lse_matches_reference(device):
    s = _setup("leftpad_alibi", 16, torch.float32)
    (out, lse), _, _ = _run(s, 16, return_lse=True, device=device)
    lse = lse.cpu()
    _expected(s, torch.float32)  # appends to the model
    m = s["model"]
    for b in range(s["batch"]):
        begin = int(s["leftpad"][b])
        k, v = m.gather(s["row_of"][b], begin, int(s["seqlens"][b]) + s["s_new"])
        # lse of sequence b from the dense fp64 scores (keys renumbered from leftpad)
        q = s["q"][b].double().transpose(0, 1)  # [H, Sq, D]
        kk = k.double().transpose(0, 1).repeat_interleave(s["hq"] // s["hk"], 0)
        sc = q @ kk.transpose(-1, -2) / math.sqrt(q.shape[-1])
        sq, sk = sc.shape[-2], sc.shape[-1]
        i, j = torch.arange(sq).view(-1, 1), torch.arange(sk).view(1, -1)
        sc = sc - _alibi_slopes(s["hq"]).double().view(-1, 1, 1) * (i + sk - sq - j).abs()
        sc = sc.masked_fill(j > i + sk - sq, float("-inf"))
        ref = torch.logsumexp(sc, -1)
        assert torch.allclose(lse[b].double(), ref, atol=1e-4, rtol=1e-5), f"lse of sequence {b}"


@pytest.mark.parametrize("page_size", [None, 16])
def test_c_reference_reads_the_cache(page_size):
    """The C++ fp64 reference, given the KV-cache parameters, agrees with the
    test's gathered truth (so it is a valid oracle for other backends)."""
    s = _setup("batch_idx_append", page_size, torch.float32)
    _, k_cache, v_cache = _run(s, page_size)
    ref64, _ = _expected(s, torch.float32)
    p = _C.Params()
    p.causal, p.align = True, _C.ALIGN_BOTTOM_RIGHT
    q = s["q"].double().transpose(1, 2)
    out = torch.empty(q.shape[:-1] + (v_cache.shape[-1],), dtype=torch.float64)
    bt = s["model"].block_table
    _C.reference_forward(p, q, k_cache.double().transpose(1, 2), v_cache.double().transpose(1, 2),
                         out, None,
                         seqused_k=s["seqlens"] + s["s_new"], cache_batch_idx=s["batch_idx"],
                         block_table=bt)
    assert torch.allclose(out.transpose(1, 2), ref64, atol=1e-5, rtol=1e-5)


def test_cache_seqlens_int_and_no_append():
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, 1, 4, 32, generator=gen)
    kc, vc = torch.randn(2, 50, 2, 32, generator=gen), torch.randn(2, 50, 2, 32, generator=gen)
    out = flashsdpa.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=20)
    ref = attention_ref(q.transpose(1, 2).double(), kc[:, :20].transpose(1, 2).double(),
                        vc[:, :20].transpose(1, 2).double()).transpose(1, 2)
    assert torch.allclose(out.double(), ref, atol=1e-5)
    # No cache_seqlens: the whole cache is used.
    out = flashsdpa.flash_attn_with_kvcache(q, kc, vc)
    ref = attention_ref(q.transpose(1, 2).double(), kc.transpose(1, 2).double(),
                        vc.transpose(1, 2).double()).transpose(1, 2)
    assert torch.allclose(out.double(), ref, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("page_size", [None, 1, 16])
def test_varlen_paged_and_seqused(page_size, device):
    """flash_attn_varlen_func with block_table / seqused_k (chunked prefill)."""
    gen = torch.Generator().manual_seed(5)
    hq, hk, d, cap = 4, 2, 32, 96
    seqlens_q, used = [3, 1, 7], [40, 0, 96]
    rows = len(used)
    model = CacheModel(gen, rows, rows, cap, hk, d, d, torch.float32, page_size)
    for b, u in enumerate(used):
        model.fill(gen, b, 0, u)
    q = torch.randn(sum(seqlens_q), hq, d, generator=gen)
    cu_q = torch.tensor([0, 3, 4, 11], dtype=torch.int32)
    seqused = torch.tensor(used, dtype=torch.int32)
    if page_size is None:  # varlen k/v: sequence b's keys start at cu_seqlens_k[b]
        k = torch.cat([model.gather(b, 0, cap)[0] for b in range(rows)])
        v = torch.cat([model.gather(b, 0, cap)[1] for b in range(rows)])
        cu_k = torch.tensor([0, cap, 2 * cap, 3 * cap], dtype=torch.int32)
        bt = None
    else:
        k, v, bt = model.k, model.v, model.block_table
        cu_k = torch.tensor([0, cap, 2 * cap, 3 * cap], dtype=torch.int32)
    out, lse = flashsdpa.flash_attn_varlen_func(
        q.to(device), k.to(device), v.to(device), cu_q.to(device), cu_k.to(device),
        max(seqlens_q), cap, causal=True, return_lse=True, block_table=_to(bt, device),
        seqused_k=seqused.to(device))
    out, lse = out.cpu(), lse.cpu()
    assert lse.shape == (hq, q.shape[0])
    for b in range(rows):
        qb = q[cu_q[b]:cu_q[b + 1]]
        kb, vb = model.gather(b, 0, used[b])
        ref = attention_ref(qb.transpose(0, 1).unsqueeze(0).double(),
                            kb.transpose(0, 1).unsqueeze(0).double(),
                            vb.transpose(0, 1).unsqueeze(0).double(), causal=True)[0].transpose(0, 1)
        assert torch.allclose(out[cu_q[b]:cu_q[b + 1]].double(), ref, atol=2e-5), f"sequence {b}"
        if used[b] == 0:
            assert (out[cu_q[b]:cu_q[b + 1]] == 0).all()
            assert (lse[:, cu_q[b]:cu_q[b + 1]] == float("-inf")).all()


def test_decode_uses_threads_over_keys():
    """Sq = 1, one head: the keys are split between threads; same result as
    one thread, within the split's rounding."""
    gen = torch.Generator().manual_seed(9)
    q = torch.randn(1, 1, 1, 64, generator=gen)
    kc, vc = torch.randn(1, 4096, 1, 64, generator=gen), torch.randn(1, 4096, 1, 64, generator=gen)
    n = flashsdpa.get_num_threads()
    try:
        flashsdpa.set_num_threads(1)
        one = flashsdpa.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=4000)
        flashsdpa.set_num_threads(2)
        two = flashsdpa.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=4000)
    finally:
        flashsdpa.set_num_threads(n)
    assert torch.allclose(one, two, atol=1e-6)


# ---------------------------------------------------------------------------
# merge_attn_states


def _merge_ref(oa, la, ob, lb):
    """fp64 merge, FlashAttention layouts out (B, S, H, D), lse (B, H, S)."""
    la64, lb64 = la.double().transpose(1, 2), lb.double().transpose(1, 2)
    m = torch.maximum(la64, lb64)
    safe = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    wa, wb = torch.exp(la64 - safe), torch.exp(lb64 - safe)
    s = wa + wb
    lse = torch.where(s > 0, safe + torch.log(s), torch.full_like(s, float("-inf")))
    ca = torch.where(s > 0, wa / s, torch.zeros_like(s)).unsqueeze(-1)
    cb = torch.where(s > 0, wb / s, torch.zeros_like(s)).unsqueeze(-1)
    oa64 = torch.where(ca > 0, oa.double(), torch.zeros_like(oa, dtype=torch.float64))
    ob64 = torch.where(cb > 0, ob.double(), torch.zeros_like(ob, dtype=torch.float64))
    return ca * oa64 + cb * ob64, lse.transpose(1, 2)


@pytest.mark.parametrize("dtype", LOWP, ids=str)
def test_merge_splits_equal_whole(dtype):
    """Attention over keys [0, n) merged from [0, m) and [m, n) equals the
    whole, within FlashAttention's rule; -inf rows (a part with no key)
    contribute nothing; both empty gives 0 / -inf."""
    gen = torch.Generator().manual_seed(11)
    b, sq, hq, d, sk, cut = 2, 5, 4, 40, 97, 30
    q = torch.randn(b, sq, hq, d, generator=gen).to(dtype)
    k = torch.randn(b, sk, hq, d, generator=gen).to(dtype)
    v = torch.randn(b, sk, hq, d, generator=gen).to(dtype)
    oa, la = flashsdpa.flash_attn_func(q, k[:, :cut], v[:, :cut], return_lse=True)
    ob, lb = flashsdpa.flash_attn_func(q, k[:, cut:], v[:, cut:], return_lse=True)
    out, lse = flashsdpa.merge_attn_states(oa, la, ob, lb)
    whole, whole_lse = flashsdpa.flash_attn_func(q, k, v, return_lse=True)
    ref = attention_ref(q.transpose(1, 2).double(), k.transpose(1, 2).double(),
                        v.transpose(1, 2).double()).transpose(1, 2)
    # A merge rounds twice (each part, then the sum): bound it by the whole's error.
    err = (out.double() - ref).abs().max().item()
    err_whole = (whole.double() - ref).abs().max().item()
    assert err <= 3 * err_whole + 4 * torch.finfo(dtype).eps, (err, err_whole)
    assert torch.allclose(lse, whole_lse, atol=1e-5, rtol=1e-5)
    assert out.dtype == dtype and lse.dtype == torch.float32


MERGE_DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and "cuda" in flashsdpa.backends() else [])


@pytest.mark.parametrize("device", MERGE_DEVICES)
def test_merge_inf_rows_and_noncontiguous(device):
    gen = torch.Generator().manual_seed(12)
    b, s, h, d = 2, 6, 3, 20
    # Non-contiguous: every other element of a wider buffer, transposed lse.
    oa = torch.randn(b, s, h, 2 * d, generator=gen).to(device)[..., ::2]
    ob = torch.randn(b, s, h, d, generator=gen).transpose(0, 1).contiguous().to(device).transpose(0, 1)
    la = torch.randn(b, s, h, generator=gen).to(device).transpose(1, 2)  # (B, H, S) view
    lb = torch.randn(b, h, s, generator=gen).to(device) * 3
    la[0, 0, 0] = float("-inf")                       # only b contributes
    lb[0, 1, 2] = float("-inf")                       # only a contributes
    la[1, 2, 5] = lb[1, 2, 5] = float("-inf")         # neither: 0 / -inf
    oa[0, 0, 0] = float("nan")                        # an empty part's values are not read
    ob[1, 5, 2] = float("nan")
    oa[1, 5, 2] = float("inf")
    assert not oa.is_contiguous() and not la.is_contiguous() and not ob.is_contiguous()
    out, lse = flashsdpa.merge_attn_states(oa, la, ob, lb)
    ref, ref_lse = _merge_ref(oa, la, ob, lb)
    assert torch.isfinite(out).all()
    assert torch.allclose(out.double(), ref, atol=1e-6)
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse))
    assert torch.allclose(lse.double(), ref_lse, atol=1e-6)
    assert (out[1, 5, 2] == 0).all() and lse[1, 2, 5] == float("-inf")
    assert torch.equal(out[0, 0, 0], ob[0, 0, 0])


def test_merge_varlen_layout():
    gen = torch.Generator().manual_seed(13)
    oa, ob = torch.randn(9, 2, 16, generator=gen), torch.randn(9, 2, 16, generator=gen)
    la, lb = torch.randn(2, 9, generator=gen), torch.randn(2, 9, generator=gen)
    out, lse = flashsdpa.merge_attn_states(oa, la, ob, lb)
    ref, ref_lse = _merge_ref(oa.unsqueeze(0), la.unsqueeze(0), ob.unsqueeze(0), lb.unsqueeze(0))
    assert lse.shape == (2, 9)
    assert torch.allclose(out.double(), ref[0], atol=1e-6)
    assert torch.allclose(lse.double(), ref_lse[0], atol=1e-6)


def test_merge_bad_input():
    o = torch.randn(1, 2, 3, 4)
    lse = torch.zeros(1, 3, 2)
    with pytest.raises(ValueError, match="lse_b"):
        flashsdpa.merge_attn_states(o, lse, o, torch.zeros(1, 2, 3))
    bad = lse.clone()
    bad[0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="lse_a.*NaN"):
        flashsdpa.merge_attn_states(o, bad, o, lse)
    bad[0, 1, 1] = float("inf")
    with pytest.raises(ValueError, match=r"lse_b.*\+inf"):
        flashsdpa.merge_attn_states(o, lse, o, bad)
    with pytest.raises(TypeError, match="out_b: dtype"):
        flashsdpa.merge_attn_states(o, lse, o.half(), lse)


# ---------------------------------------------------------------------------
# bad input: every message names the argument, the cache stays untouched


@pytest.fixture(params=DEVICES)
def checked_device(request, monkeypatch):
    """A device whose KV-cache values are checked: the CPU always; CUDA with
    the debug check on (FLASHSDPA_CHECK_INDICES=1)."""
    if request.param != "cpu":
        monkeypatch.setenv("FLASHSDPA_CHECK_INDICES", "1")
    return request.param


def _paged_setup(device="cpu"):
    gen = torch.Generator().manual_seed(21)
    q = torch.randn(2, 1, 4, 16, generator=gen)
    kc = torch.randn(6, 16, 2, 16, generator=gen)
    vc = torch.randn(6, 16, 2, 16, generator=gen)
    bt = torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.int32)
    return q.to(device), kc.to(device), vc.to(device), bt.to(device)


def test_bad_block_table_raises(checked_device):
    device = checked_device
    q, kc, vc, bt = _paged_setup(device)
    i32 = dict(dtype=torch.int32, device=device)
    bad = bt.clone()
    bad[1, 1] = 6  # one past the pool
    with pytest.raises(ValueError, match=r"block_table: entry \[1, 1\] is 6"):
        flashsdpa.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=torch.tensor([5, 20], **i32),
                                          block_table=bad)
    bad[1, 1] = -1
    with pytest.raises(ValueError, match="block_table"):
        flashsdpa.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=torch.tensor([5, 20], **i32),
                                          block_table=bad)
    # An entry past the used pages is never read: fine.
    bad = bt.clone()
    bad[0, 2] = 99
    flashsdpa.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=torch.tensor([5, 20], **i32),
                                      block_table=bad)
    # An append into a bad page raises before writing anything.
    bad = bt.clone()
    bad[0, 1] = 77
    k_new = torch.randn(2, 1, 2, 16, device=device)
    before = kc.clone()
    with pytest.raises(ValueError, match="block_table"):
        flashsdpa.flash_attn_with_kvcache(q, kc, vc, k=k_new, v=k_new,
                                          cache_seqlens=torch.tensor([16, 3], **i32),
                                          block_table=bad)
    assert torch.equal(kc, before)


def test_bad_cache_arguments_raise(checked_device):
    device = checked_device
    q, kc, vc, bt = _paged_setup(device)
    i32 = dict(dtype=torch.int32, device=device)
    k_new = torch.randn(2, 2, 2, 16, device=device)
    before = kc.clone()
    with pytest.raises(ValueError, match="exceeds the cache length 48"):
        flashsdpa.flash_attn_with_kvcache(q, kc, vc, k=k_new, v=k_new,
                                          cache_seqlens=torch.tensor([47, 3], **i32),
                                          block_table=bt)
    assert torch.equal(kc, before)
    with pytest.raises(ValueError, match="cache_seqlens: entry 0 is 49"):
        flashsdpa.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=torch.tensor([49, 3], **i32),
                                          block_table=bt)
    with pytest.raises(ValueError, match="cache_seqlens: entry 1 is -2"):
        flashsdpa.flash_attn_with_kvcache(q, kc[:2], vc[:2],
                                          cache_seqlens=torch.tensor([4, -2], **i32))
    with pytest.raises(TypeError, match="cache_seqlens: dtype"):
        flashsdpa.flash_attn_with_kvcache(q, kc[:2], vc[:2],
                                          cache_seqlens=torch.tensor([4, 2], device=device))
    with pytest.raises(ValueError, match="cache_batch_idx: entry 1 is 2"):
        flashsdpa.flash_attn_with_kvcache(q, kc[:2], vc[:2], cache_seqlens=3,
                                          cache_batch_idx=torch.tensor([0, 2], **i32))
    with pytest.raises(ValueError, match="cache_leftpad: entry 0 is 9"):
        flashsdpa.flash_attn_with_kvcache(q, kc[:2], vc[:2], cache_seqlens=5,
                                          cache_leftpad=torch.tensor([9, 0], **i32))
    with pytest.raises(ValueError, match="cache_seqlens: required"):
        flashsdpa.flash_attn_with_kvcache(q, kc[:2], vc[:2], k=k_new, v=k_new)
    with pytest.raises(ValueError, match="rotary_cos: has 4 positions"):
        flashsdpa.flash_attn_with_kvcache(q, kc[:2], vc[:2], k=k_new, v=k_new, cache_seqlens=3,
                                          rotary_cos=torch.ones(4, 8, device=device),
                                          rotary_sin=torch.zeros(4, 8, device=device))


def test_other_devices_are_refused_before_writing():
    """A device without KV-cache kernels (Metal/MPS so far; "meta" stands in
    for it on any machine) is refused with the reason before the append."""
    q, kc, vc, bt = (t.to("meta") for t in _paged_setup())
    with pytest.raises(RuntimeError, match="KV-cache path .* is not supported on meta"):
        flashsdpa.flash_attn_with_kvcache(q, kc, vc, k=kc[:2, :1], v=vc[:2, :1],
                                          cache_seqlens=3, block_table=bt)


@pytest.mark.parametrize("device", DEVICES)
def test_c_abi_checks_values(device):
    """The C ABI itself (not only the Python wrapper) rejects bad values (on
    CUDA through the debug check that check_finite = 1, the default of a
    fresh Params, turns on)."""
    q, kc, vc, bt = _paged_setup(device)
    i32 = dict(dtype=torch.int32, device=device)
    p = _C.Params()
    out = torch.empty(2, 4, 1, 16, device=device)
    bad = bt.clone()
    bad[0, 0] = 100
    with pytest.raises(ValueError, match=r"block_table: entry \[0, 0\] is 100"):
        _C.forward(p, q.transpose(1, 2), kc.transpose(1, 2), vc.transpose(1, 2), out,
                   seqused_k=torch.tensor([3, 3], **i32), block_table=bad)
    with pytest.raises(ValueError, match="seqused_k: entry 1 is 49"):
        _C.forward(p, q.transpose(1, 2), kc.transpose(1, 2), vc.transpose(1, 2), out,
                   seqused_k=torch.tensor([3, 49], **i32), block_table=bt)
    with pytest.raises(ValueError, match="mask: not supported together with the KV-cache"):
        _C.forward(p, q.transpose(1, 2), kc.transpose(1, 2), vc.transpose(1, 2), out,
                   mask=torch.ones(1, 1, dtype=torch.bool, device=device),
                   seqused_k=torch.tensor([3, 3], **i32), block_table=bt)
    with pytest.raises(ValueError, match="v: size of dim 2 \\(page_size\\)"):
        _C.forward(p, q.transpose(1, 2), kc.transpose(1, 2), vc[:, :8].transpose(1, 2), out,
                   block_table=bt)


# ---------------------------------------------------------------------------
# A tiny random Hugging Face Llama generating through flash_attn_with_kvcache


class _PagedModelCache:
    """One paged KV cache per layer, as a serving engine keeps it."""

    def __init__(self, cfg, batch, capacity, page_size, gen):
        hk = cfg.num_key_value_heads
        d = cfg.hidden_size // cfg.num_attention_heads
        pages = -(-capacity // page_size)
        perm = torch.randperm(batch * pages, generator=gen)
        self.block_table = perm.view(batch, pages).to(torch.int32)
        shape = (batch * pages, page_size, hk, d)
        self.k = [torch.full(shape, float("nan")) for _ in range(cfg.num_hidden_layers)]
        self.v = [torch.full(shape, float("nan")) for _ in range(cfg.num_hidden_layers)]
        self.seqlens = torch.zeros(batch, dtype=torch.int32)


def test_hf_llama_generates_with_paged_cache():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96,
                                   num_hidden_layers=2, num_attention_heads=8,
                                   num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(6)
    model = transformers.LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa").eval()
    prompt = torch.randint(0, 97, (2, 11))
    new_tokens = 16
    with torch.no_grad():
        expected = model.generate(prompt, attention_mask=torch.ones_like(prompt),
                                  max_new_tokens=new_tokens, do_sample=False, min_new_tokens=new_tokens)
    cache = _PagedModelCache(cfg, 2, 64, 16, torch.Generator().manual_seed(0))

    calls = []

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
        # HF hands over this step's rotated q/k/v (B, H, S, D); the cache is ours.
        li = module.layer_idx
        calls.append(li)
        out = flashsdpa.flash_attn_with_kvcache(
            query.transpose(1, 2), cache.k[li], cache.v[li], k=key.transpose(1, 2),
            v=value.transpose(1, 2), cache_seqlens=cache.seqlens, block_table=cache.block_table,
            softmax_scale=scaling, causal=True)
        return out, None

    transformers.AttentionInterface.register("paged_kv_cache_test", attention)
    transformers.AttentionMaskInterface.register(
        "paged_kv_cache_test", transformers.masking_utils.sdpa_mask)
    model.set_attn_implementation("paged_kv_cache_test")
    try:
        ids, step = prompt, prompt
        with torch.no_grad():
            for _ in range(new_tokens):
                pos = cache.seqlens.long().unsqueeze(1) + torch.arange(step.shape[1])
                logits = model(input_ids=step, position_ids=pos, use_cache=False).logits
                cache.seqlens += step.shape[1]
                step = logits[:, -1].argmax(-1, keepdim=True)
                ids = torch.cat([ids, step], dim=1)
    finally:
        model.set_attn_implementation("sdpa")
    assert len(calls) == new_tokens * cfg.num_hidden_layers
    assert torch.equal(ids, expected), (ids, expected)
