"""The README's routes table, executed: for each way PyTorch code reaches
attention, whether the SDPA patch (``flashsdpa.enable()``) and the registry
(``activate_flash_attention_impl("flashsdpa")``) each reach flashsdpa on this
PyTorch, per device (CUDA rows run where a GPU and the CUDA backend are).
PyTorch's ``context_parallel`` has its own multi-process tests
(test_context_parallel.py); Hugging Face's routes are in test_models.py
(attn_implementation="sdpa", patch) and test_hf_interface.py
(``register_transformers``)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.functional import scaled_dot_product_attention as sdpa_bound_at_import

import flashsdpa
from flashsdpa import _aten
from conftest import DEVICES, flash_first

attention = torch.nn.attention
HAS_REGISTRY = hasattr(attention, "register_flash_attention_impl")


def _qkv(device):
    dtype = torch.float32 if device == "cpu" else torch.bfloat16  # CUDA flash: fp16/bf16
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, 4, 64, 32, generator=g).to(device, dtype) for _ in range(3)]


def _aten_flash(q, k, v):
    if q.device.type == "cpu":
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, True)
    return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, True)


def _kernel(backend):
    def run(q, k, v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return run


def _compiled(q, k, v):
    fn = torch.compile(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=True),
                       backend="aot_eager", fullgraph=True)
    return fn(q, k, v)


def _encoder_fast_path(q, k, v):
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True).to(q.device, q.dtype).eval()
    with torch.no_grad():
        return layer(q[0])


def _mha_need_weights(q, k, v):
    mha = nn.MultiheadAttention(32, 4, batch_first=True).to(q.device, q.dtype)
    return mha(q[0], q[0], q[0], need_weights=True)


def _dropout(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, dropout_p=0.25)


def _float_mask(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=torch.zeros_like(q[0, 0, :, :1].T))


# route: (function, {device: (patch reaches, registry reaches)}); "*" = every device
ROUTES = {
    "F.scaled_dot_product_attention": (
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        {"*": (True, True)}),
    "alias bound at import": (
        lambda q, k, v: sdpa_bound_at_import(q, k, v, is_causal=True), {"*": (False, True)}),
    "torch.ops.aten flash op": (_aten_flash, {"*": (False, True)}),
    "sdpa_kernel(FLASH_ATTENTION)": (_kernel(SDPBackend.FLASH_ATTENTION), {"*": (True, True)}),
    # the patch replaces the function before PyTorch picks a backend
    "sdpa_kernel(MATH)": (_kernel(SDPBackend.MATH), {"*": (True, False)}),
    "torch.compile": (_compiled, {"*": (True, True)}),
    # PyTorch sends these to another backend than flash on that device
    "dropout": (_dropout, {"cpu": (True, False), "cuda": (True, True)}),
    "float mask": (_float_mask, {"cuda": (True, False)}),
    # fused kernels that do not call SDPA's flash operators (on CUDA, PyTorch's
    # native MHA may call SDPA itself: not asserted until run on a GPU)
    "TransformerEncoderLayer fast path": (_encoder_fast_path, {"cpu": (False, False)}),
    "MultiheadAttention need_weights=True": (_mha_need_weights, {"*": (False, False)}),
}

CASES = [(route, device, mech)
         for route, (_, table) in ROUTES.items()
         for device in DEVICES if device in table or "*" in table
         for mech in ("patch", "registry")]


@pytest.mark.parametrize("route,device,mechanism", CASES)
def test_route_reaches_flashsdpa_as_documented(route, device, mechanism):
    if mechanism == "registry" and not HAS_REGISTRY:
        pytest.skip("this PyTorch has no flash-attention registry")
    fn, table = ROUTES[route]
    expect = table.get(device, table.get("*"))[mechanism == "registry"]
    q, k, v = _qkv(device)
    flashsdpa.reset_stats()
    if mechanism == "patch":
        with flashsdpa.enabled():
            fn(q, k, v)
    else:
        attention.activate_flash_attention_impl("flashsdpa")
        try:
            with flash_first(device):
                fn(q, k, v)
        finally:
            _aten.restore()
    st = flashsdpa.stats()
    assert (st["dispatched"] > 0) == expect, (route, device, mechanism, st)
    if mechanism == "registry" and expect:
        assert st["dispatched_via_aten"] > 0, st
