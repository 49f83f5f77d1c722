"""The SDPA patch: enable/disable/enabled/is_enabled, dispatch and fallback
counting by reason, logging once per reason, and that fallbacks are PyTorch's
own results untouched."""
from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

import flashsdpa
from flashsdpa import _patch

ORIGINAL = _patch._original


def qkv(*shape, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g).to(device, dtype) for _ in range(3)]


def test_enable_disable_roundtrip():
    assert not flashsdpa.is_enabled() and F.scaled_dot_product_attention is ORIGINAL
    flashsdpa.enable()
    assert flashsdpa.is_enabled() and F.scaled_dot_product_attention is not ORIGINAL
    assert torch.nn.functional.scaled_dot_product_attention is F.scaled_dot_product_attention
    flashsdpa.disable()
    assert not flashsdpa.is_enabled() and F.scaled_dot_product_attention is ORIGINAL


def test_enabled_context_manager_restores_previous_state():
    with flashsdpa.enabled():
        assert flashsdpa.is_enabled()
        with flashsdpa.enabled(min_seq_len=100):
            assert _patch._config["min_seq_len"] == 100
        assert flashsdpa.is_enabled() and _patch._config["min_seq_len"] == 0
    assert not flashsdpa.is_enabled()
    with pytest.raises(KeyError):
        with flashsdpa.enabled():
            raise KeyError("boom")
    assert not flashsdpa.is_enabled()


def test_enable_validates_arguments():
    with pytest.raises(ValueError, match="unknown device type"):
        flashsdpa.enable(backends=["tpu"])
    with pytest.raises(ValueError, match="min_seq_len"):
        flashsdpa.enable(min_seq_len=-1)
    assert not flashsdpa.is_enabled()


def test_dispatch_counts_and_results(device):
    q, k, v = qkv(2, 3, 40, 16, device=device)
    ref = ORIGINAL(q.double(), k.double(), v.double(), is_causal=True)
    with flashsdpa.enabled():
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        out2 = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    st = flashsdpa.stats()
    assert st["dispatched"] == 2 and st["dispatched_by_device"] == {device: 2}
    assert st["fallbacks"] == {} and st["fallback_total"] == 0
    assert (out.double().cpu() - ref.cpu()).abs().max() < 1e-5 and torch.equal(out, out2)
    flashsdpa.reset_stats()
    assert flashsdpa.stats()["dispatched"] == 0


def _fallback_cases(device):
    q, k, v = qkv(1, 2, 16, 8, device=device)
    cases = {
        "dtype:float64": ((q.double(), k.double(), v.double()), {}),
        "seq_len<min_seq_len": ((q, k, v), {}),
        "head_dim>256": (qkv(1, 1, 4, 300, device=device), {}),
        "shape:broadcast": ((q, k[:, :, :, :].expand(1, 2, 16, 8)[:1].repeat(1, 1, 1, 1), v[:, :, :7]), {}),
        "mask_requires_grad": ((q, k, v), {"attn_mask": torch.zeros(16, 16, device=device,
                                                                     requires_grad=True)}),
        "gqa_disabled": ((q, k[:, :1], v[:, :1]), {}),
        "mask:dtype": ((q, k, v), {"attn_mask": torch.zeros(16, 16, device=device,
                                                             dtype=torch.int64)}),
        "device:meta-unavailable": ([t.to("meta") for t in (q, k, v)], {}),
    }
    return cases


@pytest.mark.parametrize("reason", ["dtype:float64", "seq_len<min_seq_len", "head_dim>256",
                                    "shape:broadcast", "mask_requires_grad", "gqa_disabled",
                                    "mask:dtype", "device:meta-unavailable"])
def test_fallback_reasons(reason, device):
    args, kw = _fallback_cases(device)[reason]
    min_len = 1000 if reason == "seq_len<min_seq_len" else 0
    try:
        expect = ORIGINAL(*args, **kw)
    except Exception as e:  # PyTorch rejects it too: so must the patched call
        expect = e
    with flashsdpa.enabled(min_seq_len=min_len):
        if isinstance(expect, Exception):
            with pytest.raises(type(expect)):
                F.scaled_dot_product_attention(*args, **kw)
        else:
            got = F.scaled_dot_product_attention(*args, **kw)
            assert got.device == expect.device
            if got.device.type != "meta":
                assert torch.equal(got, expect)  # PyTorch's own result, untouched
    st = flashsdpa.stats()
    assert st["fallbacks"] == {reason: 1}, st
    assert st["dispatched"] == 0


def test_fallback_for_nested_tensors():
    # [B, *, H, D] transposed to SDPA's [B, H, *, D] (the ragged dimension
    # next to the batch: the only jagged form PyTorch < 2.5 builds)
    nt = torch.nested.nested_tensor([torch.randn(5, 2, 8), torch.randn(7, 2, 8)],
                                    layout=torch.jagged).transpose(1, 2)
    with flashsdpa.enabled():
        try:
            F.scaled_dot_product_attention(nt, nt, nt)
        except Exception:
            pass  # whatever PyTorch does with it, flashsdpa stays out of the way
    assert flashsdpa.stats()["fallbacks"] == {"nested_tensor": 1}


def test_backends_filter(device):
    q, k, v = qkv(1, 2, 16, 8, device=device)
    other = [b for b in ("cpu", "cuda", "mps") if b != device]
    with flashsdpa.enabled(backends=other):
        F.scaled_dot_product_attention(q, k, v)
    assert flashsdpa.stats()["fallbacks"] == {f"device:{device}-disabled": 1}


def test_mps_unavailable_without_metal_backend():
    """Until the Metal backend's MPS runner is registered, MPS is unavailable,
    so MPS calls fall back as "device:mps-unavailable" (the reason format is
    exercised above with the meta device; this machine has no MPS device)."""
    if "mps" in flashsdpa._ops._runners:
        pytest.skip("an MPS runner is registered")
    assert flashsdpa._ops.device_available("mps") is False
    q = torch.empty(1, 1, 4, 8, device="meta")
    why = flashsdpa._api.check_sdpa(q, q, q, None, 0.0, False, False)
    assert why.reason == "device:meta-unavailable" and why.exc is RuntimeError


def test_logs_once_per_reason(caplog):
    q, k, v = qkv(1, 2, 16, 8)
    with caplog.at_level(logging.INFO, logger="flashsdpa"):
        with flashsdpa.enabled(min_seq_len=1000):
            for _ in range(3):
                F.scaled_dot_product_attention(q, k, v)
            F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    msgs = [r.getMessage() for r in caplog.records if r.name == "flashsdpa"]
    assert len(msgs) == 2, msgs
    assert "seq_len<min_seq_len" in msgs[0] and "dtype:float64" in msgs[1]
    assert flashsdpa.stats()["fallbacks"] == {"seq_len<min_seq_len": 3, "dtype:float64": 1}


def test_patched_signature_keywords():
    q, k, v = qkv(1, 2, 12, 8)
    with flashsdpa.enabled():
        a = F.scaled_dot_product_attention(query=q, key=k, value=v, attn_mask=None,
                                           dropout_p=0.0, is_causal=False, scale=0.5,
                                           enable_gqa=False)
    b = ORIGINAL(q, k, v, scale=0.5)
    assert (a - b).abs().max() < 1e-6
    assert flashsdpa.stats()["dispatched"] == 1


def test_patched_gradients_match(device):
    q, k, v = qkv(2, 4, 50, 16, device=device)
    mask = torch.rand(2, 1, 50, 50, device=device) > 0.3
    grads = []
    for on in (False, True):
        ts = [t.clone().requires_grad_() for t in (q, k, v)]
        with flashsdpa.enabled() if on else _null():
            out = F.scaled_dot_product_attention(*ts, attn_mask=mask)
        out.square().sum().backward()
        grads.append([out.detach()] + [t.grad for t in ts])
    for a, b in zip(*grads):
        assert (a - b).abs().max() < 1e-4
    st = flashsdpa.stats()
    assert st["dispatched"] == 1 and st["backward"] == 1


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
