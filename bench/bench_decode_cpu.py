#!/usr/bin/env python3
"""CPU decode benchmark (issue 20): flash_attn_with_kvcache on a contiguous
and a paged cache (page sizes 16 and 256) against PyTorch's CPU SDPA on the
contiguous equivalent, and against the machine's memory bandwidth.

One decode step: q (B, 1, Hq, D), a cache of `context` keys per sequence,
GQA Hq/Hk, bf16 (or --dtype). GB/s counts the K+V bytes the step must read
(B * context * Hk * (D + Dv) * element size) over its time; the copy
bandwidth is measured here (torch copy of a 1 GiB buffer, read + write
bytes), so "% copy" is the fraction of what this machine moves. flashsdpa and
PyTorch run alternately on the same inputs (bench_cpu.paired_median_times).

    python bench/bench_decode_cpu.py            # the grid (~2 min on 2 cores)
    python bench/bench_decode_cpu.py --quick    # two cases
Appends the table, command and CPU model to bench/RESULTS.md (--no-record: don't).
"""
from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import flashsdpa

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_cpu import paired_median_times  # noqa: E402


def copy_bandwidth_gbs(nbytes: int = 1 << 30, repeats: int = 5) -> float:
    """Best read+write GB/s of a large torch copy (all threads)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best / 1e9


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name"))
    except Exception:  # noqa: BLE001
        return "unknown"


def paged_copy(cache: torch.Tensor, perm: torch.Tensor, page: int) -> torch.Tensor:
    """The same keys in a page pool: chunk j (page rows of one sequence, in
    order) goes to page perm[j], so the block table is perm.view(B, -1)."""
    chunks = cache.reshape((-1, page) + cache.shape[2:])
    pool = torch.empty_like(chunks)
    pool[perm] = chunks
    return pool


def run_case(b, context, hq, hk, d, dtype, gen):
    q = torch.randn(b, 1, hq, d, generator=gen).to(dtype)
    kc = torch.randn(b, context, hk, d, generator=gen).to(dtype)
    vc = torch.randn(b, context, hk, d, generator=gen).to(dtype)
    seqlens = torch.full((b,), context, dtype=torch.int32)
    # PyTorch's SDPA on the contiguous equivalent, (B, H, S, D) views.
    qt, kt, vt = q.transpose(1, 2), kc.transpose(1, 2), vc.transpose(1, 2)
    torch_fn = lambda: F.scaled_dot_product_attention(qt, kt, vt, enable_gqa=True)  # noqa: E731
    ours = {"contig": lambda: flashsdpa.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=seqlens)}
    for page in (16, 256):
        perm = torch.randperm(b * context // page, generator=gen)
        bt = perm.view(b, -1).to(torch.int32)
        pk, pv = paged_copy(kc, perm, page), paged_copy(vc, perm, page)
        ours[f"page{page}"] = (lambda pk=pk, pv=pv, bt=bt: flashsdpa.flash_attn_with_kvcache(
            q, pk, pv, cache_seqlens=seqlens, block_table=bt))
        # Same answer as the contiguous cache (a benchmark of a wrong result is void).
        assert torch.allclose(ours[f"page{page}"]().float(), ours["contig"]().float(), atol=1e-2)
    ref = torch_fn().transpose(1, 2)
    assert torch.allclose(ours["contig"]().float(), ref.float(), atol=2e-2)
    kv_bytes = b * context * hk * 2 * d * kc.element_size()
    row = {}
    for name, fn in ours.items():
        t_ours, t_torch = paired_median_times(fn, torch_fn, repeats=5)
        row[name] = (t_ours, t_torch)
    return kv_bytes, row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"])
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    hq, hk, d = 32, 8, 128
    grid = [(1, 2048), (1, 16384)] if args.quick else [
        (1, 2048), (1, 8192), (1, 32768), (4, 2048), (4, 8192), (16, 2048)]
    gen = torch.Generator().manual_seed(0)
    bw = copy_bandwidth_gbs()
    model = cpu_model()
    threads = flashsdpa.get_num_threads()
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        f"CPU: {model}; {threads} flashsdpa threads, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads; measured copy bandwidth {bw:.1f} GB/s (read+write); "
        f"load average {load} (1/5/15 min) at the start.",
        f"Decode step, Sq = 1, Hq/Hk = {hq}/{hk}, D = Dv = {d}, {args.dtype}. GB/s = K+V bytes "
        "/ time; ratio = torch SDPA time / flashsdpa time (contiguous equivalent).",
        "",
        "| B | context | K+V MB | cache | flashsdpa us | GB/s | % copy bw | torch us | ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for b, context in grid:
        kv_bytes, row = run_case(b, context, hq, hk, d, dtype, gen)
        for name, (t_ours, t_torch) in row.items():
            gbs = kv_bytes / t_ours / 1e9
            lines.append(f"| {b} | {context} | {kv_bytes / 1e6:.1f} | {name} | {t_ours * 1e6:.0f} | "
                         f"{gbs:.1f} | {100 * gbs / bw:.0f}% | {t_torch * 1e6:.0f} | "
                         f"{t_torch / t_ours:.2f} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines)
    print(text)
    if not args.no_record:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        cmd = "python bench/bench_decode_cpu.py " + " ".join(sys.argv[1:])
        with open(HERE / "RESULTS.md", "a") as f:
            f.write(f"\n## CPU decode with a KV cache (issue 20) — {stamp}\n\n"
                    f"`{cmd.strip()}`\n\n{text}\n")


if __name__ == "__main__":
    main()
