"""Point-to-point ring exchange over torch.distributed (NCCL on GPUs, gloo on CPUs).

Each ring step sends a tensor to the next rank and receives the same-shaped
tensor from the previous one; ``start`` posts both (``batch_isend_irecv``) and
returns at once, so the caller computes on the current block while the next
one travels, and ``wait`` joins before the received tensor is used.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["Ring"]


class Ring:
    """The ring of ``group``'s ranks: rank r sends to r + 1 and receives from r - 1."""

    def __init__(self, group: Optional[dist.ProcessGroup]):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("group: torch.distributed is not initialised "
                               "(call torch.distributed.init_process_group first)")
        self.group = group if group is not None else dist.group.WORLD
        self.world_size = dist.get_world_size(self.group)
        self.rank = dist.get_rank(self.group)
        self._next = dist.get_global_rank(self.group, (self.rank + 1) % self.world_size)
        self._prev = dist.get_global_rank(self.group, (self.rank - 1) % self.world_size)

    def source(self, step: int) -> int:
        """The rank whose block this rank holds after ``step`` shifts."""
        return (self.rank - step) % self.world_size

    def start(self, send: Tensor, tag: int) -> "Transfer":
        """Sends ``send`` to the next rank and receives a tensor like it from the previous one."""
        recv = torch.empty_like(send)
        ops = [dist.P2POp(dist.isend, send, self._next, self.group, tag),
               dist.P2POp(dist.irecv, recv, self._prev, self.group, tag)]
        return Transfer(dist.batch_isend_irecv(ops), recv)


class Transfer:
    """An exchange in flight; ``wait()`` returns the received tensor."""

    def __init__(self, works: List, recv: Tensor):
        self._works, self._recv = works, recv

    def wait(self) -> Tensor:
        for w in self._works:
            w.wait()
        return self._recv
