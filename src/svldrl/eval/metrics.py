"""Per-case segmentation metrics: overlap (Dice, IoU, confusion counts) and surface distances in mm.

Overlap (counted by :mod:`svldrl.rules`) follows nnU-Net v2 (``Dice = 2TP / (2TP + FP + FN)``,
``IoU = TP / (TP + FP + FN)``,
NaN when the class is empty in both prediction and reference). Surface distances come from
MONAI (``compute_hausdorff_distance`` with ``percentile=95`` and
``compute_average_surface_distance`` with ``symmetric=True``), with the voxel spacing passed
through, so HD95 and ASD are in mm.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

from svldrl.rules import counts, dice_from_counts

#: Keys of the per-label dictionary returned by :func:`case_metrics`, in report order.
METRIC_KEYS = ("Dice", "IoU", "TP", "FP", "FN", "TN", "n_pred", "n_ref", "HD95", "ASD")


def surface_distances(
    pred_bin: np.ndarray, ref_bin: np.ndarray, spacing: Sequence[float] | float
) -> tuple[float, float]:
    """HD95 and symmetric ASD (mm) between two binary masks through MONAI.

    Args:
        pred_bin: predicted mask (non-zero is foreground).
        ref_bin: reference mask of the same shape.
        spacing: voxel size in mm along each array axis.

    Returns:
        ``(hd95, asd)``. NaN when either mask is empty: with both empty there is no surface to
        compare, with exactly one empty the distance is undefined (MONAI would give inf or NaN
        and a warning). Callers count these cases rather than let them poison a mean.
    """
    p = np.asarray(pred_bin).astype(bool, copy=False)
    r = np.asarray(ref_bin).astype(bool, copy=False)
    if not p.any() or not r.any():
        return math.nan, math.nan
    # MONAI wants [batch, channel, *spatial] one-hot tensors. The single channel here is the label's
    # own mask, not background, so include_background=True is what keeps it from being dropped.
    yp = torch.from_numpy(np.ascontiguousarray(p))[None, None]
    yr = torch.from_numpy(np.ascontiguousarray(r))[None, None]
    sp = [float(s) for s in spacing] if isinstance(spacing, Sequence | np.ndarray) else float(spacing)
    with warnings.catch_warnings():
        # MONAI 1.6 warns about its own internal use of a deprecated argument on every call.
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
        hd95 = compute_hausdorff_distance(yp, yr, include_background=True, percentile=95, spacing=sp)
        asd = compute_average_surface_distance(yp, yr, include_background=True, symmetric=True, spacing=sp)
    return _finite_or_nan(hd95), _finite_or_nan(asd)


def _finite_or_nan(value: torch.Tensor) -> float:
    v = float(value.reshape(-1)[0])
    return v if math.isfinite(v) else math.nan


def case_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float] | float,
    labels: Sequence[int],
    surface: bool = True,
) -> dict[int, dict[str, float | int]]:
    """Metrics of one case for each label of an integer label map.

    Args:
        pred: predicted label map.
        ref: reference label map, same shape and grid.
        spacing: voxel size in mm along each array axis (e.g. ``Volume.spacing``).
        labels: label values to score; each is compared as ``map == label``.
        surface: also compute HD95 and ASD (the slow part); NaN when False.

    Returns:
        ``{label: {"Dice", "IoU", "TP", "FP", "FN", "TN", "n_pred", "n_ref", "HD95", "ASD"}}`` with
        counts in voxels and distances in mm. Dice and IoU are NaN when the label is empty in both
        maps, and 0 when it is empty in exactly one. HD95 and ASD are NaN whenever either side is
        empty (both empty: nothing to measure; one empty: undefined, MONAI returns inf/NaN); such
        cases are recognisable from ``n_pred``/``n_ref`` and are left out of means by the summary,
        which counts them instead.
    """
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} != reference shape {ref.shape}")
    n_vox = int(ref.size)
    out: dict[int, dict[str, float | int]] = {}
    for label in labels:
        p = pred == label
        r = ref == label
        tp, fp, fn = counts(p, r)
        n_pred, n_ref = tp + fp, tp + fn
        dice, iou = dice_from_counts(tp, fp, fn)  # NaN when the label is absent from both
        hd95, asd = surface_distances(p, r, spacing) if surface else (math.nan, math.nan)
        out[int(label)] = {
            "Dice": dice,
            "IoU": iou,
            "TP": tp,
            "FP": fp,
            "FN": fn,
            "TN": n_vox - tp - fp - fn,
            "n_pred": n_pred,
            "n_ref": n_ref,
            "HD95": hd95,
            "ASD": asd,
        }
    return out


def empty_metrics(n_voxels: int) -> dict[str, float | int]:
    """The metrics of a label absent from both prediction and reference of a case with ``n_voxels``."""
    return {
        "Dice": math.nan,
        "IoU": math.nan,
        "TP": 0,
        "FP": 0,
        "FN": 0,
        "TN": int(n_voxels),
        "n_pred": 0,
        "n_ref": 0,
        "HD95": math.nan,
        "ASD": math.nan,
    }
