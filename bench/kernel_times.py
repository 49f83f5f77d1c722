#!/usr/bin/env python3
"""Where forward+backward time goes, kernel by kernel: flashsdpa and
PyTorch SDPA backends on the same inputs, under torch.profiler (CUDA
activity), as the mean device time per call of each kernel.

It answers what the wall-clock benchmark (bench_cuda.py) cannot: how much
of a gap is the main kernel and how much the small ones around it
(preprocess, workspace zeroing, dQ conversion).

    python bench/kernel_times.py --lib build/src/libflashsdpa.so \
        [--cases bf16:128:1024:1,bf16:128:4096:0] [--refs CUDNN,FLASH]

A case is dtype:D:S:causal with B*S = 32k and H*D = 2048 (bench_cuda.py's
grid).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cuda import Lib, flashsdpa_fns, sdpa_fns  # noqa: E402

REPS = 5


def kernel_times(fn):
    """{kernel name: mean device microseconds per call of fn}."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(REPS):
            fn()
        torch.cuda.synchronize()
    out = {}
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", None)
        if t is None:
            t = ev.cuda_time_total
        if t > 0 and ev.count >= REPS:
            out[ev.key] = out.get(ev.key, 0.0) + t / REPS
    return out


def short(name: str, width=90):
    name = name.replace("fsdpa::cuda::", "").replace("hopper::", "h::")
    return name if len(name) <= width else name[: width - 3] + "..."


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", default="build/src/libflashsdpa.so")
    ap.add_argument("--cases", default="bf16:128:1024:0,bf16:128:1024:1,bf16:128:4096:1,bf16:64:1024:1")
    ap.add_argument("--refs", default="CUDNN")
    ap.add_argument("--mode", default="fwd+bwd", choices=["fwd", "fwd+bwd"])
    args = ap.parse_args()
    from torch.nn.attention import SDPBackend

    lib = Lib(args.lib)
    print(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}")
    g = torch.Generator(device="cuda").manual_seed(0)
    idx = 0 if args.mode == "fwd" else 1
    for case in args.cases.split(","):
        dts, D, S, causal = case.split(":")
        dt = {"bf16": torch.bfloat16, "fp16": torch.float16}[dts]
        D, S, causal = int(D), int(S), bool(int(causal))
        B, H = 32768 // S, 2048 // D
        q, k, v, do = (torch.randn(B, H, S, D, device="cuda", dtype=dt, generator=g) for _ in range(4))
        impls = [("flashsdpa", flashsdpa_fns(lib, q, k, v, do, causal)[idx])]
        for r in args.refs.split(","):
            impls.append((r, sdpa_fns(getattr(SDPBackend, {"FLASH": "FLASH_ATTENTION", "CUDNN": "CUDNN_ATTENTION",
                                                           "EFFICIENT": "EFFICIENT_ATTENTION"}[r]),
                                      q, k, v, do, causal)[idx]))
        print(f"\n== {dts} D{D} S{S} B{B} H{H}{' causal' if causal else ''} ({args.mode})")
        for name, fn in impls:
            kt = kernel_times(fn)
            tot = sum(kt.values())
            print(f"  {name}: {tot:9.1f} us in kernels")
            for kname, us in sorted(kt.items(), key=lambda x: -x[1]):
                print(f"    {us:9.1f} us {100 * us / tot:5.1f}%  {short(kname)}")
        del q, k, v, do
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
