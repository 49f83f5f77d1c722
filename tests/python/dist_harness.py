"""Runs a test body on W gloo processes on 127.0.0.1 (spawned, so each rank
imports torch and flashsdpa afresh) and turns any rank's failure into a
pytest failure carrying that rank's traceback."""
from __future__ import annotations

import datetime
import os
import socket
import time
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, world, port, errors, body, args):
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world, timeout=datetime.timedelta(seconds=60))
        torch.set_num_threads(1)
        import flashsdpa

        flashsdpa.set_num_threads(1)
        body(rank, world, *args)
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:
        errors.put(f"rank {rank}: {traceback.format_exc()}")
        raise


def run_ranks(body, world: int, *args, timeout_s: float = TIMEOUT_S) -> None:
    """Calls body(rank, world, *args) on `world` processes of one gloo group.
    body must be a module-level function of a test module (spawn pickles it)."""
    ctx = mp.get_context("spawn")
    errors = ctx.SimpleQueue()
    here = os.path.dirname(os.path.abspath(__file__))
    os.environ["PYTHONPATH"] = here + os.pathsep + os.environ.get("PYTHONPATH", "")
    procs = mp.start_processes(_rank_main, args=(world, _free_port(), errors, body, args),
                               nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    try:
        while not procs.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"{world} processes did not finish within {timeout_s} s")
    except mp.ProcessRaisedException:
        msgs = []
        while not errors.empty():
            msgs.append(errors.get())
        pytest.fail("\n".join(msgs) or "a rank failed")
    finally:
        for p in procs.processes:
            if p.is_alive():
                p.kill()
