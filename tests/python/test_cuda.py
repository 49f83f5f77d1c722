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


@pytest.mark.parametrize("shape,causal", [((1, 1, 128, 64), False), ((2, 4, 300, 128), True)])
def test_cuda_graph_capture_fwd_and_bwd(shape, causal):
    """Forward and backward replay from a captured CUDA graph with the eager
    results, bitwise (the workspaces are stream-ordered allocations)."""
    g = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.randn(*shape, generator=g).cuda().bfloat16() for _ in range(4))
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    o = flashsdpa.scaled_dot_product_attention(qg, kg, vg, is_causal=causal)
    ref = [o.detach().clone()] + [t.clone() for t in torch.autograd.grad(o, (qg, kg, vg), do)]
    # A live graph keeps the leaves' AccumulateGrad nodes, and their stream,
    # alive; the capture's backward would then sync with the default stream
    # (cudaErrorStreamCaptureImplicit). Every graph dies before the capture.
    del o
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture stream, as PyTorch asks
        for _ in range(2):
            o = flashsdpa.scaled_dot_product_attention(qg, kg, vg, is_causal=causal)
            torch.autograd.grad(o, (qg, kg, vg), do)
            del o
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        og = flashsdpa.scaled_dot_product_attention(qg, kg, vg, is_causal=causal)
        grads = torch.autograd.grad(og, (qg, kg, vg), do)
    for _ in range(2):
        graph.replay()
    torch.cuda.synchronize()
    for want, got in zip(ref, [og] + list(grads)):
        assert torch.equal(want, got)


def test_explain_names_the_cuda_family():
    q = torch.randn(1, 4, 256, 128, device="cuda", dtype=torch.bfloat16)
    text = flashsdpa.explain(q, q, q, is_causal=True)
    assert text.startswith("backend cuda, forward: family ")
    hopper = torch.cuda.get_device_capability()[0] == 9
    assert ("family hopper" in text) == hopper, text
    text = flashsdpa.explain(q.float(), q.float(), q.float(), backward=True)
    assert "family simt" in text and "fp32" in text, text
