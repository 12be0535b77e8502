"""torch.distributed glue: ranks from torchrun's environment, gradient averaging, rank-0 writes.

Gradients are averaged with an all-reduce after each backward. DistributedDataParallel would do
the same reduction with overlap, but SVL-DRL's episode runs the network t_max + 1 times before a
single backward and uses a different subset of heads per stage, which DDP's reducer (one forward
per backward, ``find_unused_parameters``) handles poorly; the explicit all-reduce is correct for
every method and keeps replicas identical.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def init_from_env() -> bool:
    """Initialise the process group when launched by torchrun (NCCL on GPU, gloo on CPU)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend)
    return True


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def barrier() -> None:
    if is_dist():
        dist.barrier()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def broadcast_parameters(model: torch.nn.Module) -> None:
    """Start every rank from rank 0's weights."""
    if is_dist():
        for p in model.state_dict().values():
            dist.broadcast(p, src=0)


def average_gradients(model: torch.nn.Module) -> None:
    """All-reduce and average gradients so every replica takes the same step."""
    if not is_dist():
        return
    n = world_size()
    for p in model.parameters():
        if p.grad is None:
            # a head unused this step on every rank: a zero gradient keeps the collectives aligned
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad.div_(n)


def mean_over_ranks(row: dict[str, Any]) -> dict[str, Any]:
    """Average numeric epoch logs across ranks (rank 0 writes them)."""
    if not is_dist():
        return row
    keys = [k for k, v in row.items() if isinstance(v, float)]
    t = torch.tensor([row[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    out = dict(row)
    out.update({k: float(v) / world_size() for k, v in zip(keys, t.tolist())})
    return out
