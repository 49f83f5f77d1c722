#!/usr/bin/env python3
"""Fixed cost of one call (issue 18): where a small call's time goes.

For a few small shapes, in one process on the same inputs: forward and
forward+backward through flashsdpa's public API, through the ``_C`` binding
(the C ABI, outputs preallocated) and through PyTorch's SDPA with one
backend forced. Two numbers per row: the device time (CUDA events around
many back-to-back calls, so a host slower than the GPU shows up here too) and
the host time of one call (wall clock of the issuing loop, no sync inside).
``--profile`` prints torch.profiler's top host operators for our fwd+bwd
and cProfile's top Python functions;
``--graph`` checks that fwd and fwd+bwd replay from a captured CUDA graph
with the eager results.

    python bench/overhead.py [--shapes 1x1x128x64,4x16x1024x128] [--profile] [--graph]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import flashsdpa
from flashsdpa import _C, _ops

PEERS = {"FLASH": SDPBackend.FLASH_ATTENTION, "CUDNN": SDPBackend.CUDNN_ATTENTION,
         "EFFICIENT": SDPBackend.EFFICIENT_ATTENTION}


def timeit(fn, iters: int):
    """(device us per call over `iters` back-to-back calls, host us per call)."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    h0 = time.perf_counter()
    for _ in range(iters):
        fn()
    h1 = time.perf_counter()
    e1.record()
    torch.cuda.synchronize()
    return e0.elapsed_time(e1) * 1e3 / iters, (h1 - h0) * 1e6 / iters


def cases(shape: str, dtype, causal: bool):
    b, h, s, d = (int(x) for x in shape.split("x"))
    g = torch.Generator(device="cuda").manual_seed(0)
    mk = lambda: torch.randn(b, h, s, d, device="cuda", dtype=dtype, generator=g)
    q, k, v, do = mk(), mk(), mk(), mk()
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))

    def ours_fwd():
        flashsdpa.scaled_dot_product_attention(q, k, v, is_causal=causal)

    def ours_fb():
        o = flashsdpa.scaled_dot_product_attention(qg, kg, vg, is_causal=causal)
        torch.autograd.backward(o, do)

    out = torch.empty_like(q)
    lse = torch.empty(b, h, s, device="cuda", dtype=torch.float32)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    p = _ops._params(None, causal, False, -1, -1, 0.0, 0, 0, 0.0, None, False, False)
    stream = torch.cuda.current_stream().cuda_stream
    dl = torch.utils.dlpack.to_dlpack

    def abi_fwd():
        _C.forward(p, dl(q), dl(k), dl(v), dl(out), dl(lse), None, None, None, None, stream)

    def abi_fb():
        abi_fwd()
        _C.backward(p, dl(do), dl(q), dl(k), dl(v), dl(out), dl(lse), dl(dq), dl(dk), dl(dv),
                    None, None, None, None, stream)

    rows = [("ours", ours_fwd, ours_fb), ("C ABI", abi_fwd, abi_fb)]
    for name, be in PEERS.items():
        def pf(be=be):
            with sdpa_kernel(be):
                F.scaled_dot_product_attention(q, k, v, is_causal=causal)

        def pfb(be=be):
            with sdpa_kernel(be):
                o = F.scaled_dot_product_attention(qg, kg, vg, is_causal=causal)
            torch.autograd.backward(o, do)
        rows.append((name, pf, pfb))
    return rows, (q, k, v, do)


def profile(shape, dtype, causal):
    rows, _ = cases(shape, dtype, causal)
    fb = rows[0][2]
    for _ in range(10):
        fb()
    torch.cuda.synchronize()
    from torch.profiler import ProfilerActivity, profile as prof
    with prof(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as pr:
        for _ in range(20):
            fb()
        torch.cuda.synchronize()
    print(pr.key_averages().table(sort_by="self_cpu_time_total", row_limit=22))
    # The Python layer's own share, which torch.profiler folds into "self".
    import cProfile
    import pstats
    cp = cProfile.Profile()
    cp.enable()
    for _ in range(200):
        fb()
    cp.disable()
    torch.cuda.synchronize()
    pstats.Stats(cp).sort_stats("tottime").print_stats(24)


def graph_check(shape, dtype, causal):
    """fwd+bwd captured in a CUDA graph equals the eager result."""
    _, (q, k, v, do) = cases(shape, dtype, causal)
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    o = flashsdpa.scaled_dot_product_attention(qg, kg, vg, is_causal=causal)
    ref = [o.detach().clone()] + list(torch.autograd.grad(o, (qg, kg, vg), do))
    del o  # no graph may outlive its stream into the capture (test_cuda.py)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm-up on a side stream, as PyTorch asks
        for _ in range(3):
            o = flashsdpa.scaled_dot_product_attention(qg, kg, vg, is_causal=causal)
            torch.autograd.grad(o, (qg, kg, vg), do)
            del o
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        og = flashsdpa.scaled_dot_product_attention(qg, kg, vg, is_causal=causal)
        gr = torch.autograd.grad(og, (qg, kg, vg), do)
    g.replay()
    torch.cuda.synchronize()
    got = [og] + list(gr)
    # Bitwise for out; dQ sums key blocks with atomics (deterministic = False),
    # so its last bits may differ between any two runs, captured or not.
    same = torch.equal(ref[0], got[0]) and all(
        torch.allclose(a.float(), b.float(), rtol=1e-2, atol=1e-2) for a, b in zip(ref[1:], got[1:]))
    print(f"graph {shape} causal={causal}: replay equals eager (out bitwise, grads to 1e-2): {same}")
    return same


def floor(dtype):
    """What any Python autograd.Function pays on this host: forward+backward
    of a Function whose kernels are a single copy each way, against the same
    copy as a C++ autograd node (aten's clone)."""
    x = torch.randn(1, 1, 128, 64, device="cuda", dtype=dtype, requires_grad=True)
    g = torch.randn_like(x)

    class Copy(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            return t.clone()

        @staticmethod
        def backward(ctx, dt):
            return dt.clone()

    for name, f in (("python Function", lambda: Copy.apply(x)), ("C++ node", lambda: x.clone())):
        fd, fh = timeit(lambda: torch.autograd.backward(f(), g), 200)
        print(f"floor: {name:>15} fwd+bwd {fd:7.1f} us device, {fh:7.1f} us host")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="1x1x128x64,1x16x128x64,4x16x1024x128")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--graph", action="store_true")
    a = ap.parse_args()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[a.dtype]
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {a.dtype}")
    print(f"{'shape':>16} {'causal':>6} {'path':>9} | {'fwd dev':>8} {'fwd host':>8} | "
          f"{'f+b dev':>8} {'f+b host':>8}   (us per call)")
    for shape in a.shapes.split(","):
        for causal in (False, True):
            rows, _ = cases(shape, dtype, causal)
            for name, f, fb in rows:
                try:
                    fd, fh = timeit(f, a.iters)
                    bd, bh = timeit(fb, a.iters)
                except RuntimeError as e:  # a backend that refuses the shape
                    print(f"{shape:>16} {causal!s:>6} {name:>9} | {str(e)[:50]}")
                    continue
                print(f"{shape:>16} {causal!s:>6} {name:>9} | {fd:8.1f} {fh:8.1f} | "
                      f"{bd:8.1f} {bh:8.1f}")
    floor(dtype)
    if a.profile:
        profile(a.shapes.split(",")[0], dtype, False)
    if a.graph:
        ok = all([graph_check(s, dtype, c) for s in a.shapes.split(",")[:2] for c in (False, True)])
        print("graph capture:", "ok" if ok else "MISMATCH")


if __name__ == "__main__":
    main()
