#!/usr/bin/env python3
"""The CPU training demo's step (examples/train_demo.py's model, fp32) timed
in one process, alternating blocks of steps between PyTorch's SDPA, flashsdpa
on the process's OpenMP threads (the default next to PyTorch) and flashsdpa
on its own threads (FLASHSDPA_CPU_OPENMP=0), and on one own thread (leaving
the other cores to PyTorch's threads), so that all variants see the same
machine load. Each variant trains its own copy of the model from the same
initial weights on the same batches.

    python bench/bench_cpu_demo_step.py [--rounds 8] [--block 3] [--threads N]
        [--seq-len 1024] [--batch 4]

Prints per variant the median, min and max ms per step over all rounds, and
the load average before and after. On a machine shared with other work, a
2-thread step runs several times slower whenever another process takes a
core (OpenMP's barrier then spins against a preempted thread), so on Linux
each block also records the CPU time other processes used meanwhile
(/proc/stat's busy time less this process's), and the medians are given
again over the blocks where others used under 10% of the cores. --threads
sets both libraries' thread count (default: torch's).
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import statistics
import time
from pathlib import Path

import torch

import flashsdpa

ROOT = Path(__file__).resolve().parent.parent


def load_demo():
    spec = importlib.util.spec_from_file_location("train_demo", ROOT / "examples" / "train_demo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


VARIANTS = {
    # name: (flashsdpa patched in, FLASHSDPA_CPU_OPENMP, flashsdpa threads: 0 = torch's)
    "torch SDPA": (False, None, 0),
    "flashsdpa (OpenMP team)": (True, None, 0),
    "flashsdpa (own threads)": (True, "0", 0),
    # leaving the cores to PyTorch's spinning threads instead of sharing them
    "flashsdpa (own, 1 thread)": (True, "0", 1),
}


def cpu_busy_s() -> float:
    """Seconds of CPU all processes have used (Linux /proc/stat), else 0."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--block", type=int, default=3, help="steps per variant per round")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    demo = load_demo()
    margs = argparse.Namespace(seq_len=args.seq_len, batch=args.batch, dim=128, heads=4,
                               kv_heads=2, layers=2, lr=1e-2)
    vocab = 64
    torch.manual_seed(0)
    base = demo.build_model(margs, vocab)
    batches = demo.make_batches(margs, vocab, 4)
    runs = {}
    for name in VARIANTS:
        model = copy.deepcopy(base)
        runs[name] = (model, torch.optim.AdamW(model.parameters(), lr=margs.lr), [])

    def step(model, opt, x, y):
        return demo.train_step(model, opt, x, y, vocab)

    def use(name):
        patched, env, threads = VARIANTS[name]
        flashsdpa.set_num_threads(threads or torch.get_num_threads())
        if env is None:
            os.environ.pop("FLASHSDPA_CPU_OPENMP", None)
        else:
            os.environ["FLASHSDPA_CPU_OPENMP"] = env
        (flashsdpa.enable if patched else flashsdpa.disable)()

    clean = {name: [] for name in runs}  # step times of blocks others left alone
    cores = os.cpu_count() or 1
    for name, (model, opt, _) in runs.items():  # warm-up step each
        use(name)
        step(model, opt, *batches[0])
    load0 = os.getloadavg()
    i = 0
    for _ in range(args.rounds):
        for name, (model, opt, times) in runs.items():
            use(name)
            block = []
            busy0, own0, wall0 = cpu_busy_s(), own_cpu_s(), time.perf_counter()
            for _ in range(args.block):
                x, y = batches[1 + i % 3]
                i += 1
                t0 = time.perf_counter()
                step(model, opt, x, y)
                block.append(time.perf_counter() - t0)
            others = (cpu_busy_s() - busy0) - (own_cpu_s() - own0)
            times += block
            if others < 0.1 * cores * (time.perf_counter() - wall0):
                clean[name] += block
    use("torch SDPA")
    load1 = os.getloadavg()
    print(f"demo step (B{args.batch} S{args.seq_len}, 2 layers, dim 128, 4/2 heads, fp32), "
          f"threads: torch {torch.get_num_threads()}, flashsdpa {flashsdpa.get_num_threads()}; "
          f"{args.rounds} rounds x {args.block} steps per variant")
    print(f"load average before {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, "
          f"after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    for name, (_, _, times) in runs.items():
        ms = [t * 1e3 for t in times]
        quiet = [t * 1e3 for t in clean[name]]
        print(f"{name:<26} median {statistics.median(ms):7.1f} ms/step  "
              f"(min {min(ms):.1f}, max {max(ms):.1f}); other processes idle: "
              + (f"median {statistics.median(quiet):7.1f} over {len(quiet)} steps"
                 if quiet else "no block"))


if __name__ == "__main__":
    main()
