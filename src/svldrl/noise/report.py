"""How wrong a noisy mask set is: per-case label Dice and voxel error rate against the clean masks.

A noise level is only comparable between papers through these numbers (the same ratio and
cube side give very different Dice on different shapes), so every noisy set carries a report.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from svldrl.rules import overlap


def mask_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two binary masks (non-zero = foreground); 1.0 when both are empty (an empty mask left empty
    is not wrong)."""
    return overlap(a, b, empty=1.0)[0]


def voxel_error_rate(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of all voxels whose binary label differs between ``a`` and ``b``."""
    a = np.asarray(a) != 0
    b = np.asarray(b) != 0
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    if a.size == 0:
        return 0.0
    return int(np.logical_xor(a, b).sum()) / a.size


def _mean(values: list[float]) -> float | None:
    # None (JSON null) rather than NaN: NaN is not valid JSON and reads as a number by mistake.
    return float(np.mean(values)) if values else None


def build_report(protocol: str, args: dict[str, Any], per_case: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Assemble the noise report of one noisy set.

    Args:
        protocol: protocol name (``"mt"``, ``"markov"``, ``"spg"``).
        args: the settings that produced the set (ratio, seed, protocol parameters, ...).
        per_case: case id -> dict with at least ``dice``, ``voxel_error_rate`` and
            ``corrupted`` (bool: the mask changed); ``selected`` (drawn for corruption, default
            ``corrupted``) and any other keys (the operation and its parameters) are kept.

    Returns:
        A JSON-ready dict: protocol, args, counts (cases, corrupted = changed, selected, selected but
        unchanged), mean Dice / mean voxel error rate over all
        cases and over the corrupted cases only (``None`` when there are none), and the
        per-case entries in case-id order.
    """
    for case_id, entry in per_case.items():
        for key in ("dice", "voxel_error_rate", "corrupted"):
            if key not in entry:
                raise ValueError(f"per-case entry {case_id!r} lacks {key!r}")
        for key in ("dice", "voxel_error_rate"):
            if not math.isfinite(float(entry[key])):
                raise ValueError(f"per-case entry {case_id!r} has a non-finite {key}")
    ids = sorted(per_case)
    corrupted = [c for c in ids if per_case[c]["corrupted"]]
    selected = [c for c in ids if per_case[c].get("selected", per_case[c]["corrupted"])]
    return {
        "protocol": protocol,
        "args": dict(args),
        "n_cases": len(ids),
        "n_corrupted": len(corrupted),
        "n_selected": len(selected),
        "n_unchanged": len(selected) - len(corrupted),
        "mean_dice": _mean([float(per_case[c]["dice"]) for c in ids]),
        "mean_voxel_error_rate": _mean([float(per_case[c]["voxel_error_rate"]) for c in ids]),
        "mean_dice_corrupted": _mean([float(per_case[c]["dice"]) for c in corrupted]),
        "mean_voxel_error_rate_corrupted": _mean([float(per_case[c]["voxel_error_rate"]) for c in corrupted]),
        "cases": {c: dict(per_case[c]) for c in ids},
    }
