#!/usr/bin/env python3
"""Block-sparse attention: flashsdpa.block_sparse_attention against compiled
FlexAttention on the same BlockMask (issue 26).

Patterns (128 x 128 blocks, FlexAttention's default): BigBird (a window of 3
blocks, 1 global block row and column, 3 random blocks per row), prefix-LM
(a bidirectional prefix of S/8, causal after it), random 10% of the blocks,
and document packing (causal within documents of random lengths, so block
borders cut documents: partial blocks). S from 8k to 128k tokens, B = 1,
H = 16, D = 128, bf16; forward and forward+backward.

Both sides get the same BlockMask object, built once per (pattern, S) with
torch.compile(create_block_mask). flashsdpa's timing includes its
per-call work on the mask (evaluating mask_mod on the partial blocks); the
column "lists" times flashsdpa with that work done once beforehand
(flashsdpa.BlockLists.from_block_mask). Median of CUDA-event timings after
warm-up, in one process, the two sides alternating per case.

Time to first call: per pattern, torch._dynamo.reset() then the first
compiled flex_attention call (compile + run; inductor's on-disk cache may
shorten it on a second run of the script), against flashsdpa's first call
(no compile step). Memory: peak torch.cuda allocation above the inputs
during one forward+backward at the largest S.

    python bench/bench_block_sparse.py [--quick] [--seqs 8192,16384,...]
        [--patterns bigbird,prefix_lm,random10,document] [--results bench/RESULTS.md]
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import time

import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

import flashsdpa

BLOCK = 128


def bigbird(S, device):
    n = S // BLOCK
    g = torch.Generator().manual_seed(0)
    blocks = torch.zeros(n, n, dtype=torch.bool)
    idx = torch.arange(n)
    for d in (-1, 0, 1):
        blocks[idx, (idx + d).clamp(0, n - 1)] = True
    blocks[:, 0] = blocks[0, :] = True
    blocks[idx.repeat_interleave(3), torch.randint(0, n, (3 * n,), generator=g)] = True
    blocks = blocks.to(device)
    return lambda b, h, q, kv: blocks[q // BLOCK, kv // BLOCK]


def prefix_lm(S, device):
    prefix = S // 8
    return lambda b, h, q, kv: (kv < prefix) | (q >= kv)


def random10(S, device):
    n = S // BLOCK
    g = torch.Generator().manual_seed(1)
    blocks = (torch.rand(n, n, generator=g) < 0.10).to(device)
    return lambda b, h, q, kv: blocks[q // BLOCK, kv // BLOCK]


def document(S, device):
    g = torch.Generator().manual_seed(2)
    lengths = []
    while sum(lengths) < S:
        lengths.append(int(torch.randint(S // 64, S // 8, (1,), generator=g)))
    doc = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))[:S].to(device)
    return lambda b, h, q, kv: (doc[q] == doc[kv]) & (q >= kv)


PATTERNS = {"bigbird": bigbird, "prefix_lm": prefix_lm, "random10": random10, "document": document}


def sync(dev):
    if dev == "cuda":
        torch.cuda.synchronize()


def median_ms(fn, iters, dev, warmup=3):
    """Median time of fn in ms: CUDA events on CUDA, wall clock on the CPU."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if dev == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def visible_fraction(bm, S):
    full = bm.full_kv_num_blocks.sum().item() if bm.full_kv_num_blocks is not None else 0
    part = bm.kv_num_blocks.sum().item()
    return (full + part) / (bm.kv_num_blocks.numel() * (S // BLOCK))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seqs", default="8192,16384,32768,65536,131072")
    ap.add_argument("--patterns", default=",".join(PATTERNS))
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--quick", action="store_true", help="S = 8k and 32k only, fewer iterations")
    ap.add_argument("--results", help="append the table to this markdown file")
    ap.add_argument("--device", default="cuda", help="cuda; cpu only as a smoke test of the script")
    args = ap.parse_args()
    dev = args.device
    seqs = [8192, 32768] if args.quick else [int(s) for s in args.seqs.split(",")]
    iters = 5 if args.quick else 10
    H, D, dt = args.heads, args.dim, torch.bfloat16
    flex = torch.compile(flex_attention, dynamic=False)
    # Compiled, create_block_mask never materialises the S x S mask.
    make_block_mask = torch.compile(create_block_mask)
    # FlexAttention has no CPU backward: the CPU smoke run times its forward only.
    flex_bwd = dev == "cuda"
    name_of_device = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    lines = [f"device: {name_of_device}, torch {torch.__version__}, flashsdpa "
             f"{flashsdpa.__version__}; B=1 H={H} D={D} bf16, {BLOCK}x{BLOCK} blocks; "
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC", "",
             "| pattern | S | visible | fwd flex ms | fwd ours ms | fwd ours (lists) ms | fwd ratio "
             "| fwd+bwd flex ms | fwd+bwd ours ms | fwd+bwd ratio |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    first_calls, memory = [], []
    for name in args.patterns.split(","):
        for si, S in enumerate(seqs):
            mm = PATTERNS[name](S, dev)
            bm = make_block_mask(mm, None, None, S, S, device=dev, BLOCK_SIZE=BLOCK)
            g = torch.Generator(device=dev).manual_seed(S)
            q, k, v = (torch.randn(1, H, S, D, device=dev, dtype=dt, generator=g, requires_grad=True)
                       for _ in range(3))
            dout = torch.randn(1, H, S, D, device=dev, dtype=dt, generator=g)
            if si == 0:  # time to first call, this pattern
                torch._dynamo.reset()
                sync(dev)
                t0 = time.perf_counter()
                flex(*((q, k, v) if flex_bwd else (q.detach(), k.detach(), v.detach())),
                     block_mask=bm)
                sync(dev)
                t_flex = time.perf_counter() - t0
                t0 = time.perf_counter()
                flashsdpa.block_sparse_attention(q, k, v, bm)
                sync(dev)
                first_calls.append((name, S, t_flex, time.perf_counter() - t0))
            lists = flashsdpa.BlockLists.from_block_mask(bm, S, S)
            ours = lambda m=bm: flashsdpa.block_sparse_attention(q, k, v, m)
            theirs = lambda: flex(q, k, v, block_mask=bm)
            qkv_fwd = (q, k, v) if flex_bwd else (q.detach(), k.detach(), v.detach())
            with torch.no_grad():
                f_flex = median_ms(lambda: flex(*qkv_fwd, block_mask=bm), iters, dev)
                f_ours = median_ms(ours, iters, dev)
                f_lists = median_ms(lambda: ours(lists), iters, dev)

            def step(fn):
                return lambda: fn().backward(dout)

            b_flex = median_ms(step(theirs), iters, dev) if flex_bwd else float("nan")
            b_ours = median_ms(step(ours), iters, dev)
            lines.append(f"| {name} | {S // 1024}k | {visible_fraction(bm, S):.3f} | {f_flex:.2f} | "
                         f"{f_ours:.2f} | {f_lists:.2f} | {f_flex / f_ours:.2f} | {b_flex:.2f} | "
                         f"{b_ours:.2f} | {b_flex / b_ours:.2f} |")
            print(lines[-1], flush=True)
            if S == seqs[-1] and dev == "cuda":
                for label, fn in (("flex", theirs), ("flashsdpa", ours)):
                    q.grad = k.grad = v.grad = None
                    torch.cuda.synchronize()
                    base = torch.cuda.memory_allocated()
                    torch.cuda.reset_peak_memory_stats()
                    fn().backward(dout)
                    torch.cuda.synchronize()
                    memory.append((name, S, label, torch.cuda.max_memory_allocated() - base))
            del q, k, v, dout, bm, lists
            if dev == "cuda":
                torch.cuda.empty_cache()
    lines += ["", "| pattern | S | first call flex s (compile) | first call ours s |", "|---|---|---|---|"]
    lines += [f"| {n} | {S // 1024}k | {a:.2f} | {b:.3f} |" for n, S, a, b in first_calls]
    lines += ["", "| pattern | S | fwd+bwd peak above inputs, flex MiB | flashsdpa MiB |",
              "|---|---|---|---|"]
    for n in dict.fromkeys(m[0] for m in memory):
        rows = {m[2]: m[3] for m in memory if m[0] == n}
        S = next(m[1] for m in memory if m[0] == n)
        lines.append(f"| {n} | {S // 1024}k | {rows['flex'] / 2**20:.0f} | {rows['flashsdpa'] / 2**20:.0f} |")
    text = "\n".join(lines)
    print("\n" + text)
    if args.results:
        with open(args.results, "a") as f:
            f.write("\n### Block-sparse attention vs FlexAttention (bench/bench_block_sparse.py)\n\n"
                    + text + "\n")


if __name__ == "__main__":
    main()
