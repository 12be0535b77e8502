"""Asynchronous training as A3C does it: N Hogwild workers updating one model in shared memory, lock-free.

``run_hogwild(trainer, steps, n)`` shares the trainer's network, the modules it checkpoints (a reward kernel,
an EMA teacher), the optimiser's state and the per-case targets, forks ``n`` workers (they inherit the cases
in RAM copy-on-write) and lets each run its share of the epoch's steps with ``trainer.train_step``. Worker
``k`` takes the interleaved global steps ``base + i * n + k``; the learning rate of each step is set from
``trainer.lr_factor`` (the schedule in closed form), the same rate a synchronous run has at that step.

Optimiser state is created before the fork (zeros: Adam's ``step``, ``exp_avg``, ``exp_avg_sq``; SGD's
``momentum_buffer``, which torch would otherwise create per process, so momentum would not be shared) and
moved to shared memory, as A3C's shared Adam does. An optimiser whose state is not known here is refused.
"""

from __future__ import annotations

import os
import warnings
from collections import defaultdict
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as mp

from svldrl.errors import UserError

#: Optimisers whose per-parameter state can be created up front and shared.
SHARED_STATE = {
    torch.optim.AdamW: ("step", "exp_avg", "exp_avg_sq"),
    torch.optim.Adam: ("step", "exp_avg", "exp_avg_sq"),
    torch.optim.SGD: ("momentum_buffer",),
}


def share_state(trainer: Any) -> None:
    """Move the model, the checkpointed modules, the optimiser state and the targets to shared memory (once)."""
    if getattr(trainer, "_shared", False):
        return
    keys = SHARED_STATE.get(type(trainer.optimizer))
    if keys is None:
        raise UserError(
            f"rl.async_workers > 0 cannot share the state of {type(trainer.optimizer).__name__} between workers; "
            "use train.optimizer adamw or sgd"
        )
    trainer.network.share_memory()
    for name in trainer.checkpointed:
        module = getattr(trainer, name, None)
        if isinstance(module, torch.nn.Module):
            module.share_memory()
    for group in trainer.optimizer.param_groups:
        for p in group["params"]:
            state = trainer.optimizer.state[p]
            for k in keys:
                if k not in state:
                    state[k] = (
                        torch.zeros(())
                        if k == "step"
                        else torch.zeros_like(p, memory_format=torch.preserve_format)
                    )
            for v in state.values():
                if torch.is_tensor(v):
                    v.share_memory_()
    trainer.targets = [torch.from_numpy(t).share_memory_().numpy() for t in trainer.targets]
    trainer._shared = True


def run_hogwild(trainer: Any, steps: int, n: int) -> dict[str, float]:
    """The epoch's ``steps`` shared among ``n`` forked workers; returns the mean of each log, as ``run_steps``."""
    if trainer.world > 1:
        raise UserError("rl.async_workers > 0 runs in one process; set it to 0 to train with torchrun")
    share_state(trainer)
    ctx = mp.get_context("fork")  # workers inherit the in-memory cases copy-on-write
    queue = ctx.SimpleQueue()
    share = [steps // n + (k < steps % n) for k in range(n)]
    seeds = [int(v) for v in trainer.rng.integers(2**31, size=n)]
    threads = max(1, torch.get_num_threads() // n)
    procs = [
        ctx.Process(target=_worker, args=(trainer, k, n, share[k], seeds[k], threads, queue), daemon=True)
        for k in range(n)
        if share[k]
    ]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise RuntimeError(f"async worker failed: {errors[0]}")
    with warnings.catch_warnings():  # the workers stepped the optimiser, not this process
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(steps):
            trainer.scheduler.step()
    trainer.iteration += steps
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for r in results:
        for k, v in r["sums"].items():
            sums[k] += v
            counts[k] += r["counts"][k]
    return {k: v / counts[k] for k, v in sums.items()} | {"charts/async_workers": float(len(procs))}


def _worker(trainer: Any, k: int, n: int, steps: int, seed: int, threads: int, queue: Any) -> None:
    try:
        torch.set_num_threads(threads)
        trainer.rng = np.random.default_rng(seed)
        trainer.generator = torch.Generator(device="cpu").manual_seed(seed)
        base = trainer.iteration
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        base_lrs = trainer.scheduler.base_lrs
        for i in range(steps):
            trainer.iteration = base + i * n + k  # this worker's interleaved global step: stage and rate
            for g, lr0 in zip(trainer.optimizer.param_groups, base_lrs, strict=True):
                g["lr"] = lr0 * trainer.lr_factor(trainer.iteration)
            with trainer._autocast():
                logs = trainer.train_step(trainer.sample_batch())
            for key, v in logs.items():
                sums[key] += float(v)
                counts[key] += 1
        queue.put({"sums": dict(sums), "counts": dict(counts), "pid": os.getpid()})
    except BaseException as exc:  # reported to the parent, which raises
        queue.put({"error": f"{type(exc).__name__}: {exc}"})
