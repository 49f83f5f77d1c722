#!/usr/bin/env python3
"""CPU benchmark: flashsdpa vs PyTorch's CPU SDPA, side by side.

Both run in this process on the same inputs, warm, in alternating blocks of calls (median of each side); the
table gives both times and the ratio (PyTorch time / flashsdpa time, > 1
means flashsdpa is faster). Also: achieved GFLOP/s against the machine's
fp32 FMA peak (measured here with bench/fma_peak.c), and the peak extra
memory of forward+backward at S = 16384 against the S^2 score matrix.

Writes a PNG of the ratios and appends the table and command to
bench/RESULTS.md.

    python bench/bench_cpu.py            # full grid (~5 min on 2 cores)
    python bench/bench_cpu.py --quick    # a few cases
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import flashsdpa

HERE = Path(__file__).resolve().parent


def paired_median_times(fa, fb, repeats: int, block_s: float = 0.05, min_total: float = 0.5,
                        settle_s: float = 0.03, clock=time.perf_counter) -> tuple[float, float]:
    """Median times of fa and fb, measured in alternating blocks of calls.
    This shared VM's speed drifts by up to 2x over seconds (other tenants);
    alternating lets both sides see the same drift. Blocks are ~block_s long
    (one call for long calls, many for decode-sized ones) and the rounds
    repeat until at least `repeats` rounds and ~min_total seconds have run.
    Each block starts after settle_s of sleep: PyTorch's OpenMP threads keep
    spinning for milliseconds after its calls (about 10 ms of CPU measured
    here), which would otherwise take a core from the next block.
    `clock`: time.thread_time measures the calling thread's CPU time, which
    other tenants do not inflate, for single-thread runs (both libraries
    then compute on the calling thread)."""
    def timed(fn):
        t0 = clock()
        fn()
        return clock() - t0

    fa(), fb()  # warm-up
    ta, tb = timed(fa), timed(fb)
    per_block = max(1, int(block_s / max(ta, tb, 1e-6)))
    rounds = max(repeats, min(20, math.ceil(min_total / ((ta + tb) * per_block))))
    times_a, times_b = [ta], [tb]
    for _ in range(rounds):
        time.sleep(settle_s)
        times_a += [timed(fa) for _ in range(per_block)]
        time.sleep(settle_s)
        times_b += [timed(fb) for _ in range(per_block)]
    return statistics.median(times_a), statistics.median(times_b)


def attention_flops(b, hq, sq, sk, d, dv, causal, backward):
    # 2 matmuls forward (QK^T, PV), 2.5x that for the backward (5 matmuls).
    pairs = sq * sk
    if causal:  # top-left causal with sq == sk keeps ~half
        pairs = sq * (sq + 1) / 2 if sq == sk else pairs / 2
    fwd = 2.0 * b * hq * pairs * (d + dv)
    return fwd * (3.5 if backward else 1.0)


def make_inputs(b, hq, hk, sq, sk, d, dtype, requires_grad):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(b, hq, sq, d, generator=g).to(dtype)
    k = torch.randn(b, hk, sk, d, generator=g).to(dtype)
    v = torch.randn(b, hk, sk, d, generator=g).to(dtype)
    if requires_grad:
        for t in (q, k, v):
            t.requires_grad_(True)
    return q, k, v


def run_case(case, repeats, clock=time.perf_counter):
    b, hq, hk, sq, sk, d, dtype, causal, backward = case
    q, k, v = make_inputs(b, hq, hk, sq, sk, d, dtype, backward)
    gqa = hq != hk
    do = torch.randn(b, hq, sq, d).to(dtype)

    def step(fn):
        def go():
            out = fn(q, k, v, is_causal=causal, enable_gqa=gqa)
            if backward:
                out.backward(do)
                q.grad = k.grad = v.grad = None
        return go

    t_ours, t_torch = paired_median_times(step(flashsdpa.scaled_dot_product_attention),
                                          step(F.scaled_dot_product_attention), repeats,
                                          clock=clock)
    flops = attention_flops(b, hq, sq, sk, d, d, causal, backward)
    return t_ours, t_torch, flops


def fma_peak_gflops(threads: int) -> tuple[float, float]:
    """(one core, all threads) fp32 FMA peak, best of 3 runs each. The
    machine's peak is taken as max(all-thread run, threads x one-core run):
    its cores are identical and without SMT, and on a shared machine the
    all-thread run is the one other work disturbs."""
    exe = Path(tempfile.mkdtemp()) / "fma_peak"
    subprocess.run(["cc", "-O2", "-march=native", str(HERE / "fma_peak.c"), "-o", str(exe),
                    "-lpthread"], check=True)
    def best(n):
        return max(float(subprocess.check_output([str(exe), str(n)]).decode()) for _ in range(3))
    return best(1), best(threads)


MEMORY_PROBE = r"""
import resource, sys, torch, flashsdpa
S, D = int(sys.argv[1]), int(sys.argv[2])
q, k, v = (torch.randn(1, 1, S, D, requires_grad=True) for _ in range(3))
dout = torch.randn(1, 1, S, D)
# Warm-up at a small size: one-time costs (thread pools, autograd engine)
# are not the sequence length's.
w = [torch.randn(1, 1, 64, D, requires_grad=True) for _ in range(3)]
flashsdpa.scaled_dot_product_attention(*w).backward(torch.randn(1, 1, 64, D))
def status(key):  # kB
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])
try:  # reset the peak RSS (VmHWM) to the current RSS (Linux)
    open("/proc/self/clear_refs", "w").write("5")
    base = status("VmRSS")
except OSError:
    base = None
flashsdpa.scaled_dot_product_attention(q, k, v).backward(dout)
if base is None:
    print("maxrss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
else:
    print("growth", (status("VmHWM") - base) * 1024)
"""


def extra_memory_bytes(S: int, D: int) -> tuple[str, int]:
    """Peak RSS growth during forward+backward at S (bytes), least of 3
    fresh processes, after a small warm-up call: the inputs already exist;
    what is counted is the outputs (out, lse, dq, dk, dv: 4 * S * D + S floats) and every workspace.
    Where the peak RSS cannot be reset, the peak of the whole process minus
    the same at S = 256."""
    def probe(s):  # (kind, bytes)
        runs = [subprocess.check_output([sys.executable, "-c", MEMORY_PROBE, str(s), str(D)])
                .decode().strip().splitlines()[-1].split() for _ in range(3)]
        return runs[0][0], min(int(r[1]) for r in runs)
    kind, big = probe(S)
    return kind, (big if kind == "growth" else big - probe(256)[1])


def cpu_model() -> str:
    try:
        for line in subprocess.check_output(["lscpu"]).decode().splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def grid(quick: bool):
    cases = []
    dtypes = [torch.float32, torch.bfloat16]
    seqs = [512, 1024, 2048, 4096, 8192] if not quick else [1024, 4096]
    for dtype in dtypes:
        for d in ([64, 128] if not quick else [128]):
            for s in seqs:
                bh = max(2, min(32, (32 * 1024 * 1024) // (s * s)))
                for causal in (False, True):
                    for backward in (False, True):
                        cases.append(("grid", (1, bh, bh, s, s, d, dtype, causal, backward)))
        # Decode: 1 or 8 queries against long keys, B*H = 2 (forward only).
        for sq in (1, 8):
            for sk in ([4096, 32768] if not quick else [32768]):
                cases.append(("decode", (1, 2, 2, sq, sk, 128, dtype, False, False)))
        # GQA: Hq / Hk = 4.
        for backward in (False, True):
            cases.append(("gqa", (1, 8, 2, 2048, 2048, 128, dtype, True, backward)))
    return cases


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-save", action="store_true", help="do not write RESULTS.md / PNG")
    args = ap.parse_args()

    threads = torch.get_num_threads()
    flashsdpa.set_num_threads(threads)
    peak1, peakn = fma_peak_gflops(threads)
    peak = max(peakn, threads * peak1)
    print(f"machine: {cpu_model()}, {threads} threads, fp32 FMA peak {peak:.0f} GFLOP/s "
          f"(measured: 1 core {peak1:.0f}, {threads} threads {peakn:.0f})")
    print(f"torch {torch.__version__}, flashsdpa {flashsdpa.__version__}")

    rows = []
    header = (f"| kind | dtype | B*H (Hq/Hk) | Sq | Sk | D | causal | pass | flashsdpa ms | "
              f"torch ms | ratio | flashsdpa GFLOP/s | % FMA peak |")
    print(header)
    print("|" + "---|" * 13)
    for kind, case in grid(args.quick):
        b, hq, hk, sq, sk, d, dtype, causal, backward = case
        t_ours, t_torch, flops = run_case(case, args.repeats)
        gf = flops / t_ours / 1e9
        row = (f"| {kind} | {str(dtype).replace('torch.', '')} | {b * hq} ({hq}/{hk}) | {sq} | "
               f"{sk} | {d} | {'yes' if causal else 'no'} | {'fwd+bwd' if backward else 'fwd'} | "
               f"{t_ours * 1e3:.2f} | {t_torch * 1e3:.2f} | {t_torch / t_ours:.2f} | {gf:.0f} | "
               f"{100 * gf / peak:.0f}% |")
        print(row, flush=True)
        rows.append((kind, dtype, backward, t_torch / t_ours, row))

    def geomean(xs):
        return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")

    summary = []
    for dtype in (torch.float32, torch.bfloat16):
        for backward in (False, True):
            rs = [r[3] for r in rows if r[1] == dtype and r[2] == backward]
            if rs:
                summary.append(f"- {str(dtype).replace('torch.', '')} {'fwd+bwd' if backward else 'fwd'}: "
                               f"geomean ratio {geomean(rs):.2f}x, min {min(rs):.2f}x over {len(rs)} cases")
    S_mem, D_mem = 16384, 64
    kind, extra = extra_memory_bytes(S_mem, D_mem)
    dense = S_mem * S_mem * 4
    if kind == "growth":
        outs = (4 * S_mem * D_mem + S_mem) * 4
        summary.append(f"- peak RSS growth during fwd+bwd at S={S_mem}, D={D_mem}, fp32 (inputs "
                       f"allocated before): {extra / 2**20:.1f} MiB, of which {outs / 2**20:.1f} "
                       f"MiB are out, lse, dq, dk, dv; one S x S fp32 score matrix would be "
                       f"{dense / 2**20:.0f} MiB")
    else:
        io = 8 * S_mem * D_mem * 4
        summary.append(f"- peak memory of fwd+bwd at S={S_mem}, D={D_mem}, fp32, over the same "
                       f"at S=256: {extra / 2**20:.1f} MiB, of which {io / 2**20:.0f} MiB are q, "
                       f"k, v, dout, out, dq, dk, dv; one S x S fp32 score matrix would be "
                       f"{dense / 2**20:.0f} MiB")
    print("\n".join(summary))

    if args.no_save:
        return
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    png = HERE / "cpu_ratios.png"
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(max(8, len(rows) * 0.25), 4))
        ax.bar(range(len(rows)), [r[3] for r in rows],
               color=["tab:blue" if not r[2] else "tab:orange" for r in rows])
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_ylabel("torch time / flashsdpa time")
        ax.set_xlabel("case (blue: forward, orange: forward+backward; order as in the table)")
        ax.set_title(f"flashsdpa vs torch SDPA on CPU ({cpu_model()}, {threads} threads)")
        fig.tight_layout()
        fig.savefig(png, dpi=100)
    except ImportError:
        png = None
    cmd = "python " + " ".join([os.path.relpath(__file__, HERE.parent)] + sys.argv[1:])
    with open(HERE / "RESULTS.md", "a") as f:
        f.write(f"\n## CPU: flashsdpa vs torch SDPA — {stamp}\n\n")
        f.write(f"Command: `{cmd}`  \nMachine: {cpu_model()}, {threads} threads, fp32 FMA peak "
                f"{peak:.0f} GFLOP/s (measured: 1 core {peak1:.0f}, {threads} threads "
                f"{peakn:.0f}); torch {torch.__version__}\n\n")
        f.write(header + "\n|" + "---|" * 13 + "\n")
        f.write("\n".join(r[4] for r in rows) + "\n\n" + "\n".join(summary) + "\n")
        if png:
            f.write(f"\nPlot: `bench/{png.name}`\n")


if __name__ == "__main__":
    main()
