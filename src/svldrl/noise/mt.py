"""MT-Noise: one random cube dilation or erosion per corrupted mask (MTCL's Left Atrium recipe), in mm.

Source: Xu & Xia, "Noisy labels are treasure: mean-teacher-assisted confident learning for
hepatic vessel segmentation" (MICCAI 2021) and its TMI 2022 extension; the public LA code
corrupts a training mask by one 3D binary dilation or erosion (p = 0.5 each) with a cube
structuring element of side r ~ U{3..15} voxels on Left Atrium crops at 0.625 mm.

**decision**: sizes are physical. The side is drawn in the recipe's voxels (``r_min``..``r_max``, default
3..15) and converted to millimetres with the recipe's voxel size (``ref_spacing``, 0.625 mm: 1.9 to 9.4 mm),
then to each case's own voxels per axis (``round(r_mm / spacing_axis)``), so the same recipe is as harsh on
a 2 mm CT as on LA, and an anisotropic volume is corrupted equally far along every axis. A side of one voxel
on every axis would change nothing: only sides that change the mask are drawn (the sides whose element is at
least 2 voxels on some axis; on a grid too coarse for any, the finest axis gets 2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from svldrl.noise.report import mask_dice

MODES = ("both", "dilate", "erode")
#: Voxel size (mm) of the Left Atrium crops the recipe's r ~ U{3..15} was made for.
LA_SPACING = 0.625


def check_mt_params(
    mode: str = "both",
    r_min: int = 3,
    r_max: int = 15,
    ref_spacing: float = LA_SPACING,
    spacing: Sequence[float] | None = None,
) -> None:
    """Raise ValueError naming the first invalid MT-Noise parameter."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    for key, value in (("r_min", r_min), ("r_max", r_max)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{key} must be an integer >= 1, got {value!r}")
    if r_min > r_max:
        raise ValueError(f"r_min ({r_min}) must not exceed r_max ({r_max})")
    if not _positive_number(ref_spacing):
        raise ValueError(f"ref_spacing must be a positive number of mm, got {ref_spacing!r}")
    if spacing is not None:
        if len(spacing) != 3 or not all(_positive_number(s) for s in spacing):
            raise ValueError(f"spacing must be three positive numbers, got {spacing!r}")


def _positive_number(x: Any) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, float, np.number)) and math.isfinite(x) and x > 0


def cube_sides(r_mm: float, spacing: Sequence[float]) -> tuple[int, int, int]:
    """Per-axis sides (voxels) of a cuboid ``r_mm`` wide on every axis of a grid with ``spacing`` (mm)."""
    a, b, c = (max(1, int(math.floor(r_mm / float(s) + 0.5))) for s in spacing)
    return (a, b, c)


def _sides_that_change(
    r_min: int, r_max: int, ref_spacing: float, spacing: Sequence[float]
) -> list[tuple[int, tuple[int, int, int]]]:
    """(r, sides) for every drawable r whose element is at least 2 voxels on some axis."""
    options = [(r, cube_sides(r * ref_spacing, spacing)) for r in range(r_min, r_max + 1)]
    changing = [(r, sides) for r, sides in options if max(sides) >= 2]
    if changing:
        return changing
    finest = int(np.argmin([float(s) for s in spacing]))  # too coarse for the recipe: the smallest change
    sides = [1, 1, 1]
    sides[finest] = 2
    return [(r_max, (sides[0], sides[1], sides[2]))]


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
    ref_spacing: float = LA_SPACING,
    spacing: Sequence[float] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Corrupt a binary mask with one cube dilation or erosion (MT-Noise), sized in millimetres.

    Source: MTCL (Xu & Xia, MICCAI 2021 / TMI 2022), public Left Atrium noise recipe.

    Args:
        mask: 3D binary mask (any integer/bool dtype; non-zero is foreground).
        rng: the random generator (the only source of randomness).
        mode: ``"both"`` (dilate or erode with p = 0.5 each, the recipe), ``"dilate"`` or
            ``"erode"`` (one-sided noise, which does not cancel out in expectation).
        r_min, r_max: range of the cube side in the recipe's voxels (inclusive), default 3..15.
        ref_spacing: the recipe's voxel size in mm (LA, 0.625): r voxels there are ``r * ref_spacing`` mm.
        spacing: this mask's voxel size per axis in mm (``svldrl noise`` passes each case's own);
            None: the recipe's grid (sides = r on every axis).

    Returns:
        The noisy uint8 mask and a dict with the operation, the drawn side ``r`` (recipe voxels) and
        ``r_mm``, the per-axis ``sides`` (this mask's voxels) and ``sides_mm``, ``side_reduced_to`` when an
        erosion had to be softened to keep the mask non-empty, and the Dice. An empty input mask is
        returned unchanged.
    """
    check_mt_params(mode, r_min, r_max, ref_spacing, spacing)
    mask = (np.asarray(mask) != 0).astype(np.uint8)
    if mask.ndim != 3:
        raise ValueError(f"mask must be 3D, got shape {mask.shape}")
    grid = [float(s) for s in spacing] if spacing is not None else [ref_spacing] * 3
    options = _sides_that_change(r_min, r_max, ref_spacing, grid)
    # Draw both numbers unconditionally so the stream consumed does not depend on the mode.
    flip = rng.random()
    r, sides = options[int(rng.integers(len(options)))]
    op = mode if mode != "both" else ("dilate" if flip < 0.5 else "erode")
    params: dict[str, Any] = {"protocol": "mt", "operation": op, "r": r, "r_mm": round(r * ref_spacing, 4)}
    if not mask.any():
        params.update(operation="none", reason="empty mask", dice=1.0)
        return mask.copy(), params

    noisy = _morph(mask, op, sides)
    used = sides
    # Erosion by a large cube can delete a thin structure entirely; an empty mask is not a
    # plausible annotation, so shrink the element until something survives (side 1 = identity).
    while not noisy.any():
        used = tuple(max(1, s - 1) for s in used)
        noisy = _morph(mask, op, used)
    if used != sides:
        params["side_reduced_to"] = list(used)
    params["sides"] = list(used)
    params["sides_mm"] = [round(n * g, 4) for n, g in zip(used, grid, strict=True)]
    params["dice"] = mask_dice(mask, noisy)
    return noisy, params
