"""Checkpoints: written atomically, loaded with ``weights_only=True``, checked against the run; the run folder
they make, and the attributes a method names in ``checkpointed``, saved and put back the same way for all."""

from __future__ import annotations

import copy
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from svldrl import __version__
from svldrl.data.io import atomic_write
from svldrl.data.outputs import check_writable_dir
from svldrl.engine import distributed as D
from svldrl.errors import UserError

FORMAT = "svldrl-checkpoint"
FORMAT_VERSION = 1
#: The checkpoint a resume continues from; a run folder holds a training once it has one.
LATEST = "checkpoint_latest.pt"


def check_run_folder(out: Path, resume: bool) -> None:
    """A new run refuses a folder that holds a training, a resume needs one; decided on rank 0 and shared, so
    that every rank stops with the same message.

    Raises:
        UserError: a folder that cannot be written, or holds (or lacks) a training against ``resume``.
    """
    D.on_rank0(lambda: check_writable_dir(out, "run folder (--out)"))
    has_run = D.on_rank0(lambda: (out / LATEST).exists())
    if resume and not has_run:
        raise UserError(f"nothing to resume: no {LATEST} in the run folder", out)
    if not resume and has_run:
        raise UserError(
            "run folder already holds a training; pass --resume to continue it or choose another --out", out
        )


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Save ``state`` plus format tags; temporary file, fsync, rename (a kill never leaves half a file)."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "svldrl_version": __version__, **state}

    def _write(tmp: str) -> None:
        # A file object (not a path) makes a full disk surface as OSError(ENOSPC), which atomic_write
        # turns into a one-line error; torch.save(path) raises an opaque RuntimeError instead.
        with open(tmp, "wb") as fh:
            torch.save(payload, fh)

    return atomic_write(path, _write)


def load_checkpoint(
    path: str | Path,
    method: str | None = None,
    backbone: str | None = None,
    heads: str | None = None,
    mmap: bool = False,
) -> dict[str, Any]:
    """Load a checkpoint safely and refuse one from another method, backbone, head layout or format version.

    ``mmap``: map the file instead of reading it (tensors are read when used; for a look at the plain
    entries, e.g. :func:`checkpoint_iteration`).

    Raises:
        UserError: missing, truncated, foreign, code-carrying (pickle with globals) or mismatched file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError("checkpoint not found", path)
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols before refusing them
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        first = str(exc).splitlines()[0][:160]
        raise UserError(
            f"refused: not a plain-data checkpoint, it carries code or foreign objects ({first})", path
        ) from None
    except Exception as exc:  # truncated zip, random bytes, ...
        raise UserError(
            f"cannot read checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})", path
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError("not an svldrl checkpoint", path)
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"checkpoint format version {ckpt.get('format_version')} is not supported (expected {FORMAT_VERSION})",
            path,
        )
    for key, want in (("method", method), ("backbone", backbone), ("heads", heads)):
        if want is not None and ckpt.get(key) != want:
            raise UserError(f"checkpoint is for {key} '{ckpt.get(key)}', this run uses '{want}'", path)
    return ckpt


def checkpoint_iteration(path: str | Path) -> int:
    """The iteration a checkpoint was saved at (the optimiser steps done), without reading its weights.

    Raises:
        UserError: as :func:`load_checkpoint`.
    """
    # mapped only where torch can map it (a zip file); anything else is read and refused as load_checkpoint says
    return int(load_checkpoint(path, mmap=zipfile.is_zipfile(path))["iteration"])


def attribute_state(value: Any) -> Any:
    """A checkpointed attribute as plain data: its ``state_dict()`` where it has one, a tensor's detached CPU
    copy, a deep copy of anything else; None (not saved) for None."""
    if hasattr(value, "state_dict"):
        return value.state_dict()
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    return None if value is None else _plain(value)


def _plain(value: Any) -> Any:
    """A deep copy with NumPy scalars as Python numbers: checkpoints load with ``weights_only``, which refuses
    NumPy objects."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return copy.deepcopy(value)


def load_attribute(owner: Any, name: str, saved: Any) -> None:
    """Put back what :func:`attribute_state` saved of ``owner.name``: in place into an object with
    ``load_state_dict`` or a tensor (a module, an optimiser or a parameter stays the one others refer to), else
    as a copy."""
    value = getattr(owner, name, None)
    if hasattr(value, "load_state_dict"):
        value.load_state_dict(saved)
    elif isinstance(value, torch.Tensor):
        with torch.no_grad():
            value.copy_(saved.to(value.device))
    else:
        setattr(owner, name, copy.deepcopy(saved))
