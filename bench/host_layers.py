#!/usr/bin/env python3
"""Host cost of one small call, layer by layer (issues 18, 19 and 23).

Thread CPU time per call (``time.thread_time_ns``: what the calling thread
spends, not counting other processes on a shared machine; on CUDA the host's
wall time, see main) of the same tiny
problem entered at each layer of the Python package, from the C ABI binding
up to the public API and the patched ``F.scaled_dot_product_attention``, and
PyTorch's own SDPA for scale. Each layer adds its own work to the one below:

    C.forward        _C.forward with outputs preallocated (DLPack capsules per call)
    +alloc           the same, allocating out and lse per call
    fwd kernel       _ops._fwd_kernel: the operator's kernel (params, runner, counters)
    call_fwd         _ops.call_fwd: the eager-mode dispatch around it
    public API       flashsdpa.scaled_dot_product_attention (autocast, checks)
    flash_attn_func  flashsdpa.flash_attn_func on the same data in (B, S, H, D)
    F.sdpa patched   torch.nn.functional.scaled_dot_product_attention under flashsdpa.enable()
    torch SDPA       PyTorch's own function (its default backend)

and the same for forward+backward through autograd (``torch.autograd.backward``
with a fixed dout). Layers run in rounds, each round timing every layer once in
turn, so a load change on the machine touches them alike; the table gives the
minimum and the median over rounds. On CUDA the numbers are the host's issuing
cost (no synchronisation inside the timed loop but at its end: a host slower
than the GPU shows up as is); bench/overhead.py measures device time there.

    PYTHONPATH=python python bench/host_layers.py [--device cpu] [--shape 1x1x16x16]
        [--dtype fp32] [--iters 5000] [--rounds 7] [--profile]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.dlpack import to_dlpack as dl

import flashsdpa
from flashsdpa import _C, _ops

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def layers(device: str, shape: str, dtype: torch.dtype):
    """[(name, forward fn, forward+backward fn or None)] on one set of inputs."""
    b, h, s, d = (int(x) for x in shape.split("x"))
    g = torch.Generator(device=device).manual_seed(0)
    mk = lambda: torch.randn(b, h, s, d, device=device, dtype=dtype, generator=g)
    q, k, v, do = mk(), mk(), mk(), mk()
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    check = device == "cpu"  # the direct API's default (NaN/Inf scan on the CPU)
    p = _ops._params(None, False, False, -1, -1, 0.0, 0, 0, 0.0, None, False, check)
    stream = torch.cuda.current_stream().cuda_stream if device == "cuda" else 0
    out, lse = torch.empty_like(q), torch.empty(b, h, s, device=device, dtype=torch.float32)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    scalars = (0, 0, None, False, False, -1, -1, 0.0, 0.0, None, False, check, False)

    def c_fwd():
        _C.forward(p, dl(q), dl(k), dl(v), dl(out), dl(lse), None, None, None, None, stream)

    def c_fb():
        c_fwd()
        _C.backward(p, dl(do), dl(q), dl(k), dl(v), dl(out), dl(lse), dl(dq), dl(dk), dl(dv),
                    None, None, None, None, stream)

    def c_alloc():
        o = q.new_empty((b, h, s, d))
        m = q.new_empty((b, h, s), dtype=torch.float32)
        _C.forward(p, dl(q), dl(k), dl(v), dl(o), dl(m), None, None, None, None, stream)

    def kernel():
        _ops._fwd_kernel(q, k, v, None, None, None, None, *scalars)

    def call_fwd():
        _ops.call_fwd(q, k, v, None, None, None, None, *scalars)

    def call_fwd_fb():
        o, _ = _ops.call_fwd(qg, kg, vg, None, None, None, None, *scalars)
        torch.autograd.backward(o, do)

    def api():
        flashsdpa.scaled_dot_product_attention(q, k, v)

    def api_fb():
        torch.autograd.backward(flashsdpa.scaled_dot_product_attention(qg, kg, vg), do)

    # FlashAttention's (B, S, H, D), the gradients' leaves in that layout
    qt, kt, vt, dot = (t.transpose(1, 2).contiguous() for t in (q, k, v, do))
    qgt, kgt, vgt = (t.clone().requires_grad_() for t in (qt, kt, vt))

    def fa():
        flashsdpa.flash_attn_func(qt, kt, vt)

    def fa_fb():
        torch.autograd.backward(flashsdpa.flash_attn_func(qgt, kgt, vgt), dot)

    def torch_sdpa():
        F.scaled_dot_product_attention(q, k, v)

    def torch_fb():
        torch.autograd.backward(F.scaled_dot_product_attention(qg, kg, vg), do)

    # "F.sdpa patched" is torch's name, called while flashsdpa.enable() is on (main).
    return [("C.forward", c_fwd, c_fb), ("+alloc", c_alloc, None), ("fwd kernel", kernel, None),
            ("call_fwd", call_fwd, call_fwd_fb), ("public API", api, api_fb),
            ("flash_attn_func", fa, fa_fb),
            ("F.sdpa patched", torch_sdpa, torch_fb), ("torch SDPA", torch_sdpa, torch_fb)]


def per_call_us(fn, iters: int, sync, clock) -> float:
    t0 = clock()
    for _ in range(iters):
        fn()
    sync()
    return (clock() - t0) / iters / 1e3


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    return f"{cpu}; load {' '.join(f'{x:.2f}' for x in load)}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shape", default="1x1x16x16")
    ap.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    ap.add_argument("--iters", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (both libraries)")
    ap.add_argument("--profile", action="store_true", help="cProfile of the public API's fwd+bwd")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    flashsdpa.set_num_threads(a.threads)
    # CPU: the calling thread's CPU time (the CPU backward runs on it too).
    # CUDA: the host's wall time, as autograd runs the backward on its own
    # device thread there (the loop never waits for the GPU but at the end).
    cuda = a.device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    clock = time.perf_counter_ns if cuda else time.thread_time_ns
    rows = layers(a.device, a.shape, DTYPES[a.dtype])
    # The patched row runs torch's name with the patch on: swap it in only there.
    patched_idx = [n for n, _, _ in rows].index("F.sdpa patched")
    times = {(n, w): [] for n, _, _ in rows for w in ("fwd", "f+b")}
    for _ in range(a.rounds):
        for i, (name, f, fb) in enumerate(rows):
            for what, fn in (("fwd", f), ("f+b", fb)):
                if fn is None:
                    continue
                with (flashsdpa.enabled() if i == patched_idx else contextlib.nullcontext()):
                    for _ in range(max(50, a.iters // 20)):  # warm-up
                        fn()
                    sync()
                    times[(name, what)].append(per_call_us(fn, a.iters, sync, clock))
    print(f"host_layers: {a.device} {a.shape} {a.dtype}, {a.threads} thread(s), torch "
          f"{torch.__version__}, {a.iters} calls x {a.rounds} rounds; {machine()}")
    print(f"{'layer':>16} | {'fwd min':>8} {'median':>8} | {'f+b min':>8} {'median':>8}"
          f"   ({'host wall' if cuda else 'thread CPU'} us per call)")
    for name, _, _ in rows:
        cells = []
        for what in ("fwd", "f+b"):
            t = times[(name, what)]
            cells.append(f"{min(t):8.2f} {statistics.median(t):8.2f}" if t else f"{'':8} {'':8}")
        print(f"{name:>16} | {cells[0]} | {cells[1]}")
    if a.profile:
        import cProfile
        import pstats
        fb = rows[[n for n, _, _ in rows].index("public API")][2]
        cp = cProfile.Profile()
        cp.enable()
        for _ in range(2000):
            fb()
        cp.disable()
        pstats.Stats(cp).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
