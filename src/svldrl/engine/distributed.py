"""torch.distributed glue: ranks from torchrun's environment, gradient reduction, rank-0 decisions.

``torchrun --nproc_per_node N -m svldrl train ...`` starts N processes; each builds the same trainer,
holds the same network and takes the same optimiser steps on a different part of every global batch
(``train.batch`` patches per rank, so the effective batch is ``train.batch x world size``).

How gradients are averaged, per method (``Trainer.distributed_mode``, default ``auto``):

- **DistributedDataParallel** for networks without the RL heads (``supervised`` and the baselines):
  each step uses every parameter, so DDP's reducer can overlap the all-reduce with the backward
  pass in buckets. Several forwards before one backward (ADELE's rescaled pass) are fine because
  ``find_unused_parameters`` stays off; parameters outside the wrapped network (T-Loss's ``nu``,
  Co-teaching's peer network) are reduced explicitly by :func:`average_gradients`, which skips the
  parameters DDP has already reduced.
- **Explicit all-reduce** after each backward (:func:`average_gradients`) for SVL-DRL: an episode
  runs the network ``t_max + 1`` times before a single backward and each stage uses another
  subset of heads (stage 1 leaves the value and policy decoders unused). DDP would need
  ``find_unused_parameters=True`` for that, whose unused-parameter search runs on the last
  forward's outputs only and so marks parameters of earlier forwards unused; the explicit
  all-reduce is correct for any forward pattern and keeps the replicas identical.

Every rank reads the dataset; only rank 0 writes (config, checkpoints, logs, TensorBoard).
Decisions that depend on files (is there a run to resume? is it readable?) are taken on rank 0 and
broadcast (:func:`on_rank0`), so that all ranks stop with the same message instead of some ranks
waiting in a collective for ranks that have already failed.
"""

from __future__ import annotations

import atexit
import inspect
import math
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from svldrl.errors import UserError


def init_from_env() -> bool:
    """Initialise the process group when launched by torchrun (NCCL on GPU, gloo on CPU)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend)
    # Left at process exit, not after each command: re-joining torchrun's rendezvous in the same process
    # (several commands in one Python session) would wait forever.
    atexit.register(destroy)
    return True


def destroy() -> None:
    """Leave the process group (end of a torchrun command); nothing without one."""
    if is_dist():
        dist.destroy_process_group()


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


class DDP(DistributedDataParallel):
    """DistributedDataParallel that lets attribute reads through to the wrapped network.

    Methods read network attributes (``divisor``, ``head_names``) the same way with one rank or many.
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> DDP:
    """Wrap ``model`` for DDP on ``device`` (one device per process)."""
    ids = None
    if device.type == "cuda":
        ids = [device.index if device.index is not None else torch.cuda.current_device()]
    # No buffer sync in forward: a forward on one rank only (validation shards, target updates) must not
    # start a collective; the networks use instance norm and hold no running statistics anyway.
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        sync = {"forward_sync_buffers": False}  # torch >= 2.13 (broadcast_buffers is deprecated there)
    else:
        sync = {"broadcast_buffers": False}
    return DDP(model, device_ids=ids, find_unused_parameters=False, **sync)


def wrap(
    model: torch.nn.Module, device: torch.device, ddp: bool, compiled: bool
) -> tuple[torch.nn.Module, frozenset[int]]:
    """``model`` in DistributedDataParallel (``ddp``) and ``torch.compile`` (``compiled``), and the ids of the
    parameters DDP averages (the rest is averaged by :func:`average_gradients`)."""
    ddp_params: frozenset[int] = frozenset()
    if ddp:
        model = wrap_ddp(model, device)
        ddp_params = frozenset(id(p) for p in model.parameters())
    return (torch.compile(model) if compiled else model), ddp_params


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain network inside DDP and ``torch.compile`` wrappers (for state dicts and evaluation)."""
    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def broadcast_parameters(model: torch.nn.Module) -> None:
    """Start every rank from rank 0's weights."""
    if is_dist():
        for p in model.state_dict().values():
            dist.broadcast(p, src=0)


def average_gradients(model: torch.nn.Module, skip: set[int] | frozenset[int] = frozenset()) -> None:
    """All-reduce and average gradients so every replica takes the same step.

    Args:
        model: module whose parameters' gradients are averaged.
        skip: ``id()`` of parameters DDP has already reduced in this backward.
    """
    if not is_dist():
        return
    n = world_size()
    for p in model.parameters():
        if id(p) in skip or not p.requires_grad:
            continue
        if p.grad is None:
            # a head unused this step on every rank: a zero gradient keeps the collectives aligned
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad.div_(n)


def all_gather_object(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` without a process group)."""
    if not is_dist():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_dist():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def on_rank0(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 and hand its result to every rank; a :class:`UserError` it raises is
    raised on every rank with the same message."""
    result: Any = None
    error: str | None = None
    if rank() == 0:
        try:
            result = fn()
        except UserError as exc:
            error = str(exc)
    error, result = broadcast_object((error, result))
    if error is not None:
        raise UserError(error)
    return result


def sum_over_ranks(values: list[float]) -> list[float]:
    """Element-wise sum of ``values`` over ranks (float64)."""
    if not is_dist():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def mean_over_ranks(row: dict[str, Any]) -> dict[str, Any]:
    """Average numeric epoch logs across ranks (rank 0 writes them).

    Float entries are averaged over the ranks that have them (NaN counts as absent), so a key logged
    by some ranks only cannot misalign the collective; other entries keep this rank's value.
    """
    if not is_dist():
        return row

    def numeric(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    # The averaged keys are agreed on first: a key one rank logs as float and another never logs
    # (or logs as an int) must not give the ranks collectives of different lengths.
    floats = sorted(
        {k for keys in all_gather_object([k for k, v in row.items() if isinstance(v, float)]) for k in keys}
    )
    sums: list[float] = []
    for k in floats:
        v = row.get(k)
        ok = numeric(v) and not math.isnan(v)
        sums += [float(v) if ok else 0.0, 1.0 if ok else 0.0]
    total = sum_over_ranks(sums)
    out = dict(row)
    for i, k in enumerate(floats):
        s, n = total[2 * i], total[2 * i + 1]
        out[k] = s / n if n else math.nan
    return out
