#!/usr/bin/env python3
"""The sweep users see (issue 18): flashsdpa's public Python API against the
best of PyTorch's SDPA backends (cuDNN, FLASH, EFFICIENT, each forced with
``sdpa_kernel``), and flashsdpa's C ABI alone (the ``_C`` binding with
preallocated outputs: what the Python layer costs on top), in one process on
the same inputs, side by side.

Cases: non-power-of-two and power-of-two S from 128 to 16k, small and large
batch*heads, head dims 64/80/96/128/192/256 and 192/128 (DeepSeek), MHA/GQA/MQA, causal and not,
forward and forward+backward, bf16 (and fp16 on a subset). Timing: CUDA
events, median of the calls in a fixed time window after warm-up (L2 not
flushed; the inputs of the large cases exceed it). Ratio = the peer's time /
ours (> 1: flashsdpa faster); "best" = the fastest peer that runs the case.

    python bench/bench_sweep.py [--quick | --targets] [--results out.md] [--png out.png]
        [--budget-s 420]

Prints one line per case, then the geomeans, the worst case and the issue's
targets.
"""
from __future__ import annotations

import argparse
import datetime
import math
import statistics
import subprocess
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import flashsdpa
from flashsdpa import _C, _ops

PEERS = {"cuDNN": SDPBackend.CUDNN_ATTENTION, "FLASH": SDPBackend.FLASH_ATTENTION,
         "EFF": SDPBackend.EFFICIENT_ATTENTION}


def cases(quick: bool, targets: bool = False):
    """(B, Hq, Hk, S, D, Dv, causal, dtype)."""
    out = []
    bf, fp = torch.bfloat16, torch.float16
    add = lambda b, hq, hk, s, d, c, dt=bf, dv=None: out.append((b, hq, hk, s, d, dv or d, c, dt))
    if targets:  # the targets alone: the tiny call, S <= 1024 at D 64/128
        for c in (False, True):
            add(1, 1, 1, 128, 64, c)
            for d in (64, 128):
                add(16, 16, 16, 1000, d, c)
                add(64, 16, 16, 256, d, c)
        return out
    # The tiny call and small batch*heads.
    for c in (False, True):
        add(1, 1, 1, 128, 64, c)
        add(1, 16, 16, 128, 64, c, fp)
    seqs = [128, 384, 1000, 2048, 3000, 6000, 16384] if not quick else [128, 1000, 3000, 16384]
    dims = [64, 80, 96, 128, 192, 256] if not quick else [64, 96, 128, 256]
    for s in seqs:
        b = max(1, 16384 // s)  # large batch*heads: B*S = 16k tokens, H 16
        for d in dims:
            h = 16 if d <= 128 else 8
            for c in (False, True):
                add(b, h, h, s, d, c)
        for c in (False, True):
            add(b, 16, 16, s, 192, c, dv=128)  # DeepSeek's head dims (V 128)
        if s in (1000, 3000, 16384) or quick:
            for c in (False, True):
                add(b, 32, 8, s, 128, c)   # GQA 4:1 (Llama-like)
                add(b, 16, 1, s, 64, c)    # MQA
                add(1, 4, 4, s, 128, c)    # small batch*heads
                add(b, 16, 16, s, 128, c, fp)
    return out


def timer(fn, window_ms: float):
    """Median of per-call CUDA-event times over about window_ms after warm-up."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    one = max(time.perf_counter() - t0, 1e-6)
    n = int(min(200, max(5, window_ms / 1e3 / one)))
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
          for _ in range(n)]
    for a, b in ev:
        a.record()
        fn()
        b.record()
    torch.cuda.synchronize()
    return statistics.median(a.elapsed_time(b) for a, b in ev) * 1e3  # us


def run_case(b, hq, hk, s, d, dv_, causal, dt, window_ms):
    g = torch.Generator(device="cuda").manual_seed(1)
    q = torch.randn(b, hq, s, d, device="cuda", dtype=dt, generator=g)
    k = torch.randn(b, hk, s, d, device="cuda", dtype=dt, generator=g)
    v = torch.randn(b, hk, s, dv_, device="cuda", dtype=dt, generator=g)
    do = torch.randn(b, hq, s, dv_, device="cuda", dtype=dt, generator=g)
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    gqa = hq != hk
    res = {}

    def both(name, f):
        def fb():
            o = f(qg, kg, vg)
            torch.autograd.grad(o, (qg, kg, vg), do)
        try:
            res[name] = (timer(lambda: f(q, k, v), window_ms), timer(fb, window_ms))
        except RuntimeError as e:  # a peer that refuses the case
            res[name] = None
            torch.cuda.synchronize()
            _ = e

    both("ours", lambda q_, k_, v_: flashsdpa.scaled_dot_product_attention(
        q_, k_, v_, is_causal=causal, enable_gqa=gqa))
    # The C ABI through the _C binding: outputs preallocated, no autograd.
    out, lse = torch.empty_like(do), torch.empty(b, hq, s, device="cuda", dtype=torch.float32)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    p = _ops._params(None, causal, False, -1, -1, 0.0, 0, 0, 0.0, None, False, False)
    st = torch.cuda.current_stream().cuda_stream
    dl = torch.utils.dlpack.to_dlpack

    def abi_f():
        _C.forward(p, dl(q), dl(k), dl(v), dl(out), dl(lse), None, None, None, None, st)

    def abi_fb():
        abi_f()
        _C.backward(p, dl(do), dl(q), dl(k), dl(v), dl(out), dl(lse), dl(dq), dl(dk), dl(dv),
                    None, None, None, None, st)
    res["C ABI"] = (timer(abi_f, window_ms), timer(abi_fb, window_ms))
    for name, be in PEERS.items():
        def f(q_, k_, v_, be=be):
            with sdpa_kernel(be):
                return F.scaled_dot_product_attention(q_, k_, v_, is_causal=causal, enable_gqa=gqa)
        both(name, f)
    plan = flashsdpa.explain(q, k, v, is_causal=causal, enable_gqa=gqa).split("\n")[0]
    family = plan.split("family ")[1].split(",")[0] if "family " in plan else "?"
    bplan = flashsdpa.explain(q, k, v, is_causal=causal, enable_gqa=gqa, backward=True)
    bfamily = bplan.split("family ")[1].split(",")[0] if "family " in bplan else "?"
    del q, k, v, do, qg, kg, vg, out, lse, dq, dk, dv
    return res, f"{family}/{bfamily}"


def gmean(xs):
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--targets", action="store_true", help="only the issue's target cases")
    ap.add_argument("--results", default="")
    ap.add_argument("--png", default="")
    ap.add_argument("--budget-s", type=float, default=420.0)
    ap.add_argument("--window-ms", type=float, default=40.0)
    ap.add_argument("--dims", default="", help="only these head dims, e.g. 80,96,192/128")
    a = ap.parse_args()
    t_start = time.time()
    dev = torch.cuda.get_device_name()
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = "?"
    head = (f"{dev}, torch {torch.__version__}, flashsdpa {flashsdpa.__version__} "
            f"({_C.__file__}), commit {commit or '?'}, {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC")
    print(head)
    cols = ["ours", "C ABI", "cuDNN", "FLASH", "EFF"]
    hdr = (f"{'case':>30} {'mode':>7} {'plan':>13} | " + " ".join(f"{c:>8}" for c in cols) +
           f" | {'vs best':>7} {'vs cuDNN':>8}")
    print(hdr + "   (us; ratio = peer time / ours)")
    rows = []
    skipped = 0
    only = {x if "/" in x else f"{x}/{x}" for x in a.dims.split(",") if x}
    for (b, hq, hk, s, d, dv, causal, dt) in cases(a.quick, a.targets):
        if only and f"{d}/{dv}" not in only:
            continue
        if time.time() - t_start > a.budget_s:
            skipped += 1
            continue
        name = (f"{'bf16' if dt == torch.bfloat16 else 'fp16'} B{b} H{hq}" +
                (f"/{hk}" if hk != hq else "") + f" S{s} D{d}" + (f"/{dv}" if dv != d else "") +
                (" causal" if causal else ""))
        res, plan = run_case(b, hq, hk, s, d, dv, causal, dt, a.window_ms)
        torch.cuda.empty_cache()
        for mi, mode in enumerate(("fwd", "fwd+bwd")):
            t = {c: (res[c][mi] if res.get(c) else None) for c in cols}
            peers = [t[c] for c in ("cuDNN", "FLASH", "EFF") if t[c]]
            best = min(peers) if peers else None
            ours = t["ours"]
            r_best = best / ours if best and ours else None
            r_cudnn = t["cuDNN"] / ours if t["cuDNN"] and ours else None
            rows.append(dict(name=name, mode=mode, b=b, hq=hq, hk=hk, s=s, d=d, dv=dv, causal=causal,
                             dt=dt, t=t, best=best, r_best=r_best, r_cudnn=r_cudnn, plan=plan))
            fmt = lambda x: f"{x:8.1f}" if x else f"{'-':>8}"
            rf = lambda x: f"{x:7.2f}" if x else f"{'-':>7}"
            print(f"{name:>30} {mode:>7} {plan:>13} | " + " ".join(fmt(t[c]) for c in cols) +
                  f" | {rf(r_best)} {rf(r_cudnn):>8}", flush=True)
    lines = [head, ""]
    if skipped:
        lines.append(f"{skipped} cases skipped: the --budget-s {a.budget_s:.0f} s ran out")
    for mode in ("fwd", "fwd+bwd"):
        rs = [r for r in rows if r["mode"] == mode]
        rb = [r["r_best"] for r in rs if r["r_best"]]
        rc = [r["r_cudnn"] for r in rs if r["r_cudnn"]]
        api = [r["t"]["ours"] / r["t"]["C ABI"] for r in rs if r["t"]["ours"] and r["t"]["C ABI"]]
        worst = min((r for r in rs if r["r_best"]), key=lambda r: r["r_best"], default=None)
        lines.append(f"{mode}: {len(rs)} cases; geomean vs best peer {gmean(rb):.3f}x, vs cuDNN "
                     f"{gmean(rc):.3f}x ({len(rc)} cases cuDNN ran); API time / C ABI time "
                     f"geomean {gmean(api):.3f}")
        if worst:
            lines.append(f"  worst vs best peer: {worst['name']} {worst['r_best']:.2f}x "
                         f"(ours {worst['t']['ours']:.1f} us, best {worst['best']:.1f} us, "
                         f"plan {worst['plan']})")
    # The targets.
    tiny = [r for r in rows if r["mode"] == "fwd+bwd" and r["b"] == 1 and r["hq"] == 1
            and r["s"] == 128 and r["d"] == 64]
    for r in tiny:
        fl = r["t"]["FLASH"]
        lines.append(f"target tiny call ({r['name']}, fwd+bwd): ours {r['t']['ours']:.1f} us, "
                     f"C ABI {r['t']['C ABI']:.1f} us, FLASH {fl:.1f} us: ours/FLASH "
                     f"{r['t']['ours'] / fl:.2f} (target <= 1.2)" if fl else "FLASH did not run")
    short = [r for r in rows if r["mode"] == "fwd+bwd" and r["s"] <= 1024 and r["d"] in (64, 128)
             and r["r_cudnn"] and r["hq"] == r["hk"] and r["b"] * r["hq"] > 1]
    if short:
        w = min(short, key=lambda r: r["r_cudnn"])
        lines.append(f"target fwd+bwd S <= 1024, D 64/128 vs cuDNN >= 0.9: min {w['r_cudnn']:.2f} "
                     f"({w['name']}), {sum(r['r_cudnn'] >= 0.9 for r in short)}/{len(short)} hold")
    main_d = [r for r in rows if r["d"] in (64, 128, 256) and r["d"] == r["dv"] and r["r_best"]]
    below = [r for r in main_d if r["r_best"] < 0.8]
    lines.append(f"target no case at D 64/128/256 below 0.8x the best peer: {len(below)} of "
                 f"{len(main_d)} below" + "".join(f"\n  {r['name']} {r['mode']} {r['r_best']:.2f}"
                                                 for r in sorted(below, key=lambda r: r['r_best'])))
    for dims in ((80, 80), (96, 96), (192, 128)):  # the other head dims: >= 0.9x cuDNN
        rs = [r for r in rows if (r["d"], r["dv"]) == dims and (r["r_cudnn"] or r["r_best"])]
        if rs:
            ratio = lambda r: r["r_cudnn"] or r["r_best"]
            w = min(rs, key=ratio)
            lines.append(f"target D {dims[0]}/{dims[1]} >= 0.9x cuDNN (best peer where cuDNN does "
                         f"not run): min {ratio(w):.2f} ({w['name']} {w['mode']}), "
                         f"{sum(ratio(r) >= 0.9 for r in rs)}/{len(rs)} hold")
    lines.append(f"wall time {time.time() - t_start:.0f} s")
    print("\n".join(lines))
    if a.results:
        with open(a.results, "w") as f:
            f.write("```\n" + hdr + "\n")
            for r in rows:
                f.write(f"{r['name']:>30} {r['mode']:>7} {r['plan']:>13} | " +
                        " ".join(f"{r['t'][c]:8.1f}" if r['t'][c] else f"{'-':>8}" for c in cols) +
                        (f" | {r['r_best']:7.2f}" if r["r_best"] else " |       -") +
                        (f" {r['r_cudnn']:8.2f}" if r["r_cudnn"] else "        -") + "\n")
            f.write("```\n\n" + "\n".join(lines) + "\n")
    if a.png:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
        for ax, mode in zip(axes, ("fwd", "fwd+bwd")):
            for d in sorted({(r["d"], r["dv"]) for r in rows}):
                rs = [r for r in rows if r["mode"] == mode and (r["d"], r["dv"]) == d and r["r_best"]]
                label = f"D {d[0]}" + (f"/{d[1]}" if d[1] != d[0] else "")
                ax.scatter([r["s"] for r in rs], [r["r_best"] for r in rs], label=label, s=14)
            ax.axhline(1.0, color="k", lw=0.8)
            ax.axhline(0.8, color="r", lw=0.8, ls="--")
            ax.set_xscale("log")
            ax.set_xlabel("S")
            ax.set_title(f"{mode}: best peer time / flashsdpa time")
            ax.legend(fontsize=7)
        axes[0].set_ylabel("ratio (> 1: flashsdpa faster)")
        fig.suptitle(dev, fontsize=9)
        fig.tight_layout()
        fig.savefig(a.png, dpi=110)


if __name__ == "__main__":
    main()
