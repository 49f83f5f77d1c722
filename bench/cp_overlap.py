#!/usr/bin/env python3
"""Context parallelism on one device (issue 21): can a ring step's transfer
hide behind the attention of the block in hand?

Each step of ``flashsdpa.distributed``'s ring computes one block (this rank's
S_local queries against another rank's S_local keys) while the next K/V block
travels to the neighbour; the backward also sends the float32 dK/dV
accumulators. This script times one block's kernels on this device, exactly
as the ring calls them (``distributed._block_forward`` / ``_block_backward``),
and sets them against the time the step's messages would take at a stated
link bandwidth (default 450 GB/s: one direction of an H100's NVLink 4, 18
links x 25 GB/s; pass the bandwidth you measured, e.g. with nccl-tests'
sendrecv, as --bw-gbs). Ratio = compute / transfer: above 1 the transfer can
hide completely; the summary gives the smallest S_local where it does.

Full blocks (no causal mask): the busiest steps. With causal attention the
zigzag layout gives every step half a block of work against a whole block's
transfer, so halve the ratio for those steps.

    python bench/cp_overlap.py [--device cuda] [--dtype bf16] [--heads 32/8] [--dim 128]
                               [--batch 1] [--seqs 1024,2048,...] [--bw-gbs 450] [--iters 20]

No process group is needed: nothing is sent, the transfer time is computed.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from flashsdpa import distributed as fd

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def timed_ms(fn, device: str, iters: int) -> float:
    """Median wall time of fn() in ms (CUDA: synchronised around each call)."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(2):
        fn()
    sync()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def one_block(b, s, hq, hk, d, dtype, device, iters):
    """(forward ms, backward ms) of one full ring block of S_local x S_local."""
    g = torch.Generator(device=device).manual_seed(0)
    q, dout = (torch.randn(b, s, hq, d, generator=g, device=device, dtype=dtype) for _ in range(2))
    k, v = (torch.randn(b, s, hk, d, generator=g, device=device, dtype=dtype) for _ in range(2))
    blk = fd._Block(slice(0, s), slice(0, s), -1, -1, s, 0, 1)  # keys wholly in the past
    out, lse = fd._block_forward(q, k, v, None, blk, fd._NO_EXTRAS, None)
    out, lse = out.to(dtype), lse.squeeze(-1).transpose(1, 2).contiguous()
    fwd = timed_ms(lambda: fd._block_forward(q, k, v, None, blk, fd._NO_EXTRAS, None),
                   device, iters)
    bwd = timed_ms(lambda: fd._block_backward(dout, q, k, v, out, lse, None, blk, fd._NO_EXTRAS,
                                              False, None), device, iters)
    return fwd, bwd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    ap.add_argument("--heads", default="32/8", help="Hq/Hk")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seqs", default=None, help="S_local values (default: by device)")
    ap.add_argument("--bw-gbs", type=float, default=450.0,
                    help="link bandwidth per direction, GB/s (default: H100 NVLink 4)")
    ap.add_argument("--iters", type=int, default=20)
    a = ap.parse_args()
    dtype = DTYPES[a.dtype]
    hq, hk = (int(x) for x in a.heads.split("/"))
    default = "1024,2048,4096,8192,16384" if a.device == "cuda" else "256,512,1024"
    seqs = [int(x) for x in (a.seqs or default).split(",")]
    bw = a.bw_gbs * 1e9
    elem = torch.empty((), dtype=dtype).element_size()

    name = torch.cuda.get_device_name() if a.device == "cuda" else "CPU"
    print(f"device {name}, {a.dtype}, B {a.batch}, Hq/Hk {hq}/{hk}, D {a.dim}, "
          f"link {a.bw_gbs:g} GB/s per direction; one full block per step")
    print(f"{'S_local':>8} {'fwd ms':>9} {'KV send ms':>11} {'fwd ratio':>10} "
          f"{'bwd ms':>9} {'KV+dKV ms':>10} {'bwd ratio':>10}")
    hidden = {"fwd": None, "bwd": None}
    for s in seqs:
        fwd, bwd = one_block(a.batch, s, hq, hk, a.dim, dtype, a.device, a.iters)
        kv_bytes = 2 * a.batch * s * hk * a.dim * elem  # K and V, Hk heads only
        dkv_bytes = 2 * a.batch * s * hk * a.dim * 4  # float32 accumulators
        send_fwd = kv_bytes / bw * 1e3
        send_bwd = (kv_bytes + dkv_bytes) / bw * 1e3
        rf, rb = fwd / send_fwd, bwd / send_bwd
        for key, r in (("fwd", rf), ("bwd", rb)):
            if r >= 1.0 and hidden[key] is None:
                hidden[key] = s
        print(f"{s:>8} {fwd:>9.3f} {send_fwd:>11.4f} {rf:>10.1f} {bwd:>9.3f} {send_bwd:>10.4f} "
              f"{rb:>10.1f}")
    for key in ("fwd", "bwd"):
        where = f"from S_local {hidden[key]}" if hidden[key] else "at none of these S_local"
        print(f"{key}: the transfer hides behind the block's compute {where}")


if __name__ == "__main__":
    main()
