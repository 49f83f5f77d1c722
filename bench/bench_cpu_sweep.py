#!/usr/bin/env python3
"""CPU benchmark on shapes nobody tuned for (issue 23): a seeded random sweep of
(B, Hq/Hk, Sq, Sk, D in 32..256, causal, dtype fp32/bf16, fwd or fwd+bwd), drawn
fresh each run (the seed is printed; --seed repeats a run), flashsdpa against
PyTorch's CPU SDPA in this process on the same inputs, alternating blocks of
calls (bench_cpu.paired_median_times), both with the same thread count.

Per case: both times, the ratio (torch time / flashsdpa time, > 1: flashsdpa
faster), flashsdpa's GFLOP/s and its share of the machine's peak for the
dtype: the fp32 FMA peak (bench/fma_peak.c) for fp32, the best bf16
dot-product peak (bench/bf16_peak.c: AVX512_BF16 or AMX) for bf16. Then the
geomeans per dtype and pass, the worst case, and the issue's targets.

    python bench/bench_cpu_sweep.py [--cases 24] [--seed N] [--quick-grid] [--results]
        [--threads N] [--cpu-clock]

--quick-grid also runs bench_cpu.py's quick grid in the same table; --results
appends the table to bench/RESULTS.md. --threads sets both libraries' thread
count (default: torch's). --cpu-clock (with --threads 1) times the calling
thread's CPU time instead of wall time: on a machine shared with other work,
wall times measure the scheduler as much as the kernels; both libraries then
compute on the calling thread, so its CPU time is all of their work.
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import flashsdpa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cpu import attention_flops, cpu_model, fma_peak_gflops, grid, run_case  # noqa: E402

HERE = Path(__file__).resolve().parent

# Work per case (forward GFLOP) is capped so that the sweep's slowest case
# stays well under a second on 2 cores.
MAX_GFLOP = 4.0


def bf16_peaks(threads: int) -> tuple[float, float]:
    """(vdpbf16ps, AMX) bf16 peaks over `threads` threads, GFLOP/s, best of 3;
    0 where the unit is missing (bf16_peak.c is for x86-64 Linux)."""
    if platform_machine() != "x86_64" or not sys.platform.startswith("linux"):
        return 0.0, 0.0
    exe = Path(tempfile.mkdtemp()) / "bf16_peak"
    subprocess.run(["cc", "-O2", str(HERE / "bf16_peak.c"), "-o", str(exe), "-lpthread"],
                   check=True)
    best = {"dpbf16": 0.0, "amx": 0.0}
    for _ in range(3):
        for line in subprocess.check_output([str(exe), str(threads)]).decode().splitlines():
            name, val = line.split()
            best[name] = max(best[name], float(val))
    return best["dpbf16"], best["amx"]


def platform_machine() -> str:
    return os.uname().machine


def cpu_mhz() -> str:
    try:
        for line in subprocess.check_output(["lscpu"]).decode().splitlines():
            if "MHz" in line:
                return line.split(":", 1)[1].strip() + " MHz"
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("cpu MHz"):
                return line.split(":", 1)[1].strip() + " MHz"
    except OSError:
        pass
    return "unknown"


def draw_cases(n: int, seed: int):
    rng = random.Random(seed)
    cases = []
    for _ in range(n):
        dtype = rng.choice([torch.float32, torch.bfloat16])
        backward = rng.random() < 0.5
        causal = rng.random() < 0.5
        d = rng.randrange(32, 257, 8)
        hk = rng.choice([1, 2, 4, 8])
        hq = hk * rng.choice([1, 1, 2, 4])
        sq = int(math.exp(rng.uniform(math.log(65), math.log(4096))))
        sk = sq if rng.random() < 0.7 else int(math.exp(rng.uniform(math.log(65), math.log(4096))))
        if causal and sk < sq:  # top-left causal over fewer keys: keep every row non-empty
            sk = sq
        b = rng.choice([1, 2, 4])
        # Shrink the batch, then the heads, until the forward fits the cap.
        while b * hq * sq * sk * d * 4 / 1e9 * (0.5 if causal else 1) > MAX_GFLOP and b > 1:
            b //= 2
        while b * hq * sq * sk * d * 4 / 1e9 * (0.5 if causal else 1) > MAX_GFLOP and hk > 1:
            hk //= 2
            hq //= 2
        cases.append(("sweep", (b, hq, hk, sq, sk, d, dtype, causal, backward)))
    return cases


def geomean(xs):
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=24)
    ap.add_argument("--seed", type=int, default=None, help="default: drawn from the clock")
    ap.add_argument("--quick-grid", action="store_true", help="also bench_cpu.py's quick grid")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--results", action="store_true", help="append the table to RESULTS.md")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cpu-clock", action="store_true", help="thread CPU time (needs --threads 1)")
    args = ap.parse_args()
    if args.cpu_clock and args.threads != 1:
        ap.error("--cpu-clock needs --threads 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.thread_time if args.cpu_clock else time.perf_counter
    seed = args.seed if args.seed is not None else int(time.time()) % 100000

    threads = torch.get_num_threads()
    flashsdpa.set_num_threads(threads)
    peak1, peakn = fma_peak_gflops(threads)
    fp32_peak = max(peakn, threads * peak1)
    dp_peak, amx_peak = bf16_peaks(threads)
    # Without bf16 dot-product units bf16 runs on the fp32 FMAs.
    bf16_peak = max(dp_peak, amx_peak) or fp32_peak
    load = os.getloadavg()
    lines = [
        f"machine: {cpu_model()}, {cpu_mhz()}, {threads} threads (flashsdpa and torch); "
        f"load average before the run {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        f"peaks (GFLOP/s, {threads} threads): fp32 FMA {fp32_peak:.0f} (1 core {peak1:.0f}); "
        f"bf16 vdpbf16ps {dp_peak:.0f}, AMX {amx_peak:.0f}; timing: "
        f"{'calling thread CPU time' if args.cpu_clock else 'wall clock'}",
        f"torch {torch.__version__}, flashsdpa {flashsdpa.__version__}, seed {seed}",
    ]
    print("\n".join(lines))
    header = ("| kind | dtype | B | Hq/Hk | Sq | Sk | D | causal | pass | flashsdpa ms | torch ms | "
              "ratio | GFLOP/s | % peak |")
    print(header + "\n|" + "---|" * 14)
    cases = draw_cases(args.cases, seed)
    if args.quick_grid:
        cases += grid(quick=True)
    rows = []
    for kind, case in cases:
        b, hq, hk, sq, sk, d, dtype, causal, backward = case
        t_ours, t_torch, flops = run_case(case, args.repeats, clock)
        gf = flops / t_ours / 1e9
        peak = bf16_peak if dtype == torch.bfloat16 else fp32_peak
        ratio = t_torch / t_ours
        row = (f"| {kind} | {str(dtype).replace('torch.', '')} | {b} | {hq}/{hk} | {sq} | {sk} | {d} | "
               f"{'yes' if causal else 'no'} | {'fwd+bwd' if backward else 'fwd'} | "
               f"{t_ours * 1e3:.2f} | {t_torch * 1e3:.2f} | {ratio:.2f} | {gf:.0f} | "
               f"{100 * gf / peak:.1f}% |")
        print(row, flush=True)
        rows.append((dtype, backward, ratio, row))

    summary = []
    for dtype in (torch.float32, torch.bfloat16):
        for backward in (False, True):
            rs = [r[2] for r in rows if r[0] == dtype and r[1] == backward]
            if rs:
                target = 1.5 if backward else 1.3
                summary.append(
                    f"- {str(dtype).replace('torch.', '')} {'fwd+bwd' if backward else 'fwd'}: "
                    f"geomean {geomean(rs):.2f}x (target {target}x), min {min(rs):.2f}x, "
                    f"{len(rs)} cases")
    worst = min(rows, key=lambda r: r[2])
    summary.append(f"- worst case ({worst[2]:.2f}x): {worst[3]}")
    summary.append(f"- cases below 1.0x: {sum(r[2] < 1.0 for r in rows)} of {len(rows)}")
    print("\n".join(summary))
    if args.results:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        cmd = "python " + " ".join([os.path.relpath(__file__, HERE.parent)] + sys.argv[1:])
        with open(HERE / "RESULTS.md", "a") as f:
            f.write(f"\n### CPU random sweep — {stamp}\n\nCommand: `{cmd}`  \n" +
                    "  \n".join(lines) + "\n\n" + header + "\n|" + "---|" * 14 + "\n" +
                    "\n".join(r[3] for r in rows) + "\n\n" + "\n".join(summary) + "\n")


if __name__ == "__main__":
    main()
