#!/usr/bin/env python3
"""Trains a small decoder-only transformer for a few steps twice — once with
PyTorch's own scaled_dot_product_attention, once with flashsdpa patched in —
from the same initial weights on the same batches, and prints side by side:
the losses (and how closely they agree), flashsdpa's dispatch counts, the time
per step and the peak memory.

Each run is a fresh child process, so their memory figures do not mix:
* CUDA: torch.cuda.max_memory_allocated() (the PyTorch allocator's peak).
* CPU / MPS: the peak resident set size of the child process
  (getrusage ru_maxrss) minus its resident size just before training, i.e.
  how much the process grew while training. This includes everything the
  process allocates (allocator caches, autograd buffers), not just attention.

Usage: python examples/train_demo.py [--steps 10] [--seq-len 1024] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time


def pick_device(requested: str | None) -> str:
    import torch

    if requested:
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def rss_now_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: fall back to the high-water mark
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024  # bytes on macOS, KiB on Linux


# ---------------------------------------------------------------------------
# the model (plain PyTorch; attention through F.scaled_dot_product_attention)


def build_model(args, vocab):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class Attention(nn.Module):
        def __init__(self, dim, heads, kv_heads):
            super().__init__()
            self.h, self.kvh, self.hd = heads, kv_heads, dim // heads
            self.wq = nn.Linear(dim, dim, bias=False)
            self.wkv = nn.Linear(dim, 2 * kv_heads * self.hd, bias=False)
            self.wo = nn.Linear(dim, dim, bias=False)

        def forward(self, x):
            b, s, d = x.shape
            q = self.wq(x).view(b, s, self.h, self.hd).transpose(1, 2)
            k, v = self.wkv(x).view(b, s, 2, self.kvh, self.hd).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                               enable_gqa=self.h != self.kvh)
            return self.wo(a.transpose(1, 2).reshape(b, s, d))

    class Block(nn.Module):
        def __init__(self, dim, heads, kv_heads):
            super().__init__()
            self.n1, self.n2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.attn = Attention(dim, heads, kv_heads)
            self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

        def forward(self, x):
            x = x + self.attn(self.n1(x))
            return x + self.mlp(self.n2(x))

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(vocab, args.dim)
            self.pos = nn.Parameter(torch.randn(args.seq_len, args.dim) * 0.02)
            self.blocks = nn.ModuleList(Block(args.dim, args.heads, args.kv_heads)
                                        for _ in range(args.layers))
            self.norm = nn.LayerNorm(args.dim)
            self.head = nn.Linear(args.dim, vocab, bias=False)

        def forward(self, idx):
            x = self.emb(idx) + self.pos[: idx.shape[1]]
            for blk in self.blocks:
                x = blk(x)
            return self.head(self.norm(x))

    return LM()


def make_batches(args, vocab, n):
    """A learnable synthetic language: half of the tokens follow from the one
    two places before, x[t] = (3 * x[t-2] + 1) mod vocab, the others are noise;
    predicting it needs attention to an earlier position."""
    import torch

    g = torch.Generator().manual_seed(1234)
    out = []
    for _ in range(n):
        seq = torch.empty(args.batch, args.seq_len + 1, dtype=torch.long)
        seq[:] = torch.randint(0, vocab, seq.shape, generator=g)
        rule = torch.rand(seq.shape, generator=g) < 0.5
        for t in range(2, args.seq_len + 1):
            seq[:, t] = torch.where(rule[:, t], (3 * seq[:, t - 2] + 1) % vocab, seq[:, t])
        out.append((seq[:, :-1].contiguous(), seq[:, 1:].contiguous()))
    return out


def train_step(model, opt, x, y, vocab, device_type="cpu", dtype=None):
    """One optimiser step on (x, y) (autocast to `dtype` unless it is None or
    float32); returns the loss."""
    import torch
    import torch.nn.functional as F

    low = dtype is not None and dtype != torch.float32
    with torch.autocast(device_type, dtype=dtype if low else None, enabled=low):
        logits = model(x)
    loss = F.cross_entropy(logits.float().view(-1, vocab), y.view(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def worker(args) -> dict:
    import torch

    import flashsdpa

    device = torch.device(args.device)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    vocab = 64
    torch.manual_seed(0)
    model = build_model(args, vocab).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    batches = [(x.to(device), y.to(device)) for x, y in make_batches(args, vocab, args.steps + 1)]
    if args.variant == "flashsdpa":
        flashsdpa.enable()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()
        elif device.type == "mps":
            torch.mps.synchronize()

    def step(x, y):
        return train_step(model, opt, x, y, vocab, device.type, dtype)

    # one warm-up step (not timed, not reported) on a batch of its own
    step(*batches[0])
    sync()
    flashsdpa.reset_stats()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss0 = rss_now_bytes()
    losses, times = [], []
    for x, y in batches[1:]:
        sync()
        t0 = time.perf_counter()
        losses.append(step(x, y))
        sync()
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak, peak_kind = torch.cuda.max_memory_allocated(device), "cuda max_memory_allocated"
    else:
        peak, peak_kind = peak_rss_bytes() - rss0, "process peak RSS growth"
    st = flashsdpa.stats()
    flashsdpa.disable()
    return {"losses": losses, "times": times, "peak": peak, "peak_kind": peak_kind, "stats": st}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=None, help="cuda, mps or cpu (default: best present)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                    help="autocast dtype (default: bfloat16 on cuda, float32 elsewhere)")
    ap.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.variant:  # child process: one run, result as JSON on the last line
        print(json.dumps(worker(args)))
        return

    import torch

    import flashsdpa

    args.device = pick_device(args.device)
    if args.dtype is None:
        args.dtype = "bfloat16" if args.device == "cuda" else "float32"
    print(f"flashsdpa {flashsdpa.__version__} (backends: {','.join(flashsdpa.backends())}), "
          f"torch {torch.__version__}, python {platform.python_version()}")
    print(f"device: {args.device}   model: {args.layers} layers, dim {args.dim}, "
          f"{args.heads} query / {args.kv_heads} kv heads (head dim {args.dim // args.heads}), "
          f"batch {args.batch} x seq {args.seq_len}, {args.dtype}, {args.steps} steps (+1 warm-up)")
    if args.device == "cpu":
        print(f"threads: torch {torch.get_num_threads()}, flashsdpa CPU backend "
              f"{flashsdpa.get_num_threads()}")

    results = {}
    for variant in ("torch", "flashsdpa"):
        cmd = [sys.executable, os.path.abspath(__file__), "--variant", variant]
        for k in ("device", "steps", "seq_len", "batch", "dim", "heads", "kv_heads", "layers",
                  "lr", "dtype"):
            cmd += ["--" + k.replace("_", "-"), str(getattr(args, k))]
        print(f"... training with {'PyTorch SDPA' if variant == 'torch' else 'flashsdpa'}",
              flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout + proc.stderr)
            sys.exit(f"the {variant} run failed")
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])

    a, b = results["torch"], results["flashsdpa"]
    print()
    print(f"{'step':>4}  {'loss (torch SDPA)':>18}  {'loss (flashsdpa)':>17}  {'|diff|':>9}")
    for i, (la, lb) in enumerate(zip(a["losses"], b["losses"]), 1):
        print(f"{i:>4}  {la:>18.6f}  {lb:>17.6f}  {abs(la - lb):>9.2e}")
    max_diff = max(abs(x - y) for x, y in zip(a["losses"], b["losses"]))
    rel = max_diff / max(abs(x) for x in a["losses"])
    tol = 1e-3 if args.dtype == "float32" else 3e-2
    agree = rel <= tol
    print(f"loss agreement: max |diff| {max_diff:.2e} (relative {rel:.1e}) -> "
          f"{'AGREE' if agree else 'DISAGREE'} (tolerance {tol:g} relative)")

    def mib(x):
        return f"{x / 2**20:.1f} MiB"

    def ms(t):
        t = sorted(t)
        return f"{1000 * t[len(t) // 2]:.1f} ms"

    print()
    print(f"{'':<28}{'torch SDPA':>16}{'flashsdpa':>16}")
    print(f"{'median time / step':<28}{ms(a['times']):>16}{ms(b['times']):>16}")
    print(f"{'peak memory':<28}{mib(a['peak']):>16}{mib(b['peak']):>16}   ({a['peak_kind']})")
    sb = b["stats"]
    print(f"{'attention calls on flashsdpa':<28}{'-':>16}{sb['dispatched']:>16}   "
          f"(forward; {sb['backward']} backward; by device {sb['dispatched_by_device']})")
    print(f"{'fallbacks to torch':<28}{'-':>16}{sb['fallback_total']:>16}   {sb['fallbacks'] or ''}")
    expected = args.steps * args.layers
    if args.device in ("cpu", "cuda") and sb["dispatched"] != expected:
        print(f"warning: expected {expected} flashsdpa dispatches")
    print("\nTimes and memory are single measurements on this machine, not a benchmark.")
    if not agree:
        sys.exit(1)


if __name__ == "__main__":
    main()
