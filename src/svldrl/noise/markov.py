"""Markov boundary noise: a random walk of the mask boundary, biased towards expansion or shrinkage.

Source: Yao et al., "Rethinking segmentation noise: a Markov process perspective" / spatial
label correction (ICLR 2023). Written from the paper's description, not from the public
generator, which writes only the first mask (a stray break) and calls an undefined function in
its dilation/erosion mode.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage

from svldrl.noise.report import mask_dice

# Face neighbours: the boundary is one voxel thick and each step moves it by at most one voxel.
_STRUCT = ndimage.generate_binary_structure(3, 1)


def check_markov_params(T: int = 80, theta1: float = 0.7, theta2: float = 0.05, theta3: float = 0.0) -> None:
    """Raise ValueError naming the first invalid Markov-noise parameter."""
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 0:
        raise ValueError(f"T must be an integer >= 0, got {T!r}")
    for key, value in (("theta1", theta1), ("theta2", theta2), ("theta3", theta3)):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float, np.number))
            or not math.isfinite(value)
            or not 0.0 <= value <= 1.0
        ):
            raise ValueError(f"{key} must be a number in [0, 1], got {value!r}")


def markov_noise(
    mask: np.ndarray,
    rng: np.random.Generator,
    T: int = 80,
    theta1: float = 0.7,
    theta2: float = 0.05,
    theta3: float = 0.0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Corrupt a binary mask by T steps of random boundary flips (Markov boundary noise).

    Source: Yao et al., ICLR 2023. Their 3D (BraTS) setting: T = 80, theta1 = 0.7 or 0.3,
    theta2 = 0.05, theta3 = 0. T does not transfer between 2D and 3D, hence the recorded Dice.

    Args:
        mask: 3D binary mask (non-zero is foreground).
        rng: the random generator (the only source of randomness).
        T: number of steps.
        theta1: probability that a step expands (else it shrinks).
        theta2: per-step flip probability of each voxel of the outer boundary (background
            voxels face-adjacent to the mask; expansion) or of the inner boundary (mask voxels
            face-adjacent to background; shrinkage).
        theta3: per-step flip probability of every voxel off that boundary (random interior
            holes and background islands); 0 in the paper's 3D setting.

    Returns:
        The noisy uint8 mask and a dict with the parameters, the number of expanding and
        shrinking steps, steps undone because they would have emptied the mask, and the Dice.
        An empty input mask is returned unchanged.
    """
    check_markov_params(T, theta1, theta2, theta3)
    cur = np.asarray(mask) != 0
    if cur.ndim != 3:
        raise ValueError(f"mask must be 3D, got shape {cur.shape}")
    params: dict[str, Any] = {
        "protocol": "markov",
        "operation": "markov",
        "T": int(T),
        "theta1": float(theta1),
        "theta2": float(theta2),
        "theta3": float(theta3),
    }
    if not cur.any():
        params.update(operation="none", reason="empty mask", dice=1.0)
        return cur.astype(np.uint8), params

    clean = cur.copy()
    n_expand = n_shrink = n_undone = 0
    for _ in range(int(T)):
        expand = rng.random() < theta1
        if expand:
            band = ndimage.binary_dilation(cur, _STRUCT) & ~cur
            n_expand += 1
        else:
            # border_value=1: the edge of the field of view is not a mask boundary.
            band = cur & ~ndimage.binary_erosion(cur, _STRUCT, border_value=1)
            n_shrink += 1
        idx = np.flatnonzero(band)
        flip = idx[rng.random(idx.size) < theta2]
        nxt = cur.copy()
        nxt.flat[flip] = expand
        if theta3 > 0:
            rand = (rng.random(cur.shape) < theta3) & ~band
            nxt ^= rand
        if not nxt.any():
            # An empty mask is not a plausible annotation: undo the step that emptied it.
            n_undone += 1
            continue
        cur = nxt
    params.update(n_expand=n_expand, n_shrink=n_shrink, steps_undone=n_undone, dice=mask_dice(clean, cur))
    return cur.astype(np.uint8), params
