"""MT-Noise: one random cube dilation or erosion per corrupted mask (MTCL's Left Atrium recipe).

Source: Xu & Xia, "Noisy labels are treasure: mean-teacher-assisted confident learning for
hepatic vessel segmentation" (MICCAI 2021) and its TMI 2022 extension; the public LA code
corrupts a training mask by one 3D binary dilation or erosion (p = 0.5 each) with a cube
structuring element of side r ~ U{3..15} on ~112^3 crops.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from svldrl.noise.report import mask_dice

MODES = ("both", "dilate", "erode")


def check_mt_params(
    mode: str = "both",
    r_min: int = 3,
    r_max: int = 15,
    spacing: Sequence[float] | None = None,
    ref_size: int | None = 112,
) -> None:
    """Raise ValueError naming the first invalid MT-Noise parameter."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    for key, value in (("r_min", r_min), ("r_max", r_max)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{key} must be an integer >= 1, got {value!r}")
    if r_min > r_max:
        raise ValueError(f"r_min ({r_min}) must not exceed r_max ({r_max})")
    if spacing is not None:
        if len(spacing) != 3 or not all(_positive_number(s) for s in spacing):
            raise ValueError(f"spacing must be three positive numbers, got {spacing!r}")
    if ref_size is not None and (
        isinstance(ref_size, bool) or not isinstance(ref_size, (int, np.integer)) or ref_size < 1
    ):
        raise ValueError(f"ref_size must be a positive integer or None, got {ref_size!r}")


def _positive_number(x: Any) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, float, np.number)) and math.isfinite(x) and x > 0


def effective_side(r: int, shape: Sequence[int], ref_size: int | None) -> int:
    """Cube side ``r`` scaled down for volumes smaller than the reference crop (never up, never < 1)."""
    if ref_size is None:
        return int(r)
    scale = min(1.0, min(shape) / ref_size)
    return max(1, int(math.floor(r * scale + 0.5)))


def cube_sides(side: int, spacing: Sequence[float] | None) -> tuple[int, int, int]:
    """Per-axis sides of a cuboid with the physical extent of a ``side``-voxel cube on the finest axis.

    Anisotropic volumes (e.g. 1 x 1 x 5 mm) would otherwise be corrupted five times more along
    the coarse axis than in plane.
    """
    if spacing is None:
        return (side, side, side)
    finest = min(float(s) for s in spacing)
    a, b, c = (max(1, int(math.floor(side * finest / float(s) + 0.5))) for s in spacing)
    return (a, b, c)


def _morph(mask: np.ndarray, op: str, sides: tuple[int, int, int]) -> np.ndarray:
    # Flat cuboid max/min filters are separable, so this is far faster than binary_dilation
    # with an r^3 structure; mode="nearest" makes the volume edge neutral (a mask touching the
    # crop border is not eroded from outside the field of view).
    filt = ndimage.maximum_filter if op == "dilate" else ndimage.minimum_filter
    return filt(mask, size=sides, mode="nearest").astype(np.uint8)


def mt_noise(
    mask: np.ndarray,
    rng: np.random.Generator,
    mode: str = "both",
    r_min: int = 3,
    r_max: int = 15,
    spacing: Sequence[float] | None = None,
    ref_size: int | None = 112,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Corrupt a binary mask with one cube dilation or erosion (MT-Noise).

    Source: MTCL (Xu & Xia, MICCAI 2021 / TMI 2022), public Left Atrium noise recipe.

    Args:
        mask: 3D binary mask (any integer/bool dtype; non-zero is foreground).
        rng: the random generator (the only source of randomness).
        mode: ``"both"`` (dilate or erode with p = 0.5 each, the recipe), ``"dilate"`` or
            ``"erode"`` (one-sided noise, which does not cancel out in expectation).
        r_min: smallest cube side in voxels of a ``ref_size``-sized volume.
        r_max: largest cube side (inclusive); r ~ U{r_min..r_max}.
        spacing: voxel size per axis; when given the element is a cuboid of equal physical
            extent on every axis (the drawn side applies to the finest axis).
        ref_size: the crop size the recipe was designed for (LA ~112^3); sides are scaled by
            ``min(shape) / ref_size`` for smaller volumes, never up. ``None`` disables scaling.

    Returns:
        The noisy uint8 mask and a dict with the operation, the drawn side ``r``, the effective
        side(s), whether erosion had to be softened to keep the mask non-empty, and the Dice.
        An empty input mask is returned unchanged (nothing to corrupt).
    """
    check_mt_params(mode, r_min, r_max, spacing, ref_size)
    mask = (np.asarray(mask) != 0).astype(np.uint8)
    if mask.ndim != 3:
        raise ValueError(f"mask must be 3D, got shape {mask.shape}")
    # Draw both numbers unconditionally so the stream consumed does not depend on the mode.
    flip = rng.random()
    r = int(rng.integers(r_min, r_max + 1))
    if mode == "both":
        op = "dilate" if flip < 0.5 else "erode"
    else:
        op = mode
    side = effective_side(r, mask.shape, ref_size)
    params: dict[str, Any] = {"protocol": "mt", "operation": op, "r": r, "side": side}
    if not mask.any():
        params.update(operation="none", reason="empty mask", dice=1.0)
        return mask.copy(), params

    sides = cube_sides(side, spacing)
    noisy = _morph(mask, op, sides)
    used = side
    # Erosion by a large cube can delete a thin structure entirely; an empty mask is not a
    # plausible annotation, so shrink the element until something survives (side 1 = identity).
    while not noisy.any():
        used -= 1
        sides = cube_sides(used, spacing)
        noisy = _morph(mask, op, sides)
    if used != side:
        params["side_reduced_to"] = used
    params["sides"] = list(sides)
    params["dice"] = mask_dice(mask, noisy)
    return noisy, params
