"""Autocast (issue 25): inside torch.autocast, flashsdpa casts SDPA's
arguments as aten's autocast does for scaled_dot_product_attention
(lower_precision_fp on CPU and CUDA): every floating tensor on that device
except float64 goes to the autocast dtype, bool masks stay bool, so the
patched call returns what PyTorch's own call returns."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import flashsdpa
from conftest import DEVICES, assert_close_rule

AUTOCAST_DTYPES = {"cpu": [torch.bfloat16, torch.float16], "cuda": [torch.float16, torch.bfloat16]}


def _inputs(device, dtype=torch.float32):
    g = torch.Generator().manual_seed(5)
    q = torch.randn(2, 4, 70, 32, generator=g).to(device, dtype)
    k = torch.randn(2, 4, 90, 32, generator=g).to(device, dtype)
    v = torch.randn(2, 4, 90, 16, generator=g).to(device, dtype)
    return q, k, v


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mask", [None, "bool", "float"])
@pytest.mark.parametrize("entry", ["patch", "direct"])
def test_autocast_matches_pytorch(device, mask, entry):
    for ac_dtype in AUTOCAST_DTYPES[device]:
        q, k, v = _inputs(device)
        m = None
        if mask == "bool":
            m = torch.rand(70, 90, device=device) > 0.2
        elif mask == "float":
            m = torch.randn(70, 90, device=device)
        qg = q.clone().requires_grad_(True)
        with torch.autocast(device, ac_dtype):
            want = F.scaled_dot_product_attention(q, k, v, attn_mask=m)
            if entry == "patch":
                with flashsdpa.enabled():
                    got = F.scaled_dot_product_attention(qg, k, v, attn_mask=m)
                assert flashsdpa.stats()["dispatched"] >= 1, flashsdpa.stats()
            else:
                got = flashsdpa.scaled_dot_product_attention(qg, k, v, attn_mask=m)
        assert want.dtype == ac_dtype
        assert got.dtype == want.dtype
        # The accuracy rule against fp64 on the inputs as autocast casts them
        # (a float mask is cast too): PyTorch's own low-precision kernel differs
        # between versions, so no fixed tolerance around its result.
        ref = F.scaled_dot_product_attention(
            *(t.to(ac_dtype).double() for t in (q, k, v)),
            attn_mask=m.to(ac_dtype).double() if mask == "float" else m)
        assert_close_rule("out", got, want, ref, ac_dtype)
        # the cast is differentiable: an fp32 leaf gets an fp32 gradient
        got.float().sum().backward()
        assert qg.grad is not None and qg.grad.dtype == torch.float32
        flashsdpa.reset_stats()


def test_autocast_leaves_float64_and_other_devices_alone():
    q, k, v = _inputs("cpu", torch.float64)
    with torch.autocast("cpu", torch.bfloat16), flashsdpa.enabled():
        out = F.scaled_dot_product_attention(q, k, v)
    assert out.dtype == torch.float64  # aten's autocast does not cast float64 either
    assert flashsdpa.stats()["fallbacks"].get("dtype:float64") == 1
    # CUDA autocast does not touch CPU tensors
    q, k, v = _inputs("cpu")
    with torch.autocast("cuda", torch.float16, enabled=torch.cuda.is_available()):
        assert flashsdpa.scaled_dot_product_attention(q, k, v).dtype == torch.float32


def test_no_autocast_no_cast():
    q, k, v = _inputs("cpu", torch.float16)
    assert flashsdpa.scaled_dot_product_attention(q, k, v).dtype == torch.float16
