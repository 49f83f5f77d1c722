#!/usr/bin/env python3
"""CUDA benchmark: flashsdpa against PyTorch SDPA's FLASH_ATTENTION,
CUDNN_ATTENTION and EFFICIENT_ATTENTION backends and FlexAttention
(torch.compile'd) on sliding-window and block-sparse masks.

Everything runs in this process on the same inputs, on the current stream:
median of CUDA-event timings after warm-up. flashsdpa is called through its
C ABI (ctypes + DLPack structs built from torch tensors), so the benchmark
needs only libflashsdpa.so built with the CUDA backend and PyTorch.

Grid (issue 5): bf16 and fp16; D in {64, 128, 256}; S in {1024, 4096,
16384} with B*S = 32k and H*D = 2048; causal and not; forward and
forward+backward; window 1024 and a block-sparse mask (vs FlexAttention);
decode Sq = 1 with Sk = 32k; forward+backward at S = 64k.

FLOPs: forward 4*B*H*Sq*Sk*D (halved for causal; for masks, scaled by the
visible fraction), forward+backward 3.5x that.

    python bench/bench_cuda.py --lib build/src/libflashsdpa.so \
        [--quick] [--results bench/RESULTS.md] [--png bench/bench_cuda.png]
"""
from __future__ import annotations

import argparse
import ctypes as C
import datetime
import math
import os
import statistics
import sys
import time

import torch

# ---------------------------------------------------------------- C ABI -----
kDLCUDA = 2


class DLDevice(C.Structure):
    _fields_ = [("device_type", C.c_int32), ("device_id", C.c_int32)]


class DLDataType(C.Structure):
    _fields_ = [("code", C.c_uint8), ("bits", C.c_uint8), ("lanes", C.c_uint16)]


class DLTensor(C.Structure):
    _fields_ = [
        ("data", C.c_void_p),
        ("device", DLDevice),
        ("ndim", C.c_int32),
        ("dtype", DLDataType),
        ("shape", C.POINTER(C.c_int64)),
        ("strides", C.POINTER(C.c_int64)),
        ("byte_offset", C.c_uint64),
    ]


class Params(C.Structure):
    _fields_ = [
        ("struct_size", C.c_uint32),
        ("scale", C.c_float),
        ("causal", C.c_int32),
        ("align", C.c_int32),
        ("window_left", C.c_int64),
        ("window_right", C.c_int64),
        ("softcap", C.c_float),
        ("mask", C.POINTER(DLTensor)),
        ("alibi_slopes", C.POINTER(DLTensor)),
        ("cu_seqlens_q", C.POINTER(DLTensor)),
        ("cu_seqlens_k", C.POINTER(DLTensor)),
        ("max_seqlen_q", C.c_int64),
        ("max_seqlen_k", C.c_int64),
        ("dropout_p", C.c_float),
        ("seed", C.c_uint64),
        ("offset", C.c_uint64),
        ("deterministic", C.c_int32),
        ("check_finite", C.c_int32),
    ]


_DT = {
    torch.float16: (2, 16),  # kDLFloat
    torch.bfloat16: (4, 16),  # kDLBfloat
    torch.float32: (2, 32),
    torch.bool: (6, 8),
}


class Dl:
    """A DLTensor view of a torch tensor (keeps the shape/stride arrays alive)."""

    def __init__(self, t: torch.Tensor):
        self.t = t
        n = t.dim()
        self.shape = (C.c_int64 * n)(*t.shape)
        self.strides = (C.c_int64 * n)(*t.stride())
        code, bits = _DT[t.dtype]
        self.dl = DLTensor(
            C.c_void_p(t.data_ptr()),
            DLDevice(kDLCUDA, t.device.index or 0),
            n,
            DLDataType(code, bits, 1),
            self.shape,
            self.strides,
            0,
        )

    def ptr(self):
        return C.pointer(self.dl)


class Lib:
    def __init__(self, path: str):
        self.lib = C.CDLL(path)
        self.lib.fsdpa_params_init.argtypes = [C.POINTER(Params)]
        self.lib.fsdpa_forward.argtypes = [C.POINTER(Params)] + [C.POINTER(DLTensor)] * 5 + [C.c_void_p]
        self.lib.fsdpa_backward.argtypes = [C.POINTER(Params)] + [C.POINTER(DLTensor)] * 9 + [C.c_void_p]
        self.lib.fsdpa_last_error.restype = C.c_char_p
        self.lib.fsdpa_backends.restype = C.c_char_p

    def params(self, causal=False, window_left=-1, mask=None, deterministic=0):
        p = Params()
        self.lib.fsdpa_params_init(C.byref(p))
        p.causal = int(causal)
        p.align = 1  # bottom-right (FlashAttention's causal; same as top-left when Sq == Sk)
        p.window_left = window_left
        p.check_finite = 0
        p.deterministic = int(deterministic)
        if mask is not None:
            p.mask = mask.ptr()
        return p

    def check(self, st):
        if st != 0:
            raise RuntimeError(f"flashsdpa status {st}: {self.lib.fsdpa_last_error().decode()}")

    def forward(self, p, q, k, v, out, lse):
        self.check(self.lib.fsdpa_forward(C.byref(p), q.ptr(), k.ptr(), v.ptr(), out.ptr(),
                                          lse.ptr(), C.c_void_p(torch.cuda.current_stream().cuda_stream)))

    def backward(self, p, do, q, k, v, out, lse, dq, dk, dv):
        self.check(self.lib.fsdpa_backward(C.byref(p), do.ptr(), q.ptr(), k.ptr(), v.ptr(), out.ptr(),
                                           lse.ptr(), dq.ptr(), dk.ptr(), dv.ptr(),
                                           C.c_void_p(torch.cuda.current_stream().cuda_stream)))


# ---------------------------------------------------------------- timing ----
def bench(fn, warmup=3, reps=10, warm_s=0.05):
    # Warm up for at least `warmup` calls and `warm_s` seconds of wall time:
    # a short kernel (decode, 0.7 ms) run right after an idle stretch (a
    # torch.compile, the process start) otherwise meets the GPU still at
    # low clocks, and whichever implementation is timed first pays for it.
    # Longer is not better: under a sustained load the H100's power cap
    # lowers the clock, so a 500 ms warm-up measured 1 ms kernels lower
    # still (bench/RESULTS.md, session 8).
    t0, n = time.perf_counter(), 0
    while n < warmup or time.perf_counter() - t0 < warm_s:
        fn()
        torch.cuda.synchronize()
        n += 1
    ts = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)


def flashsdpa_fns(lib, q, k, v, do, causal=False, window_left=-1, mask=None, deterministic=None):
    B, H, Sq, D = q.shape
    out = torch.empty(B, H, Sq, v.shape[-1], device=q.device, dtype=q.dtype)
    lse = torch.empty(B, H, Sq, device=q.device, dtype=torch.float32)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    m = Dl(mask) if mask is not None else None
    p = lib.params(causal, window_left, m, DETERMINISTIC if deterministic is None else deterministic)
    t = [Dl(x) for x in (q, k, v, out, lse, do, dq, dk, dv)]
    Q, K, V, O, L, DO, DQ, DK, DV = t

    def fwd():
        lib.forward(p, Q, K, V, O, L)

    def fwdbwd():
        lib.forward(p, Q, K, V, O, L)
        lib.backward(p, DO, Q, K, V, O, L, DQ, DK, DV)

    return fwd, fwdbwd, (t, m, out)


def sdpa_fns(backend, q, k, v, do, causal):
    from torch.nn.attention import sdpa_kernel
    import torch.nn.functional as F

    qg, kg, vg = (x.detach().requires_grad_(True) for x in (q, k, v))
    gqa = {"enable_gqa": True} if k.shape[1] != q.shape[1] else {}

    def fwd():
        with sdpa_kernel(backend), torch.no_grad():
            F.scaled_dot_product_attention(q, k, v, is_causal=causal, **gqa)

    def fwdbwd():
        with sdpa_kernel(backend):
            o = F.scaled_dot_product_attention(qg, kg, vg, is_causal=causal)
            torch.autograd.grad(o, (qg, kg, vg), do)

    return fwd, fwdbwd


def flex_fns(q, k, v, do, mask_mod, S):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    bm = create_block_mask(mask_mod, None, None, S, S, device=q.device)
    fa = torch.compile(flex_attention)
    qg, kg, vg = (x.detach().requires_grad_(True) for x in (q, k, v))

    def fwd():
        with torch.no_grad():
            fa(q, k, v, block_mask=bm)

    def fwdbwd():
        o = fa(qg, kg, vg, block_mask=bm)
        torch.autograd.grad(o, (qg, kg, vg), do)

    return fwd, fwdbwd


def with_env(assign: str, fn):
    """fn with the environment variable NAME=VALUE set during the call (the
    library reads its kernel switches per call)."""
    name, value = assign.split("=", 1)

    def wrapped():
        old = os.environ.get(name)
        os.environ[name] = value
        try:
            fn()
        finally:
            if old is None:
                del os.environ[name]
            else:
                os.environ[name] = old

    return wrapped


# ---------------------------------------------------------------- main ------
# fsdpa_params.deterministic of the "flashsdpa" rows (--deterministic).
DETERMINISTIC = 0


def main():
    global DETERMINISTIC
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", default="build/src/libflashsdpa.so")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--results", default="bench/RESULTS.md")
    ap.add_argument("--png", default="bench/bench_cuda.png")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warm-ms", type=float, default=50,
                    help="warm-up: at least 3 calls and this many ms of wall time per implementation")
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--only", default="", help="comma list of sections: dense,mask,decode,long")
    ap.add_argument("--dims", default="", help="dense head dims, e.g. 64,128 (default 64,128,256)")
    ap.add_argument("--seqs", default="", help="dense sequence lengths (default 1024,4096,16384)")
    ap.add_argument("--dtypes", default="", help="bf16,fp16 (default both)")
    ap.add_argument("--deterministic", type=int, default=0,
                    help="fsdpa_params.deterministic of flashsdpa (0: dQ by atomics, like FLASH; 1: bit-reproducible)")
    ap.add_argument("--det-too", action="store_true",
                    help="also time flashsdpa with deterministic = 1 as column 'det' (fwd+bwd, dense and mask)")
    ap.add_argument("--ab", default="",
                    help="NAME=VALUE: also time flashsdpa with this environment variable set, as column 'ab' "
                         "(a kernel variant against the default, in one process on the same inputs)")
    ap.add_argument("--ab-lib", default="",
                    help="PATH: also time this other build of libflashsdpa.so, as column 'ab' (two builds "
                         "in one process on the same inputs)")
    ap.add_argument("--refs", default="FLASH,CUDNN,EFFICIENT", help="PyTorch SDPA backends to compare with")
    ap.add_argument("--modes", default="fwd,fwd+bwd", help="fwd,fwd+bwd (dense and mask sections)")
    args = ap.parse_args()
    DETERMINISTIC = args.deterministic
    refs = [x for x in args.refs.split(",") if x]
    modes = set(args.modes.split(","))

    lib = Lib(args.lib)
    ab_lib = Lib(args.ab_lib) if args.ab_lib else None
    dev = torch.cuda.get_device_name()
    print(f"device: {dev}; torch {torch.__version__}; flashsdpa backends: {lib.lib.fsdpa_backends().decode()}")
    from torch.nn.attention import SDPBackend

    sections = set(args.only.split(",")) if args.only else {"dense", "mask", "decode", "long"}
    rows = []  # (case, mode, impl, ms, tflops)

    def run(case, mode, impl, fn, flops):
        try:
            ms = bench(fn, reps=args.reps, warm_s=args.warm_ms * 1e-3)
            tf = flops / (ms * 1e-3) / 1e12
            rows.append((case, mode, impl, ms, tf))
            print(f"  {case:38s} {mode:7s} {impl:10s} {ms:9.3f} ms {tf:7.1f} TFLOP/s", flush=True)
        except Exception as e:  # a backend may refuse a shape (e.g. D=256)
            rows.append((case, mode, impl, float("nan"), float("nan")))
            print(f"  {case:38s} {mode:7s} {impl:10s} n/a ({type(e).__name__}: {str(e)[:80]})", flush=True)
        torch.cuda.synchronize()

    g = torch.Generator(device="cuda").manual_seed(0)

    def rand(*shape, dtype):
        return torch.randn(*shape, device="cuda", dtype=dtype, generator=g)

    dtypes = [torch.bfloat16] if args.quick else [torch.bfloat16, torch.float16]
    Ds = [128] if args.quick else [64, 128, 256]
    Ss = [4096] if args.quick else [1024, 4096, 16384]
    if args.dims:
        Ds = [int(x) for x in args.dims.split(",")]
    if args.seqs:
        Ss = [int(x) for x in args.seqs.split(",")]
    if args.dtypes:
        dtypes = [{"bf16": torch.bfloat16, "fp16": torch.float16}[x] for x in args.dtypes.split(",")]
    if "dense" in sections:
        for dt in dtypes:
            for D in Ds:
                for S in Ss:
                    B, H = 32768 // S, 2048 // D
                    q, k, v, do = (rand(B, H, S, D, dtype=dt) for _ in range(4))
                    for causal in (False, True):
                        case = f"{str(dt)[6:]} D{D} S{S} B{B} H{H}{' causal' if causal else ''}"
                        f = 4.0 * B * H * S * S * D * (0.5 if causal else 1.0)
                        ours = flashsdpa_fns(lib, q, k, v, do, causal)
                        impls = [("flashsdpa", ours[0], ours[1])]
                        if args.det_too:
                            det = flashsdpa_fns(lib, q, k, v, do, causal, deterministic=1)
                            impls.append(("det", None, det[1]))
                        if args.ab:
                            impls.append(("ab", *(with_env(args.ab, fn) for fn in ours[:2])))
                        elif ab_lib:
                            impls.append(("ab", *flashsdpa_fns(ab_lib, q, k, v, do, causal)[:2]))
                        for name, be in (("FLASH", SDPBackend.FLASH_ATTENTION),
                                         ("CUDNN", SDPBackend.CUDNN_ATTENTION),
                                         ("EFFICIENT", SDPBackend.EFFICIENT_ATTENTION)):
                            if name not in refs:
                                continue
                            a, b = sdpa_fns(be, q, k, v, do, causal)
                            impls.append((name, a, b))
                        for mode, idx, mul in (("fwd", 1, 1.0), ("fwd+bwd", 2, 3.5)):
                            if mode not in modes:
                                continue
                            for name, *fns in impls:
                                if fns[idx - 1] is not None:
                                    run(case, mode, name, fns[idx - 1], f * mul)
                    del q, k, v, do
                    torch.cuda.empty_cache()

    if "mask" in sections and not args.no_flex:
        dt, D = torch.bfloat16, 128
        for S in ([4096] if args.quick else [4096, 16384]):
            B, H = 32768 // S, 2048 // D
            q, k, v, do = (rand(B, H, S, D, dtype=dt) for _ in range(4))
            W = 1024

            def win(b, h, qi, ki):
                return (qi >= ki) & (qi - ki <= W)

            vis = sum(min(i, W) + 1 for i in range(S)) / (S * S)
            case = f"bf16 D128 S{S} window{W} causal"
            ours = flashsdpa_fns(lib, q, k, v, do, causal=True, window_left=W)
            ab = flashsdpa_fns(ab_lib, q, k, v, do, causal=True, window_left=W) if ab_lib else None
            flex = flex_fns(q, k, v, do, win, S)
            f = 4.0 * B * H * S * S * D * vis
            for mode, idx, mul in (("fwd", 0, 1.0), ("fwd+bwd", 1, 3.5)):
                run(case, mode, "flashsdpa", ours[idx], f * mul)
                if args.ab:
                    run(case, mode, "ab", with_env(args.ab, ours[idx]), f * mul)
                elif ab:
                    run(case, mode, "ab", ab[idx], f * mul)
                run(case, mode, "flex", flex[idx], f * mul)

            # Block-sparse: 128x128 blocks, keep a block iff (qb + kb) % 3 != 0
            # or on the diagonal; flashsdpa gets it as a broadcast bool mask.
            BS = 128

            def blocks(b, h, qi, ki):
                qb, kb = qi // BS, ki // BS
                return ((qb + kb) % 3 != 0) | (qb == kb)

            qi = torch.arange(S, device="cuda")
            mask = blocks(None, None, qi[:, None], qi[None, :]).contiguous()
            vis = mask.float().mean().item()
            case = f"bf16 D128 S{S} block-sparse {vis:.2f}"
            ours = flashsdpa_fns(lib, q, k, v, do, mask=mask)
            ab = flashsdpa_fns(ab_lib, q, k, v, do, mask=mask) if ab_lib else None
            flex = flex_fns(q, k, v, do, blocks, S)
            f = 4.0 * B * H * S * S * D * vis
            for mode, idx, mul in (("fwd", 0, 1.0), ("fwd+bwd", 1, 3.5)):
                run(case, mode, "flashsdpa", ours[idx], f * mul)
                if args.ab:
                    run(case, mode, "ab", with_env(args.ab, ours[idx]), f * mul)
                elif ab:
                    run(case, mode, "ab", ab[idx], f * mul)
                run(case, mode, "flex", flex[idx], f * mul)
            del q, k, v, do, mask
            torch.cuda.empty_cache()

    if "decode" in sections:
        # Sq = 1 over 32k keys (MHA, then GQA Hq 32 / Hk 8: the same K/V bytes
        # per query head group); the time is the time to read K and V.
        for dt in dtypes:
            for B, H, Hk, Sk, D in ((8, 16, 16, 32768, 128), (8, 32, 8, 32768, 128)):
                q = rand(B, H, 1, D, dtype=dt)
                k, v = rand(B, Hk, Sk, D, dtype=dt), rand(B, Hk, Sk, D, dtype=dt)
                do = rand(B, H, 1, D, dtype=dt)
                gq = f" Hk{Hk}" if Hk != H else ""
                case = f"{str(dt)[6:]} decode Sq1 Sk{Sk} B{B} H{H}{gq} D{D}"
                f = 4.0 * B * H * Sk * D
                ours = flashsdpa_fns(lib, q, k, v, do)
                run(case, "fwd", "flashsdpa", ours[0], f)
                for name, be in (("FLASH", SDPBackend.FLASH_ATTENTION), ("CUDNN", SDPBackend.CUDNN_ATTENTION),
                                 ("EFFICIENT", SDPBackend.EFFICIENT_ATTENTION)):
                    if name not in refs:
                        continue
                    a, _ = sdpa_fns(be, q, k, v, do, False)
                    run(case, "fwd", name, a, f)
                del q, k, v, do

    if "long" in sections and not args.quick:
        # Forward+backward at S = 64k: extra memory is O(S) (lse, D, no S^2).
        dt, B, H, S, D = torch.bfloat16, 1, 16, 65536, 128
        q, k, v, do = (rand(B, H, S, D, dtype=dt) for _ in range(4))
        case = f"bf16 D128 S{S} B1 H16 causal"
        torch.cuda.synchronize()
        free0 = torch.cuda.mem_get_info()[0]
        ours = flashsdpa_fns(lib, q, k, v, do, causal=True)
        base = torch.cuda.memory_allocated()
        f = 4.0 * B * H * S * S * D * 0.5
        run(case, "fwd+bwd", "flashsdpa", ours[1], f * 3.5)
        print(f"  S=64k: tensors {base / 2**30:.2f} GiB allocated by torch (q,k,v,do,out,lse,dq,dk,dv); "
              f"device free before/after: {free0 / 2**30:.1f}/{torch.cuda.mem_get_info()[0] / 2**30:.1f} GiB")
        run(case, "fwd+bwd", "FLASH", sdpa_fns(SDPBackend.FLASH_ATTENTION, q, k, v, do, True)[1], f * 3.5)
        del q, k, v, do

    # ---- table: flashsdpa vs each other implementation --------------------
    by = {}
    for case, mode, impl, ms, tf in rows:
        by.setdefault((case, mode), {})[impl] = (ms, tf)
    others = (["det"] if args.det_too else []) + (["ab"] if args.ab or ab_lib else []) + ["FLASH", "CUDNN", "EFFICIENT", "flex"]
    lines = ["| case | mode | flashsdpa ms | TFLOP/s | " + " | ".join(f"{o} TFLOP/s (ratio)" for o in others) + " |",
             "|---|---|---|---|" + "---|" * len(others)]
    ratios = {o: {"fwd": [], "fwd+bwd": []} for o in others}
    for (case, mode), d in by.items():
        if "flashsdpa" not in d:
            continue
        ms, tf = d["flashsdpa"]
        cells = []
        for o in others:
            if o in d and not math.isnan(d[o][0]) and not math.isnan(ms):
                r = d[o][0] / ms  # > 1: flashsdpa faster
                ratios[o][mode].append(r)
                cells.append(f"{d[o][1]:.0f} ({r:.2f}x)")
            else:
                cells.append("-")
        lines.append(f"| {case} | {mode} | {ms:.3f} | {tf:.0f} | " + " | ".join(cells) + " |")
    geo = []
    for o in others:
        for mode in ("fwd", "fwd+bwd"):
            r = ratios[o][mode]
            if r:
                geo.append(f"{o} {mode}: {math.exp(sum(map(math.log, r)) / len(r)):.2f}x over {len(r)} cases")
    table = "\n".join(lines)
    summary = "Geometric mean of (their time / flashsdpa time), > 1 = flashsdpa faster: " + "; ".join(geo)
    print()
    print(table)
    print()
    print(summary)

    cmd = "python " + " ".join(sys.argv)
    entry = (f"\n## CUDA backend: {dev}, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC\n\n"
             f"Command: `{cmd}` (torch {torch.__version__}). Median of {args.reps} CUDA-event timings "
             f"after warm-up (at least 3 calls and {args.warm_ms:g} ms); ratio = their time / flashsdpa time (> 1: flashsdpa faster).\n\n"
             f"{table}\n\n{summary}\n")
    if args.results:
        with open(args.results, "a") as fh:
            fh.write(entry)
    if args.png:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            keys = [k for k in by if "flashsdpa" in by[k]]
            fig, ax = plt.subplots(figsize=(max(8, len(keys) * 0.35), 5))
            x = range(len(keys))
            for j, o in enumerate(["flashsdpa"] + others):
                ys = [by[k].get(o, (0, float("nan")))[1] for k in keys]
                ax.bar([i + j * 0.16 for i in x], ys, width=0.16, label=o)
            ax.set_xticks([i + 0.32 for i in x])
            ax.set_xticklabels([f"{c} {m}" for c, m in keys], rotation=90, fontsize=6)
            ax.set_ylabel("TFLOP/s")
            ax.set_title(f"flashsdpa CUDA vs PyTorch SDPA / FlexAttention ({dev})")
            ax.legend(fontsize=7)
            fig.tight_layout()
            fig.savefig(args.png, dpi=120)
        except Exception as e:
            print(f"png not written: {e}")


if __name__ == "__main__":
    main()
