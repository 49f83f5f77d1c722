"""fork() after the CPU thread pool has run (issue 25): the child's calls
must not hang. Each scenario runs in a fresh interpreter with a timeout, so a
regression fails the test instead of hanging the suite."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

TIMEOUT_S = 120

SCENARIOS = {
    # the reproducer: os.fork() after a multi-threaded call
    "os_fork": """
        import os, time, torch, flashsdpa
        flashsdpa.set_num_threads(4)
        q = torch.randn(2, 4, 200, 32)
        ref = flashsdpa.scaled_dot_product_attention(q, q, q)
        pid = os.fork()
        if pid == 0:
            out = flashsdpa.scaled_dot_product_attention(q, q, q)
            os._exit(0 if torch.equal(out, ref) else 3)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
        out = flashsdpa.scaled_dot_product_attention(q, q, q)  # the parent's pool still works
        assert torch.equal(out, ref)
        print("ok")
    """,
    # a multiprocessing pool started with fork, as DataLoader workers are
    "multiprocessing_fork_pool": """
        import multiprocessing as mp, torch, flashsdpa
        flashsdpa.set_num_threads(4)
        torch.manual_seed(0)
        q = torch.randn(2, 4, 200, 32)
        ref = flashsdpa.scaled_dot_product_attention(q, q, q, is_causal=True)

        def work(i):
            torch.set_num_threads(1)
            out = flashsdpa.scaled_dot_product_attention(q, q, q, is_causal=True)
            return bool(torch.equal(out, ref))

        if __name__ == "__main__":
            with mp.get_context("fork").Pool(3) as pool:
                results = pool.map(work, range(6))
            assert all(results), results
            print("ok")
    """,
    # the patched SDPA with autograd inside the child, and a grandchild
    "patched_backward_in_child_and_grandchild": """
        import os, torch, torch.nn.functional as F, flashsdpa
        flashsdpa.set_num_threads(4)
        flashsdpa.enable()
        q = torch.randn(2, 4, 200, 32, requires_grad=True)
        F.scaled_dot_product_attention(q, q, q).sum().backward()

        def child():
            # PyTorch's own OpenMP pool hangs in a forked child unless the
            # child uses one thread (DataLoader workers do this); flashsdpa's
            # pool keeps its 4 threads.
            torch.set_num_threads(1)
            F.scaled_dot_product_attention(q, q, q).sum().backward()
            pid = os.fork()
            if pid == 0:
                F.scaled_dot_product_attention(q, q, q).sum().backward()
                os._exit(0)
            _, status = os.waitpid(pid, 0)
            return status

        pid = os.fork()
        if pid == 0:
            status = child()
            os._exit(0 if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 else 4)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
        assert flashsdpa.stats()["dispatched"] >= 1
        print("ok")
    """,
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_fork_child_does_not_hang(name):
    code = textwrap.dedent(SCENARIOS[name])
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{name}: hung (killed after {TIMEOUT_S} s)")
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr
