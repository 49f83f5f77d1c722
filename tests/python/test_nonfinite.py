"""NaN / Inf inputs (issue 25): with the SDPA patch, flashsdpa propagates
them as PyTorch's math backend does, wherever the NaN/Inf is attended
(include/flashsdpa/flashsdpa.h, "NaN and Inf"): a row attending a NaN or
+inf score is NaN, a NaN in v reaches every row attending that key. Where a
NaN sits only in keys a row does not attend (hidden by causality or a mask)
flashsdpa's rule differs from PyTorch's math backend, which adds -inf to
NaN; those cases are checked against the documented rule. The direct API
keeps its clear error (ValueError) on CPU."""
from __future__ import annotations

import math
import zlib

import pytest
import torch
import torch.nn.functional as F

import flashsdpa
from conftest import DEVICES, torch_math_sdpa

B, HQ, SQ, SK, D = 2, 4, 70, 90, 32
ROW, KEY = 5, 0  # key 0: attended by every row in every configuration below

CONFIGS = ["plain", "causal", "bool_mask", "float_mask", "gqa", "decode"]
WHERE = ["q_nan", "q_posinf", "q_neginf", "k_nan", "k_posinf", "v_nan", "v_posinf",
         "mask_nan", "mask_posinf"]


def _problem(config, where, device):
    # A stable seed: hash() of strings changes with every process.
    g = torch.Generator().manual_seed(zlib.crc32(f"{config}/{where}".encode()))
    hk = HQ // 2 if config == "gqa" else HQ
    sq = 3 if config == "decode" else SQ
    q = torch.randn(B, HQ, sq, D, generator=g)
    k = torch.randn(B, hk, SK, D, generator=g)
    v = torch.randn(B, hk, SK, D, generator=g)
    kw = {"enable_gqa": config == "gqa", "is_causal": config == "causal"}
    mask = None
    if config == "bool_mask" or where.startswith("mask") and config != "float_mask":
        mask = torch.rand(sq, SK, generator=g) > 0.3
        mask[:, KEY] = True  # every row attends KEY (and so no row is empty)
    if config == "float_mask" or where.startswith("mask"):
        fm = torch.randn(sq, SK, generator=g)
        if mask is not None:
            fm = fm.masked_fill(~mask, float("-inf"))
        mask = fm
    val = {"nan": math.nan, "posinf": math.inf, "neginf": -math.inf}[where.split("_")[1]]
    tensor = where.split("_")[0]
    if tensor == "q":
        q[0, 1, min(ROW, sq - 1), 3] = val
        # An infinite q_d gives +-inf scores by the sign of k_d. Make KEY's
        # score +inf, so the row is NaN by both rules; if every attended
        # score were -inf, the documented rule (an empty row: 0) and
        # PyTorch's math backend (NaN) would differ, as in
        # test_row_of_minus_inf_scores_is_empty.
        k[0, :, KEY, 3] = math.copysign(abs(float(k[0, 0, KEY, 3])) + 0.5, val)
    elif tensor == "k":
        k[1, 0, KEY, 7] = val
    elif tensor == "v":
        v[0, hk - 1, KEY, 2] = val
    else:
        mask[min(ROW, sq - 1), KEY] = val
    kw["attn_mask"] = None if mask is None else mask.to(device)
    return [t.to(device) for t in (q, k, v)], kw


def _assert_same_nonfinite_and_close(got, want, name):
    got, want = got.detach().cpu().double(), want.detach().cpu().double()
    assert torch.equal(torch.isnan(got), torch.isnan(want)), (
        f"{name}: NaN positions differ: ours {int(torch.isnan(got).sum())}, "
        f"PyTorch {int(torch.isnan(want).sum())}")
    inf = torch.isinf(want)
    assert torch.equal(got[inf], want[inf]), f"{name}: Inf positions differ"
    fin = torch.isfinite(want)
    assert torch.isfinite(got[fin]).all()
    torch.testing.assert_close(got[fin], want[fin], atol=2e-5, rtol=2e-5)


# (is_causal takes no attn_mask: no mask injection with "causal")
CASES = [(c, w) for c in CONFIGS for w in WHERE if not (c == "causal" and w.startswith("mask"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("config,where", CASES)
def test_patched_sdpa_matches_pytorch_math(config, where, device):
    (q, k, v), kw = _problem(config, where, device)
    want = torch_math_sdpa(q, k, v, **kw)
    assert not torch.isfinite(want).all(), "the case must put a NaN/Inf where it is attended"
    with flashsdpa.enabled():
        got = F.scaled_dot_product_attention(q, k, v, **kw)
    assert flashsdpa.stats()["dispatched"] == 1, flashsdpa.stats()
    _assert_same_nonfinite_and_close(got, want, f"{config}/{where}")


@pytest.mark.parametrize("device", DEVICES)
def test_nan_row_gives_nan_gradients(device):
    (q, k, v), kw = _problem("causal", "q_nan", device)
    q.requires_grad_(True)
    with flashsdpa.enabled():
        out = F.scaled_dot_product_attention(q, k, v, **kw)
    out.sum().backward()
    assert torch.isnan(out[0, 1, ROW]).all()
    assert torch.isnan(q.grad[0, 1, ROW]).any(), "a NaN row must not get a finite gradient"
    assert torch.isfinite(q.grad[1]).all()  # other batches untouched


def _rule_reference(q, k, v, allowed, scale=None):
    """The documented rule in fp64: masked keys are -inf whatever q.k is; a
    NaN/+inf score makes the row NaN; a row attending nothing is 0."""
    q, k, v = (t.detach().cpu().double() for t in (q, k, v))
    s = q @ k.transpose(-1, -2) * (scale or 1 / math.sqrt(q.shape[-1]))
    s = s.masked_fill(~allowed, -math.inf)
    p = torch.softmax(s, dim=-1)
    empty = (s == -math.inf).all(-1, keepdim=True)
    return torch.where(empty, 0.0, p) @ v


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("hidden_by", ["causal", "bool_mask", "neginf_float_mask"])
def test_nan_in_a_key_nobody_attends_stays_hidden(hidden_by, device):
    """Documented difference from PyTorch's math backend (which gives NaN in
    every row, NaN + -inf being NaN): a NaN score in a key a row does not
    attend leaves that row finite; rows attending it are NaN."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 40, 16, generator=g) for _ in range(3))
    key = 20
    k[0, 1, key, 4] = math.nan
    i = torch.arange(40).view(-1, 1)
    allowed = (torch.arange(40).view(1, -1) <= i)  # causal: rows < 20 do not see key 20
    kw = {"is_causal": True} if hidden_by == "causal" else {
        "attn_mask": allowed if hidden_by == "bool_mask"
        else torch.zeros(40, 40).masked_fill(~allowed, -math.inf)}
    with flashsdpa.enabled():
        got = F.scaled_dot_product_attention(*(t.to(device) for t in (q, k, v)),
                                             **{a: (b.to(device) if torch.is_tensor(b) else b)
                                                for a, b in kw.items()})
    want = _rule_reference(q, k, v, allowed)
    assert torch.isnan(want[0, 1, key:]).all() and torch.isfinite(want[0, 1, :key]).all()
    _assert_same_nonfinite_and_close(got, want, hidden_by)
    assert torch.isnan(torch_math_sdpa(q, k, v, **kw)[0, 1, :key]).all()  # PyTorch's math


@pytest.mark.parametrize("device", DEVICES)
def test_fully_masked_row_stays_zero_with_nan_in_v(device):
    """A row attending nothing gives 0 whatever v holds (PyTorch's math
    backend gives NaN there: 0 * NaN in its P @ V)."""
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 1, 8, 16, generator=g) for _ in range(3))
    v[0, 0, 3, 0] = math.nan
    mask = torch.ones(8, 8, dtype=torch.bool)
    mask[2] = False  # row 2 attends nothing
    mask[:, 3] = False  # nobody attends key 3
    with flashsdpa.enabled():
        got = F.scaled_dot_product_attention(q.to(device), k.to(device), v.to(device),
                                             attn_mask=mask.to(device)).cpu()
    assert torch.equal(got[0, 0, 2], torch.zeros(16))
    # (Other rows do not attend key 3 either: for them the NaN is
    # unspecified, a kernel may multiply it by P = 0 within a tile.)


@pytest.mark.parametrize("device", DEVICES)
def test_nan_alibi_slope_gives_nan_head(device):
    g = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(1, 50, 3, 16, generator=g).to(device) for _ in range(3))
    slopes = torch.tensor([0.5, math.nan, 0.125], device=device)
    out = flashsdpa.flash_attn_func(q, k, v, causal=True, alibi_slopes=slopes).cpu()
    assert torch.isnan(out[:, :, 1]).all()
    assert torch.isfinite(out[:, :, [0, 2]]).all()


def test_direct_api_still_raises_on_cpu():
    q = torch.randn(1, 2, 10, 8)
    bad = q.clone()
    bad[0, 0, 3, 1] = math.nan
    for name, args in (("query", (bad, q, q)), ("key", (q, bad, q)), ("value", (q, q, bad))):
        with pytest.raises(ValueError, match="non-finite"):
            flashsdpa.scaled_dot_product_attention(*args)


@pytest.mark.parametrize("device", DEVICES)
def test_row_of_minus_inf_scores_is_empty(device):
    """An infinite q_d whose every attended key has k_d of the opposite sign
    makes every attended score -inf: by the documented rule the row attends
    nothing (out 0), as PyTorch's CPU flash kernel and
    FlashAttention give; PyTorch's math backend gives NaN instead."""
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 2, 8, 16, generator=g) for _ in range(3))
    q[0, 1, 5, 3] = math.inf
    k[0, 1, :, 3] = -1.0
    q, k, v = (t.to(device) for t in (q, k, v))
    with flashsdpa.enabled():  # the patch passes NaN/Inf through (check_finite = 0)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        assert flashsdpa.stats()["dispatched"] == 1, flashsdpa.stats()
    assert (out[0, 1, 5] == 0).all()
    others = torch.ones(2, 8, dtype=torch.bool)
    others[1, 5] = False
    assert torch.isfinite(out[0][others]).all()
