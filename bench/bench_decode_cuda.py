#!/usr/bin/env python3
"""GPU decode benchmark (issue 20): flashsdpa.flash_attn_with_kvcache on a
contiguous cache and on paged caches (page sizes 16 and 256, pages in a
shuffled order), against PyTorch SDPA's FLASH and cuDNN backends (and
FlashAttention's own flash_attn_with_kvcache when the flash_attn package is
installed) on the contiguous equivalent, and against the GPU's measured
copy bandwidth.

One step: q (B, Sq, Hq, D), a cache of `context` keys per sequence, GQA
Hq/Hk = 32/8, D = Dv = 128, bf16 (--dtype). flashsdpa runs causal
(bottom-right, FlashAttention's decode semantics); the SDPA peers run
without a mask (at most Sq - 1 keys more, and no mask work), with
enable_gqa. GB/s = the K+V bytes the step must read (B * context * Hk *
(D + Dv) * element size) / its time; "% copy" divides by the copy bandwidth
measured here (a large device-to-device copy, read + write bytes).

Timing: each implementation runs `--calls` times back to back between two
CUDA events (the Python API's host time overlaps the GPU's work as in a
serving loop; the smallest cases are bound by it, which the table shows as
low GB/s), the median over `--rounds` rounds in which the implementations
alternate. Every implementation's output is checked against flashsdpa's
contiguous result first (a benchmark of a wrong result is void); a peer that
fails (unsupported, out of memory) shows as n/a with the reason's class.

    python bench/bench_decode_cuda.py                       # the grid, 600 s budget
    python bench/bench_decode_cuda.py --quick --results bench/RESULTS.md
    python bench/bench_decode_cuda.py --sq 1 --batch 1,64 --context 65536 --budget-s 120

Cases whose caches would not fit (--max-gb: K+V bytes of one layout; the
contiguous cache and one paged copy exist at a time) are skipped and listed.
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import flashsdpa

HERE = Path(__file__).resolve().parent
PAGES = (16, 256)


def copy_bandwidth_gbs(nbytes: int = 2 << 30, repeats: int = 10) -> float:
    """Best read+write GB/s of a device-to-device torch copy."""
    src = torch.ones(nbytes // 4, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src)
        b.record()
        b.synchronize()
        best = min(best, a.elapsed_time(b) / 1e3)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * nbytes / best / 1e9


def time_calls(fn, calls: int) -> float:
    """Seconds per call of `calls` back-to-back calls."""
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(calls):
        fn()
    b.record()
    b.synchronize()
    return a.elapsed_time(b) / 1e3 / calls


def warm(fn, seconds: float = 0.05, least: int = 3) -> None:
    # At least `least` calls and `seconds` of wall time: a short kernel right
    # after an idle stretch otherwise meets the GPU at low clocks.
    t0, n = time.perf_counter(), 0
    while n < least or time.perf_counter() - t0 < seconds:
        fn()
        torch.cuda.synchronize()
        n += 1


def paged_pool(cache: torch.Tensor, perm: torch.Tensor, page: int) -> torch.Tensor:
    """The cache's keys in a page pool (num_pages, page, Hk, D): chunk j (page
    rows of one sequence, in order) goes to page perm[j]; the block table is
    perm.view(B, -1)."""
    chunks = cache.reshape((-1, page) + cache.shape[2:])
    pool = torch.empty_like(chunks)
    pool[perm] = chunks
    return pool


def sdpa_peer(backend, q, kc, vc):
    """PyTorch SDPA with one backend on the contiguous cache, (B, H, S, D) views."""
    from torch.nn.attention import sdpa_kernel

    qt, kt, vt = q.transpose(1, 2), kc.transpose(1, 2), vc.transpose(1, 2)

    def fn():
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(qt, kt, vt, enable_gqa=True).transpose(1, 2)

    return fn


def fa_peer(q, kc, vc, seqlens, block_table=None):
    """FlashAttention's flash_attn_with_kvcache (if installed), causal."""
    from flash_attn import flash_attn_with_kvcache as fa_kv  # noqa: PLC0415

    return lambda: fa_kv(q, kc, vc, cache_seqlens=seqlens, block_table=block_table, causal=True)


def run_case(sq, b, context, hq, hk, d, dtype, args, gen):
    """Times every implementation of one case; returns {name: seconds or
    'n/a reason'} and the K+V bytes."""
    from torch.nn.attention import SDPBackend

    dev = "cuda"
    q = torch.randn(b, sq, hq, d, device=dev, dtype=dtype, generator=gen)
    kc = torch.randn(b, context, hk, d, device=dev, dtype=dtype, generator=gen)
    vc = torch.randn(b, context, hk, d, device=dev, dtype=dtype, generator=gen)
    seqlens = torch.full((b,), context, dtype=torch.int32, device=dev)
    kv_bytes = b * context * hk * 2 * d * kc.element_size()

    def ours_contig():
        return flashsdpa.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=seqlens, causal=True)

    ref = ours_contig()
    impls = {"contig": ours_contig}
    peers = {"FLASH": lambda: sdpa_peer(SDPBackend.FLASH_ATTENTION, q, kc, vc),
             "cuDNN": lambda: sdpa_peer(SDPBackend.CUDNN_ATTENTION, q, kc, vc)}
    if args.fa:
        peers["FA"] = lambda: fa_peer(q, kc, vc, seqlens)
    results = {}

    def checked(name, make, atol):
        try:
            fn = make()
            out = fn()
            torch.cuda.synchronize()
            err = (out.float() - ref.float()).abs().max().item()
            if not err <= atol:  # NaN fails too
                return f"n/a (max diff {err:.3g} vs flashsdpa contig)"
            return fn
        except Exception as e:  # noqa: BLE001  a peer's failure is a result, not a crash
            torch.cuda.synchronize()
            why = str(e).splitlines()[0][:48].replace("|", "/") if str(e) else ""
            return f"n/a ({type(e).__name__}: {why})"

    # The SDPA peers run without the causal mask: with Sq > 1 their last
    # rows see up to Sq - 1 more keys, so compare loosely there.
    atol_peer = 2e-2 if sq == 1 else float("inf")
    for name, make in peers.items():
        r = checked(name, make, atol_peer if name != "FA" else 2e-2)
        (impls.__setitem__(name, r) if callable(r) else results.__setitem__(name, r))

    def time_impls(fns):
        for fn in fns.values():
            warm(fn)
        times = {n: [] for n in fns}
        for _ in range(args.rounds):
            for n, fn in fns.items():  # alternate the implementations every round
                times[n].append(time_calls(fn, args.calls))
        return {n: statistics.median(t) for n, t in times.items()}

    results.update(time_impls(impls))
    # One paged copy at a time (memory), each timed next to the contiguous
    # cache again so that its ratio compares like with like.
    for page in PAGES:
        if context % page:
            results[f"page{page}"] = "n/a (context not a multiple of the page)"
            continue
        perm = torch.randperm(b * context // page, device=dev, generator=gen)
        bt = perm.view(b, -1).to(torch.int32)
        pk, pv = paged_pool(kc, perm, page), paged_pool(vc, perm, page)
        fns = {f"page{page}": lambda pk=pk, pv=pv, bt=bt: flashsdpa.flash_attn_with_kvcache(
            q, pk, pv, cache_seqlens=seqlens, block_table=bt, causal=True)}
        r = checked(f"page{page}", lambda: fns[f"page{page}"], 1e-2)
        if not callable(r):
            results[f"page{page}"] = r
        else:
            if args.fa and page == 256:
                fa = checked("FA page256", lambda: fa_peer(q, pk, pv, seqlens, bt), 2e-2)
                if callable(fa):
                    fns["FA page256"] = fa
                else:
                    results["FA page256"] = fa
            t = time_impls({"contig": ours_contig, **fns})
            results[f"page{page} contig"] = t.pop("contig")
            results.update(t)
        del pk, pv
        torch.cuda.empty_cache()
    del q, kc, vc
    torch.cuda.empty_cache()
    return kv_bytes, results


def fmt_us(x):
    return f"{x * 1e6:.1f}" if isinstance(x, float) else "n/a"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sq", default="1,2,4", help="query tokens per step (comma list)")
    ap.add_argument("--batch", default="1,8,64", help="batch sizes (comma list)")
    ap.add_argument("--context", default="2048,16384,65536,131072", help="cache lengths (comma list)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    ap.add_argument("--quick", action="store_true", help="Sq 1 and 4; B 1 and 64; context 2k and 64k")
    ap.add_argument("--budget-s", type=float, default=600.0,
                    help="stop starting new cases after this many seconds (default 600)")
    ap.add_argument("--max-gb", type=float, default=24.0,
                    help="skip cases whose K+V of one layout exceed this (default 24 GB)")
    ap.add_argument("--calls", type=int, default=20, help="back-to-back calls per timing")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds (median)")
    ap.add_argument("--results", default=None, help="append the table (markdown) to this file")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_decode_cuda: no CUDA device")
    if "cuda" not in flashsdpa._C.backends():
        sys.exit(f"bench_decode_cuda: this flashsdpa build has no CUDA backend ({flashsdpa._C.backends()})")
    try:
        import flash_attn  # noqa: F401, PLC0415
        args.fa = True
    except Exception:  # noqa: BLE001
        args.fa = False
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    sqs, batches, contexts = ints(args.sq), ints(args.batch), ints(args.context)
    if args.quick:
        sqs, batches, contexts = [1, 4], [1, 64], [2048, 65536]
    dtype = getattr(torch, args.dtype)
    hq, hk, d = 32, 8, 128
    esize = torch.empty(0, dtype=dtype).element_size()
    gen = torch.Generator(device="cuda").manual_seed(0)
    device = torch.cuda.get_device_name()
    bw = copy_bandwidth_gbs()
    print(f"{device}: copy bandwidth {bw:.0f} GB/s (read + write)", flush=True)

    peers = ["FLASH", "cuDNN"] + (["FA", "FA page256"] if args.fa else [])
    head = ("| Sq | B | context | K+V MB | contig us | GB/s | % copy | page16 us | GB/s | % copy | "
            "vs contig | page256 us | GB/s | % copy | vs contig | "
            + " | ".join(f"{p} us" for p in peers) + " | contig vs best peer |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    print(head, flush=True)
    t_start, skipped, unrun = time.perf_counter(), [], []
    for sq in sqs:
        for b in batches:
            for ctx in contexts:
                gb = b * ctx * hk * 2 * d * esize / 1e9
                if gb > args.max_gb:
                    skipped.append(f"Sq {sq} B {b} context {ctx} ({gb:.1f} GB)")
                    continue
                if time.perf_counter() - t_start > args.budget_s:
                    unrun.append(f"Sq {sq} B {b} context {ctx}")
                    continue
                try:
                    kv_bytes, r = run_case(sq, b, ctx, hq, hk, d, dtype, args, gen)
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    skipped.append(f"Sq {sq} B {b} context {ctx} (out of memory)")
                    continue
                except Exception as e:  # noqa: BLE001  report flashsdpa's own failure, go on
                    torch.cuda.synchronize()
                    why = str(e).splitlines()[0][:120].replace("|", "/") if str(e) else ""
                    lines.append(f"| {sq} | {b} | {ctx} | FAILED: {type(e).__name__}: {why} |")
                    print(lines[-1], flush=True)
                    continue
                gbs = lambda t: kv_bytes / t / 1e9  # noqa: E731
                cells = [str(sq), str(b), str(ctx), f"{kv_bytes / 1e6:.0f}"]
                c = r["contig"]
                cells += [fmt_us(c), f"{gbs(c):.0f}", f"{100 * gbs(c) / bw:.0f}%"]
                for page in PAGES:
                    t = r.get(f"page{page}")
                    if isinstance(t, float):
                        cells += [fmt_us(t), f"{gbs(t):.0f}", f"{100 * gbs(t) / bw:.0f}%"]
                        # against the contiguous cache timed in the same rounds
                        cells.append(f"{100 * r[f'page{page} contig'] / t:.0f}%")
                    else:
                        cells += [str(t), "", "", ""]
                for p in peers:
                    t = r.get(p)
                    cells.append(fmt_us(t) if isinstance(t, float) else str(t))
                best = [r[p] for p in peers if isinstance(r.get(p), float) and p != "FA page256"]
                cells.append(f"{min(best) / c:.2f}x" if best else "n/a")
                lines.append("| " + " | ".join(cells) + " |")
                print(lines[-1], flush=True)
    notes = [
        f"Device: {device}; copy bandwidth {bw:.0f} GB/s (read + write); torch {torch.__version__}; "
        f"flash_attn {'present' if args.fa else 'not installed'}.",
        f"Decode with a KV cache, Hq/Hk = {hq}/{hk}, D = Dv = {d}, {args.dtype}; "
        f"{args.calls} back-to-back calls per timing, median of {args.rounds} alternating rounds. "
        "GB/s = K+V bytes / time; 'vs contig' = contiguous time / paged time (100% = as fast); "
        "'contig vs best peer' = best SDPA peer time / flashsdpa contiguous time (> 1: flashsdpa faster). "
        "Peers run without the causal mask.",
    ]
    if skipped:
        notes.append("Skipped (memory): " + "; ".join(skipped) + ".")
    if unrun:
        notes.append(f"Not run (time budget {args.budget_s:.0f} s): " + "; ".join(unrun) + ".")
    text = "\n".join(notes) + "\n\n" + "\n".join(lines)
    print("\n" + text)
    if args.results:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        cmd = "python bench/bench_decode_cuda.py " + " ".join(sys.argv[1:])
        with open(args.results, "a") as f:
            f.write(f"\n## CUDA decode with a KV cache (issue 20) — {stamp}\n\n`{cmd.strip()}`\n\n{text}\n")


if __name__ == "__main__":
    main()
