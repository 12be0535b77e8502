"""SP-guided alpha/beta noise: dilate, erode or move a mask until a fraction beta of it is wrong.

Source: Li et al., "Superpixel-guided iterative learning from noisy labels for medical image
segmentation" (MICCAI 2021). A fraction alpha of the training cases is corrupted (chosen by
the caller); each corrupted mask gets one of dilation / erosion / affine (rotation up to 30
degrees plus translation), chosen uniformly and grown until the changed voxels reach a
fraction beta of the foreground.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from svldrl.noise.report import mask_dice

OPERATIONS = ("dilate", "erode", "affine")
# Affine growth: the rotation grows by ANGLE_STEP degrees per step up to max_angle, the shift by
# SHIFT_STEP equivalent-sphere radii, so the number of steps does not depend on the object size.
ANGLE_STEP = 2.0
SHIFT_STEP = 0.05
MAX_STEPS = 60


def check_spg_params(beta: float = 0.5, max_angle: float = 30.0) -> None:
    """Raise ValueError naming the first invalid SP-guided parameter."""
    for key, value, hi in (("beta", beta, 1.0), ("max_angle", max_angle, 180.0)):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float, np.number))
            or not math.isfinite(value)
            or not 0.0 < value <= hi
        ):
            raise ValueError(f"{key} must be a number in (0, {hi:g}], got {value!r}")


def _changed(mask: np.ndarray, noisy: np.ndarray, n_fg: int) -> float:
    return int(np.logical_xor(mask, noisy).sum()) / n_fg


def _grow_dilate(mask: np.ndarray, beta: float) -> tuple[np.ndarray, dict[str, Any]] | None:
    """Smallest Euclidean ball dilation that changes >= beta of the foreground, or None."""
    if mask.all():
        return None
    n_fg = int(mask.sum())
    # Dilation by a ball of radius t adds exactly the background voxels within distance t, so
    # walking the sorted distinct distances grows the radius in the finest possible steps.
    dist = ndimage.distance_transform_edt(~mask)
    levels, counts = np.unique(dist[~mask], return_counts=True)
    hit = np.flatnonzero(np.cumsum(counts) >= beta * n_fg)
    if hit.size == 0:
        return None
    radius = float(levels[hit[0]])
    return mask | (dist <= radius), {"radius": round(radius, 4)}


def _grow_erode(mask: np.ndarray, beta: float) -> tuple[np.ndarray, dict[str, Any]] | None:
    """Smallest Euclidean ball erosion that changes >= beta of the foreground without emptying it."""
    if mask.all():
        return None
    n_fg = int(mask.sum())
    # Distance to the nearest background voxel inside the volume: the field-of-view edge does
    # not erode (same convention as MT-Noise).
    dist_full = ndimage.distance_transform_edt(mask)
    levels, counts = np.unique(dist_full[mask], return_counts=True)
    removed = np.cumsum(counts)
    # The last level would remove everything; never return an empty mask.
    hit = np.flatnonzero((removed >= beta * n_fg) & (removed < n_fg))
    if hit.size == 0:
        return None
    radius = float(levels[hit[0]])
    return dist_full > radius, {"radius": round(radius, 4)}


def _grow_affine(
    mask: np.ndarray, beta: float, max_angle: float, axis: np.ndarray, sign: float, direction: np.ndarray
) -> tuple[np.ndarray, dict[str, Any]] | None:
    """Rotate about the centroid and translate, step by step, until >= beta of the foreground changes."""
    n_fg = int(mask.sum())
    coords = np.argwhere(mask)
    centroid = coords.mean(axis=0)
    r_eq = (3.0 * n_fg / (4.0 * math.pi)) ** (1.0 / 3.0)
    shift_step = max(0.5, SHIFT_STEP * r_eq)
    # Work on a crop that holds every position the object can reach within MAX_STEPS; resampling
    # the whole volume at every step would cost seconds per case on CT-sized volumes.
    reach = float(np.sqrt(((coords - centroid) ** 2).sum(axis=1)).max()) + MAX_STEPS * shift_step + 2.0
    lo = np.maximum(0, np.floor(centroid - reach)).astype(int)
    hi = np.minimum(mask.shape, np.ceil(centroid + reach) + 1).astype(int)
    crop = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    sub = mask[crop].astype(np.float32)
    c = centroid - lo
    best: tuple[np.ndarray, dict[str, Any]] | None = None
    for step in range(1, MAX_STEPS + 1):
        angle = sign * min(max_angle, step * ANGLE_STEP)
        shift = direction * step * shift_step
        rot = Rotation.from_rotvec(axis * math.radians(angle)).as_matrix()
        # Forward map x' = R (x - c) + c + t; affine_transform wants the inverse (output -> input).
        inv = rot.T
        offset = c - inv @ (c + shift)
        moved = ndimage.affine_transform(sub, inv, offset=offset, order=1, mode="constant", cval=0.0) >= 0.5
        if not moved.any():
            break  # moved out of the field of view: any further step is empty as well
        noisy = np.zeros_like(mask)
        noisy[crop] = moved
        info = {
            "angle_deg": round(float(angle), 4),
            "axis": [round(float(a), 6) for a in axis],
            "shift_vox": [round(float(s), 4) for s in shift],
            "steps": step,
        }
        best = (noisy, info)
        if _changed(mask, noisy, n_fg) >= beta:
            return best
    return None


def spg_noise(
    mask: np.ndarray, rng: np.random.Generator, beta: float = 0.5, max_angle: float = 30.0
) -> tuple[np.ndarray, dict[str, Any]]:
    """Corrupt a binary mask by dilation, erosion or an affine move grown until beta of it changes.

    Source: Li et al., MICCAI 2021 (SP-guided alpha/beta protocol; alpha is the case ratio
    chosen by the caller).

    Args:
        mask: 3D binary mask (non-zero is foreground).
        rng: the random generator (the only source of randomness).
        beta: target changed fraction: voxels that differ from the clean mask divided by the
            clean foreground count, in (0, 1].
        max_angle: largest rotation in degrees (about a random axis through the centroid).

    Returns:
        The noisy uint8 mask (never empty for a non-empty input) and a dict with the operation,
        its grown magnitude, the reached ``changed_fraction`` and the Dice. When the drawn
        operation cannot reach beta (a mask filling the volume cannot be dilated), the other
        operations are tried in turn (``fallback_from``); if none can, the largest change found
        is returned with ``reached = False``. An empty input mask is returned unchanged.
    """
    check_spg_params(beta, max_angle)
    m = np.asarray(mask) != 0
    if m.ndim != 3:
        raise ValueError(f"mask must be 3D, got shape {m.shape}")
    # Draw everything up front so the stream consumed is the same whichever branch runs.
    choice = int(rng.integers(len(OPERATIONS)))
    axis = rng.normal(size=3)
    axis /= max(float(np.linalg.norm(axis)), 1e-12)
    sign = 1.0 if rng.random() < 0.5 else -1.0
    direction = rng.normal(size=3)
    direction /= max(float(np.linalg.norm(direction)), 1e-12)

    op = OPERATIONS[choice]
    params: dict[str, Any] = {
        "protocol": "spg",
        "operation": op,
        "beta": float(beta),
        "max_angle": float(max_angle),
    }
    if not m.any():
        params.update(operation="none", reason="empty mask", dice=1.0, changed_fraction=0.0, reached=False)
        return m.astype(np.uint8), params

    n_fg = int(m.sum())
    order = [op] + [o for o in OPERATIONS if o != op]
    for name in order:
        if name == "dilate":
            out = _grow_dilate(m, beta)
        elif name == "erode":
            out = _grow_erode(m, beta)
        else:
            out = _grow_affine(m, beta, max_angle, axis, sign, direction)
        if out is not None:
            noisy, info = out
            params.update(operation=name, reached=True, **info)
            if name != op:
                params["fallback_from"] = op
            break
    else:
        # Nothing reaches beta (tiny or volume-filling mask): fall back to the largest erosion
        # that keeps one voxel, which is always possible and never empty.
        dist = ndimage.distance_transform_edt(m)
        top = float(dist.max())
        noisy = dist >= top if not m.all() else m.copy()
        params.update(operation="erode" if not m.all() else "none", reached=False, fallback_from=op)
    params["changed_fraction"] = _changed(m, noisy, n_fg)
    params["dice"] = mask_dice(m, noisy)
    return noisy.astype(np.uint8), params
