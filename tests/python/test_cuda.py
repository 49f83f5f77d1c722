"""CUDA specifics: the current stream and the device guard. Skipped without
a GPU (and without the CUDA backend compiled in); every other test file runs
its device-parametrised tests on CUDA too when one is present."""
from __future__ import annotations

import pytest
import torch

import flashsdpa
from conftest import DEVICES, torch_math_sdpa

pytestmark = pytest.mark.skipif("cuda" not in DEVICES, reason="no CUDA device / CUDA backend")


def test_runs_on_current_stream():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(4, 8, 512, 64, generator=g).cuda().half() for _ in range(3))
    ref = torch_math_sdpa(q.float(), k.float(), v.float(), is_causal=True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = flashsdpa.scaled_dot_product_attention(q, k, v, is_causal=True)
        out.float().sum().item()  # consumed on the side stream
    torch.cuda.current_stream().wait_stream(side)
    assert (out.float() - ref).abs().max().item() < 1e-2


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_second_device():
    q = torch.randn(1, 2, 64, 32, device="cuda:1")
    out = flashsdpa.scaled_dot_product_attention(q, q, q)
    assert out.device == q.device
    ref = torch_math_sdpa(q.double(), q.double(), q.double())
    assert (out.double() - ref).abs().max().item() < 1e-4
