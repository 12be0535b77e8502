"""Intensity normalisation to [0, 1] and label-to-foreground mapping.

MR: clip each image to its own robust percentiles, then min-max. CT: clip to one range for the whole
dataset, then min-max: a fixed HU window when one is given (``data.ct_window``), else the dataset
fingerprint's foreground percentiles 0.5 / 99.5 (``data.intensity_range``, nnU-Net's CT rule; see
:mod:`svldrl.data.fingerprint`). A CT image with neither (a run trained before the fingerprint existed) falls
back to the per-image percentile rule.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def normalize_intensity(
    arr: np.ndarray,
    modality: str = "mr",
    clip_percentiles: Sequence[float] | None = (0.5, 99.5),
    ct_window: Sequence[float] | None = None,
    intensity_range: Sequence[float] | None = None,
) -> np.ndarray:
    """Map an image to float32 in [0, 1].

    Args:
        arr: image of any numeric dtype.
        modality: ``"mr"`` or ``"ct"`` (``"auto"`` is treated as ``"mr"``: callers resolve it first).
        clip_percentiles: (low, high) percentiles to clip to; ``None`` uses min and max.
        ct_window: (low, high) HU window, used for CT only; overrides ``intensity_range``.
        intensity_range: (low, high) from the dataset fingerprint, used for CT only.

    Returns:
        float32 array of the same shape; a constant image gives zeros.
    """
    a = np.asarray(arr, dtype=np.float32)
    window = (ct_window if ct_window is not None else intensity_range) if modality == "ct" else None
    if window is not None:
        lo, hi = float(window[0]), float(window[1])
    elif clip_percentiles is not None:
        lo, hi = (float(v) for v in np.percentile(a, [clip_percentiles[0], clip_percentiles[1]]))
    else:
        lo, hi = float(a.min()), float(a.max())
    if not hi > lo:
        # Constant image (or a degenerate window): nothing to scale, and no division by zero.
        return np.zeros(a.shape, dtype=np.float32)
    # In place on one float32 copy: a 512x512x300 CT would otherwise hold three full-size temporaries.
    out = np.array(a, dtype=np.float32, copy=True)
    np.clip(out, lo, hi, out=out)
    out -= np.float32(lo)
    out /= np.float32(hi - lo)
    # float32 rounding can land a hair outside [0, 1]; downstream code relies on the bounds.
    return np.clip(out, 0.0, 1.0, out=out)


def map_foreground(label: np.ndarray, foreground: Sequence[int] | None = None) -> np.ndarray:
    """Binary uint8 mask: voxels whose label is in ``foreground`` (``None``: any label > 0)."""
    lab = np.asarray(label)
    if foreground is None:
        return (lab > 0).astype(np.uint8)
    return np.isin(lab, np.asarray(list(foreground))).astype(np.uint8)
