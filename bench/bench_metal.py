#!/usr/bin/env python3
"""Apple-silicon benchmark: flashsdpa's Metal kernels against PyTorch's MPS
SDPA, forward and forward+backward, with the memory each holds.

NOT RUN IN CI (no Apple hardware there). For Mac users; please send the
output (it prints a Markdown table) so the numbers can replace the "awaits
measurement" notes in docs/metal.md.

    python bench/bench_metal.py [--dtype float16] [--heads 16] [--dim 64]
                                [--causal] [--lengths 512,1024,...,16384]

Each point: B = 1, H heads, Sq = Sk = S, head dim D; median of --reps timed
runs after warm-up, torch.mps.synchronize() around each. "mem" is the MPS
memory allocated by the call and still held afterwards (forward: kept for
backward by autograd; this is where the stock math path materialises the
S x S attention matrix), measured with torch.mps.current_allocated_memory().
Out-of-memory is reported as "oom" instead of aborting the sweep.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def timed(fn, reps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    torch.mps.synchronize()
    ts = []
    for _ in range(reps):
        torch.mps.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.mps.synchronize()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def held_bytes(fn) -> int:
    torch.mps.synchronize()
    torch.mps.empty_cache()
    before = torch.mps.current_allocated_memory()
    keep = fn()
    torch.mps.synchronize()
    after = torch.mps.current_allocated_memory()
    del keep
    return after - before


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--lengths", default="512,1024,2048,4096,8192,16384")
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()

    if not torch.backends.mps.is_available():
        print("MPS is not available on this machine", file=sys.stderr)
        return 1
    import flashsdpa
    import flashsdpa.metal as fm

    if not fm.available():
        print("flashsdpa's Metal path is unavailable (needs PyTorch >= 2.7 and a build with the Metal planner)",
              file=sys.stderr)
        return 1
    dt = getattr(torch, a.dtype)
    dev = torch.device("mps")
    print(f"# flashsdpa {flashsdpa.__version__} vs torch {torch.__version__} MPS SDPA; GPU family Apple{fm.gpu_family()}; "
          f"{a.dtype}, H={a.heads}, D={a.dim}, causal={a.causal}\n")
    print("| S | impl | fwd ms | fwd+bwd ms | mem held after fwd (MiB) |")
    print("|---|---|---|---|---|")
    impls = {
        "flashsdpa": lambda q, k, v: flashsdpa.scaled_dot_product_attention(q, k, v, is_causal=a.causal),
        "torch": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=a.causal),
    }
    for s in (int(x) for x in a.lengths.split(",")):
        for name, f in impls.items():
            try:
                q, k, v = (torch.randn(1, a.heads, s, a.dim, device=dev, dtype=dt, requires_grad=True) for _ in range(3))
                go = torch.randn(1, a.heads, s, a.dim, device=dev, dtype=dt)
                with torch.no_grad():
                    t_f = timed(lambda: f(q, k, v), a.reps)

                def fb():
                    o = f(q, k, v)
                    o.backward(go)
                    q.grad = k.grad = v.grad = None

                t_fb = timed(fb, a.reps)
                mem = held_bytes(lambda: f(q, k, v)) / 2**20
                print(f"| {s} | {name} | {t_f * 1e3:.2f} | {t_fb * 1e3:.2f} | {mem:.1f} |", flush=True)
            except RuntimeError as e:  # MPS out of memory and friends
                msg = "oom" if "out of memory" in str(e).lower() else f"error: {str(e).splitlines()[0]}"
                print(f"| {s} | {name} | {msg} | | |", flush=True)
            finally:
                torch.mps.empty_cache()
    print("\nflashsdpa.stats():", flashsdpa.stats())
    return 0


if __name__ == "__main__":
    sys.exit(main())
