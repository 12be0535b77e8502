"""Checkpoints: written atomically, loaded with ``weights_only=True``, checked against the run."""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from svldrl import __version__
from svldrl.data.io import atomic_write
from svldrl.errors import UserError

FORMAT = "svldrl-checkpoint"
FORMAT_VERSION = 1


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
