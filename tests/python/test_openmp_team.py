"""The CPU backend next to PyTorch's OpenMP runtime: with both libraries at
the same thread count, flashsdpa's jobs run on PyTorch's OpenMP threads
(which spin between PyTorch's ops) instead of its own pool; the results are
the same bytes as on its own threads (FLASHSDPA_CPU_OPENMP=0), and a forked
child falls back to the pool. A fresh interpreter per scenario, with a
timeout: the pool must not have run before, and a hang fails the test."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

TIMEOUT_S = 120

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads thread names from /proc")

SCRIPT = """
    import os, torch, torch.nn.functional as F, flashsdpa

    def pool_threads():  # flashsdpa names its own workers "fsdpa-pool"
        names = [open(f"/proc/self/task/{t}/comm").read().strip()
                 for t in os.listdir("/proc/self/task")]
        return names.count("fsdpa-pool")

    torch.set_num_threads(3)
    flashsdpa.set_num_threads(3)
    g = torch.Generator().manual_seed(0)
    cases = [  # (B, Hq, Hk, Sq, Sk, D, causal, dtype)
        (2, 4, 2, 203, 203, 40, True, torch.float32),
        (1, 8, 2, 1, 1500, 64, False, torch.float32),
        (2, 3, 3, 130, 170, 56, False, torch.bfloat16),
    ]

    def run(case):
        b, hq, hk, sq, sk, d, causal, dt = case
        q = torch.randn(b, hq, sq, d, generator=g).to(dt).requires_grad_()
        k = torch.randn(b, hk, sk, d, generator=g).to(dt).requires_grad_()
        v = torch.randn(b, hk, sk, d, generator=g).to(dt).requires_grad_()
        out = flashsdpa.scaled_dot_product_attention(q, k, v, is_causal=causal,
                                                      enable_gqa=hq != hk)
        out.backward(torch.randn(out.shape, generator=g).to(dt))
        return [out.detach(), q.grad, k.grad, v.grad]

    torch.mm(torch.randn(300, 300), torch.randn(300, 300))  # PyTorch's team is up
    team = []
    for c in cases:
        g.manual_seed(1)
        team.append(run(c))
    assert pool_threads() == 0, "flashsdpa started its own threads next to PyTorch's"
    os.environ["FLASHSDPA_CPU_OPENMP"] = "0"
    for c, t in zip(cases, team):
        g.manual_seed(1)
        for a, b in zip(run(c), t):
            assert torch.equal(a, b), c
    assert pool_threads() == 2, pool_threads()
    del os.environ["FLASHSDPA_CPU_OPENMP"]

    # The parent used PyTorch's team; a forked child must use the pool. The
    # child leaves PyTorch's OpenMP threads alone (its own ops would hang
    # there unless torch.set_num_threads(1)), so no autograd and no torch
    # comparison: a forward on tensors made here, compared as bytes.
    q, k, v = (torch.randn(2, 4, 203, 40, generator=g) for _ in range(3))
    ref = flashsdpa.scaled_dot_product_attention(q, k, v, is_causal=True).numpy().tobytes()
    pid = os.fork()
    if pid == 0:
        out = flashsdpa.scaled_dot_product_attention(q, k, v, is_causal=True)
        os._exit(0 if out.numpy().tobytes() == ref else 3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    print("ok")
"""


def test_openmp_team_route_same_bytes_and_fork():
    try:
        r = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT)], capture_output=True,
                           text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung (killed after {TIMEOUT_S} s)")
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr


DEFAULT_SCRIPT = """
    import os, torch, flashsdpa

    def pool_threads():
        names = [open(f"/proc/self/task/{t}/comm").read().strip()
                 for t in os.listdir("/proc/self/task")]
        return names.count("fsdpa-pool")

    # No count set: PyTorch's, followed as it changes, so the jobs run on
    # PyTorch's OpenMP threads (5 threads on the pool would start 4).
    assert flashsdpa.get_num_threads() == torch.get_num_threads(), (
        flashsdpa.get_num_threads(), torch.get_num_threads())
    torch.set_num_threads(5)
    assert flashsdpa.get_num_threads() == 5, flashsdpa.get_num_threads()
    torch.mm(torch.randn(300, 300), torch.randn(300, 300))
    q = torch.randn(2, 4, 203, 40)
    out = flashsdpa.scaled_dot_product_attention(q, q, q, is_causal=True)
    ref = torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
    assert (out - ref).abs().max() < 1e-4
    assert pool_threads() == 0, pool_threads()
    flashsdpa.set_num_threads(2)  # an explicit count comes first
    assert flashsdpa.get_num_threads() == 2
    print("ok")
"""


def test_default_thread_count_is_pytorchs():
    env = {k: v for k, v in os.environ.items() if k != "FLASHSDPA_NUM_THREADS"}
    try:
        r = subprocess.run([sys.executable, "-c", textwrap.dedent(DEFAULT_SCRIPT)],
                           capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung (killed after {TIMEOUT_S} s)")
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr
