#!/usr/bin/env python3
"""Decode kernel (src/cuda/decode.cu) on the benchmark's decode shapes: the
forced split counts (FLASHSDPA_CUDA_SPLITS), the default heuristic, the
path before it (FLASHSDPA_CUDA_NO_DECODE=1) and PyTorch's FLASH backend;
also the max |flashsdpa - FLASH| of the outputs. Prints one table.

    python3 bench/decode_sweep.py --lib .carry-dec/libflashsdpa.so [--splits 2,4,8,16,32]
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_cuda as bc  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", default="build/src/libflashsdpa.so")
    ap.add_argument("--splits", default="2,4,8,16,32,64")
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    lib = bc.Lib(args.lib)
    from torch.nn.attention import SDPBackend
    g = torch.Generator(device="cuda").manual_seed(0)
    print(f"device: {torch.cuda.get_device_name()}")
    shapes = [(torch.bfloat16, 8, 16, 16, 32768, 128), (torch.float16, 8, 16, 16, 32768, 128),
              (torch.bfloat16, 8, 32, 8, 32768, 128), (torch.bfloat16, 8, 16, 16, 32768, 64),
              (torch.bfloat16, 1, 32, 8, 131072, 128)]
    lines = []
    for dt, B, H, Hk, Sk, D in shapes:
        q = torch.randn(B, H, 1, D, device="cuda", dtype=dt, generator=g)
        k = torch.randn(B, Hk, Sk, D, device="cuda", dtype=dt, generator=g)
        v = torch.randn(B, Hk, Sk, D, device="cuda", dtype=dt, generator=g)
        gb = (k.numel() + v.numel()) * 2 / 1e9
        name = f"{str(dt)[6:]} B{B} H{H} Hk{Hk} Sk{Sk} D{D} ({gb:.2f} GB K+V)"
        fwd, _, (_, _, out) = bc.flashsdpa_fns(lib, q, k, v, q)
        res = []
        for label, env in ([("default", {})] + [(f"n={n}", {"FLASHSDPA_CUDA_SPLITS": n})
                                                 for n in args.splits.split(",")] +
                           [("no-decode", {"FLASHSDPA_CUDA_NO_DECODE": "1"})]):
            os.environ.update(env)
            ms = bc.bench(fwd, warmup=3, reps=args.reps)
            for key in env:
                del os.environ[key]
            res.append((label, ms))
        fl, _ = bc.sdpa_fns(SDPBackend.FLASH_ATTENTION, q, k, v, q, False)
        try:
            ms = bc.bench(fl, warmup=3, reps=args.reps)
        except Exception as e:  # noqa: BLE001
            print("FLASH failed:", e)
            ms = float("nan")
        res.append(("FLASH", ms))
        fwd()
        torch.cuda.synchronize()
        import torch.nn.functional as F
        from torch.nn.attention import sdpa_kernel
        with sdpa_kernel(SDPBackend.MATH if Hk != H else SDPBackend.FLASH_ATTENTION), torch.no_grad():
            ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), enable_gqa=Hk != H) \
                if Hk != H else F.scaled_dot_product_attention(q, k, v)
        err = (out.float() - ref.float()).abs().max().item()
        cells = "  ".join(f"{lab} {ms:.3f} ({gb / ms:.2f} TB/s)" for lab, ms in res)
        lines.append(f"{name}: max|diff| {err:.2e}\n    {cells}")
        print(lines[-1], flush=True)
        del q, k, v
        torch.cuda.empty_cache()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
