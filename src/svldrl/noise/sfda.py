"""SFDA-style noise: masks predicted by a model trained on a shifted image domain (method.md section 8).

A *source* model is trained, with the CLEAN masks, on a shifted copy of the training images (a seeded
domain shift: gamma, a random monotone intensity curve, optionally a folded part of the range, a
contrast change, a smooth bias field and blur), then segments the ORIGINAL images. Its thresholded
foreground probability becomes the noisy mask of a corrupted case. The errors are those of a model
used across a domain gap, as in source-free domain adaptation, where pseudo-labels come from a source
model: image-dependent, spatially coherent and biased, unlike morphological noise.

The domain shift is one draw per noisy set (a domain is one consistent mapping), from the noise seed;
the bias field differs per image. The source model is trained with ``train.deterministic=true`` and
the noise seed, so the same seed gives the same masks on the same machine and torch build.

Layout: the shifted dataset and the source run are cached in ``labelsTr_noisy/<NAME>.source/``
(``source.json``, ``dataset/``, ``run/``), reused when the settings match and resumed after a kill;
``params.source_run`` instead names an existing run folder (``svldrl train`` output), e.g. a model
trained on another dataset, whose own normalisation is then applied to the original images.

Empty predictions: a corrupted case whose clean mask has foreground never gets an empty noisy mask.
**decision**: first the largest connected component of ``probability > fallback_threshold`` (the
model's own best guess, so the noise stays model-made), and only when that is empty too the clean
mask dilated by one voxel (a 3x3x3 cube). The per-case report records which was used
(``fallback``: ``none`` / ``low_threshold_component`` / ``dilated_clean``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

SOURCE_SUFFIX = ".source"
SOURCE_JSON = "source.json"
SOURCE_VERSION = 1
#: Coarse grid of the smooth bias field (control points per axis, cubic-spline upsampled).
BIAS_GRID = 4
#: Interior knots of the random monotone intensity curve.
CURVE_KNOTS = 4


# ----------------------------------------------------------------------------------------------------------
# Parameters


@dataclass(frozen=True)
class SFDAParams:
    """The SFDA protocol's parameters and their defaults, written once (``svldrl noise --param`` keys).

    Attributes:
        threshold: foreground where the source model's probability exceeds it.
        fallback_threshold: the low threshold of the never-empty fallback (see the module docstring).
        strength, gamma_max, invert, contrast_max, bias, blur: the domain shift (:func:`draw_shift`).
        iterations, patch, features, batch, train_set: the source model's training (``train_set``: more
            ``key=value`` config overrides).
        source_run: an existing run folder to use as the source model instead of training one.
        ct_window: [low, high] HU for CT images before the shift.
    """

    threshold: float = 0.5
    fallback_threshold: float = 0.1
    strength: float = 0.4
    gamma_max: float = 1.5
    invert: float = 0.2
    contrast_max: float = 1.5
    bias: float = 0.3
    blur: float = 1.0
    iterations: int = 300
    patch: int = 32
    features: Sequence[int] = (8, 16, 32, 64)
    batch: int = 2
    train_set: Sequence[str] = ()
    source_run: str | None = None
    ct_window: Sequence[float] | None = None


def sfda_defaults() -> dict[str, Any]:
    """Parameter name -> default, from :class:`SFDAParams`."""
    return {f.name: f.default for f in dataclasses.fields(SFDAParams)}


def check_sfda_params(**params: Any) -> None:
    """Raise ValueError naming the first invalid SFDA parameter (names and defaults: :class:`SFDAParams`)."""
    p = SFDAParams(**params)
    for key, value, lo, hi in (
        ("threshold", p.threshold, 0.0, 1.0),
        ("fallback_threshold", p.fallback_threshold, 0.0, 1.0),
        ("strength", p.strength, 0.0, 1.0),
        ("invert", p.invert, 0.0, 0.9),
        ("bias", p.bias, 0.0, 2.0),
        ("blur", p.blur, 0.0, 10.0),
    ):
        if not _number(value) or not lo <= value <= hi:
            raise ValueError(f"{key} must be a number in [{lo:g}, {hi:g}], got {value!r}")
    if not 0.0 < p.threshold < 1.0:
        raise ValueError(f"threshold must lie strictly between 0 and 1, got {p.threshold!r}")
    if p.fallback_threshold > p.threshold:
        raise ValueError(
            f"fallback_threshold ({p.fallback_threshold}) must not exceed threshold ({p.threshold})"
        )
    for key, value in (("gamma_max", p.gamma_max), ("contrast_max", p.contrast_max)):
        if not _number(value) or not 1.0 <= value <= 10.0:
            raise ValueError(f"{key} must be a number in [1, 10], got {value!r}")
    for key, value, lo in (("iterations", p.iterations, 1), ("patch", p.patch, 8), ("batch", p.batch, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
            raise ValueError(f"{key} must be an integer >= {lo}, got {value!r}")
    if p.patch % 8:
        raise ValueError(f"patch must be a multiple of 8 (the U-Net's downsampling), got {p.patch}")
    features = p.features
    if (
        not isinstance(features, (list, tuple))
        or len(features) < 2
        or not all(isinstance(f, (int, np.integer)) and not isinstance(f, bool) and f >= 1 for f in features)
    ):
        raise ValueError(f"features must be a list of at least 2 positive integers, got {features!r}")
    if not isinstance(p.train_set, (list, tuple)) or not all(
        isinstance(s, str) and "=" in s for s in p.train_set
    ):
        raise ValueError(f"train_set must be a list of key=value config overrides, got {p.train_set!r}")
    if p.source_run is not None and (not isinstance(p.source_run, str) or not p.source_run.strip()):
        raise ValueError(f"source_run must be a run folder path, got {p.source_run!r}")
    ct = p.ct_window
    if ct is not None and (
        not isinstance(ct, (list, tuple))
        or len(ct) != 2
        or not all(_number(v) for v in ct)
        or not ct[0] < ct[1]
    ):
        raise ValueError(f"ct_window must be [low, high] HU with low < high, got {ct!r}")


def _number(x: Any) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, float, np.number)) and math.isfinite(x)


# ----------------------------------------------------------------------------------------------------------
# The domain shift


def draw_shift(
    rng: np.random.Generator,
    strength: float = 0.4,
    gamma_max: float = 1.5,
    invert: float = 0.2,
    contrast_max: float = 1.5,
    bias: float = 0.3,
    blur: float = 1.0,
) -> dict[str, Any]:
    """One seeded domain shift (JSON-ready numbers), applied to every image by :func:`apply_shift`.

    ``strength`` mixes a random monotone piecewise-linear curve with the identity; ``invert`` is the
    width (fraction of [0, 1]) of a window whose upper half is folded back (intensities there run
    downwards: a contrast inversion of part of the range, continuous at both ends); 0 keeps the
    mapping monotone.
    """
    gamma = float(np.exp(rng.uniform(-math.log(gamma_max), math.log(gamma_max))))
    knots_y = np.sort(rng.uniform(0.0, 1.0, CURVE_KNOTS))
    xs = np.linspace(0.0, 1.0, CURVE_KNOTS + 2)
    ys = (1.0 - strength) * xs + strength * np.concatenate([[0.0], knots_y, [1.0]])
    fold: list[float] | None = None
    if invert > 0:
        a = float(rng.uniform(0.1, 0.9 - invert))
        fold = [a, a + float(invert)]
    contrast = float(np.exp(rng.uniform(-math.log(contrast_max), math.log(contrast_max))))
    sigma = float(rng.uniform(0.5, 1.0) * blur) if blur > 0 else 0.0
    return {
        "gamma": gamma,
        "curve_x": [float(v) for v in xs],
        "curve_y": [float(v) for v in ys],
        "fold": fold,
        "contrast": contrast,
        "bias": float(bias),
        "blur_sigma": sigma,
    }


def intensity_curve(x: np.ndarray, shift: dict[str, Any]) -> np.ndarray:
    """The point-wise part of the shift (gamma, curve, fold, contrast) on an image in [0, 1]."""
    y = np.clip(np.asarray(x, dtype=np.float32), 0.0, 1.0) ** np.float32(shift["gamma"])
    y = np.interp(y, shift["curve_x"], shift["curve_y"]).astype(np.float32)
    if shift["fold"] is not None:
        a, b = shift["fold"]
        m = 0.5 * (a + b)
        # Knots (0,0) (a,a) (m,b) (b,a) (1,1): steeper rise to the middle of the window, then down to a,
        # then up again, so [m, b] is inverted and the curve stays continuous.
        y = np.interp(y, [0.0, a, m, b, 1.0], [0.0, a, b, a, 1.0]).astype(np.float32)
    return (0.5 + shift["contrast"] * (y - 0.5)).astype(np.float32)


def bias_field(shape: Sequence[int], amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative field exp(amplitude * f), f in [-1, 1] from a cubic-upsampled coarse grid."""
    coarse = rng.standard_normal((BIAS_GRID,) * 3)
    coarse /= max(float(np.abs(coarse).max()), 1e-6)
    zoom = [s / BIAS_GRID for s in shape]
    f = ndimage.zoom(coarse, zoom, order=3, mode="nearest", grid_mode=True)[tuple(slice(0, s) for s in shape)]
    if f.shape != tuple(shape):  # rounding of zoom's output size: pad by edge values
        f = np.pad(f, [(0, s - n) for s, n in zip(shape, f.shape, strict=True)], mode="edge")
    return np.exp(amplitude * np.clip(f, -1.0, 1.0)).astype(np.float32)


def apply_shift(image01: np.ndarray, shift: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """Shifted float32 copy of a normalised image (same shape); ``rng`` draws this image's bias field."""
    y = intensity_curve(image01, shift)
    if shift["bias"] > 0:
        y = y * bias_field(y.shape, shift["bias"], rng)
    if shift["blur_sigma"] > 0:
        y = ndimage.gaussian_filter(y, shift["blur_sigma"])
    return np.asarray(y, dtype=np.float32)


# ----------------------------------------------------------------------------------------------------------
# Probability -> mask


def mask_from_probability(
    prob: np.ndarray, clean: np.ndarray, threshold: float = 0.5, fallback_threshold: float = 0.1
) -> tuple[np.ndarray, str]:
    """Thresholded prediction, never empty when ``clean`` has foreground (see the module docstring).

    Returns:
        (uint8 mask, which rule made it: ``none`` / ``low_threshold_component`` / ``dilated_clean``).
    """
    mask = (prob > threshold).astype(np.uint8)
    if mask.any() or not clean.any():
        return mask, "none"
    low = prob > fallback_threshold
    if low.any():
        labels, n = ndimage.label(low, structure=np.ones((3, 3, 3)))
        sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        return (labels == 1 + int(np.argmax(sizes))).astype(np.uint8), "low_threshold_component"
    return ndimage.binary_dilation(clean > 0, structure=np.ones((3, 3, 3))).astype(np.uint8), "dilated_clean"


def source_folder(noisy_dir: Path) -> Path:
    """``labelsTr_noisy/NAME`` -> ``labelsTr_noisy/NAME.source``."""
    return noisy_dir.with_name(noisy_dir.name + SOURCE_SUFFIX)
