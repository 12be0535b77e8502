"""A run's random streams: the data stream (the same on every rank: which patches a step trains on) and each
rank's own (Python, NumPy, torch, and a generator for a method's own sampling), seeded from ``seed``, kept in
checkpoints and put back on resume."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_streams(seed: int, rank: int) -> tuple[np.random.Generator, torch.Generator]:
    """The data stream from ``seed`` (every rank alike); this rank's own streams (Python, NumPy, torch and the
    returned generator, e.g. for SVL-DRL's action sampling) from ``seed + 1000 * rank``."""
    own = seed + 1000 * rank
    random.seed(own)
    np.random.seed(own % 2**32)
    torch.manual_seed(own)
    return np.random.default_rng(seed), torch.Generator(device="cpu").manual_seed(own)


def rng_state(generator: torch.Generator, device: torch.device) -> dict[str, Any]:
    """This rank's own streams: Python's, torch's (and ``device``'s, a GPU), and ``generator``."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state(), "generator": generator.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator, device: torch.device) -> None:
    """Put back the streams :func:`rng_state` saved."""
    random.setstate(_as_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def restore_own_streams(
    saved: dict[str, Any], rank: int, world: int, generator: torch.Generator, device: torch.device, fresh: int
) -> None:
    """This rank's own streams from a checkpoint's ``rng`` entry (rank 0's at its top level, every rank's under
    ``ranks`` when several saved): its own where as many ranks saved, else rank 0 keeps rank 0's and the others
    start fresh streams from ``fresh`` (another world size: still reproducible)."""
    ranks = saved.get("ranks")
    if ranks is not None and len(ranks) == world:
        set_rng_state(ranks[rank], generator, device)
    elif rank == 0:
        set_rng_state(saved, generator, device)
    else:
        random.seed(fresh)
        torch.manual_seed(fresh)
        generator.manual_seed(fresh)


def _as_tuple(x: Any) -> Any:
    """random.setstate needs tuples; a checkpoint round trip may give lists."""
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
