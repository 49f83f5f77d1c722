#!/usr/bin/env python3
"""Decode kernel (src/cuda/decode.cu) on decode shapes under several
settings of the override FLASHSDPA_CUDA_FORCE (n=N: decode,splits=N forces
the split count; nodecode: the path before it, sm80) and PyTorch's FLASH backend
(config "FLASH"), timed in the order given (a config may repeat, so that
order effects show); checks each output against FLASH (MHA) or the fp32
math backend (GQA). Prints one table of ms (and K+V bytes / time).

    python3 bench/decode_sweep.py --lib .carry-dec/libflashsdpa.so \
        [--configs "FLASH;default;n=2;nodecode;FLASH;default"]
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_cuda as bc  # noqa: E402

def parse(cfg):
    """A config ("default", "n=4", "nodecode") as the environment it sets."""
    item = cfg.strip()
    if not item or item == "default":
        return {}
    if item == "nodecode":
        return {"FLASHSDPA_CUDA_FORCE": "sm80"}
    k, _, v = item.partition("=")
    if k != "n":
        raise SystemExit(f"unknown config {cfg!r}: expected default, n=N or nodecode")
    return {"FLASHSDPA_CUDA_FORCE": f"decode,splits={int(v)}"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", default="build/src/libflashsdpa.so")
    ap.add_argument("--configs", default="FLASH;default;n=1;n=2;n=4;n=8;nodecode;FLASH;default")
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    lib = bc.Lib(args.lib)
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F
    g = torch.Generator(device="cuda").manual_seed(0)
    print(f"device: {torch.cuda.get_device_name()}")
    shapes = [(torch.bfloat16, 8, 16, 16, 32768, 128), (torch.float16, 8, 16, 16, 32768, 128),
              (torch.bfloat16, 8, 32, 8, 32768, 128), (torch.bfloat16, 8, 16, 16, 32768, 64),
              (torch.bfloat16, 1, 32, 8, 131072, 128)]
    cfgs = [c for c in args.configs.split(";") if c]
    table = {}
    names = []
    for dt, B, H, Hk, Sk, D in shapes:
        q = torch.randn(B, H, 1, D, device="cuda", dtype=dt, generator=g)
        k = torch.randn(B, Hk, Sk, D, device="cuda", dtype=dt, generator=g)
        v = torch.randn(B, Hk, Sk, D, device="cuda", dtype=dt, generator=g)
        gb = (k.numel() + v.numel()) * 2 / 1e9
        name = f"{str(dt)[6:]} B{B} H{H}/{Hk} Sk{Sk} D{D}"
        names.append(name)
        fwd, _, (_, _, out) = bc.flashsdpa_fns(lib, q, k, v, q)
        with torch.no_grad():
            if Hk == H:
                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    ref = F.scaled_dot_product_attention(q, k, v)
            else:
                with sdpa_kernel(SDPBackend.MATH):
                    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), enable_gqa=True)
        fl, _ = bc.sdpa_fns(SDPBackend.FLASH_ATTENTION, q, k, v, q, False)
        for i, cfg in enumerate(cfgs):
            if cfg == "FLASH":
                try:
                    table[(i, name)] = f"{bc.bench(fl, warmup=3, reps=args.reps):.3f}"
                except Exception as e:  # noqa: BLE001
                    table[(i, name)] = f"n/a {type(e).__name__}"
                continue
            env = parse(cfg)
            os.environ.update(env)
            out.fill_(float("nan"))
            fwd()
            torch.cuda.synchronize()
            err = (out.float() - ref.float()).abs().max().item()
            ms = bc.bench(fwd, warmup=3, reps=args.reps)
            for key in env:
                del os.environ[key]
            table[(i, name)] = f"{ms:.3f} {gb / ms:.2f}" + ("" if err < 2e-2 else f" ERR{err:.1e}")
        del q, k, v, ref
        torch.cuda.empty_cache()
    print("config | " + " | ".join(names))
    for i, cfg in enumerate(cfgs):
        print(f"{cfg} | " + " | ".join(table.get((i, n), "-") for n in names))


if __name__ == "__main__":
    main()
