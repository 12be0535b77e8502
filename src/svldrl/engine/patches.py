"""Training patches: foreground-aware random crops with flips and intensity jitter, drawn from a seed each.

A patch is a pure function of (case, seed): the same spec gives the same crop in any process or DataLoader
worker, which is what lets several ranks (and workers) share one data stream (see :mod:`svldrl.engine.trainer`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from svldrl.data.dataset import Case, load_case
from svldrl.settings import Data


def pad_to_patch(arr: np.ndarray, patch: int) -> np.ndarray:
    """Zero-pad at the far end of each axis shorter than ``patch``."""
    pad = [(0, max(0, patch - s)) for s in arr.shape]
    return np.pad(arr, pad) if any(p[1] for p in pad) else arr


class LazyImages(Sequence):
    """Normalised images read from disk at each access (``data.cache: none``): RAM holds one at a time.

    Args:
        cases: the cases, in order.
        data: the ``data`` config section (normalisation).
        patch: pad each image to at least this side (0: no padding).
    """

    def __init__(self, cases: list[Case], data: Data, patch: int = 0) -> None:
        self.cases, self.data, self.patch = list(cases), replace(data), patch

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        image, _, _ = load_case(self.cases[i], self.data, need_label=False)
        return pad_to_patch(image, self.patch) if self.patch else image


class Joined(Sequence):
    """Two sequences of images read as one, without reading either (:class:`LazyImages` stays lazy)."""

    def __init__(self, first: Sequence[np.ndarray], second: Sequence[np.ndarray]) -> None:
        self.first, self.second = first, second

    def __len__(self) -> int:
        return len(self.first) + len(self.second)

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        n = len(self.first)
        return self.first[i] if i < n else self.second[i - n]


@dataclass
class Crop:
    """One training patch before its targets are attached: the augmented image and where it came from."""

    case: int
    box: tuple[slice, ...]
    flip: tuple[int, ...]
    image: torch.Tensor  # (1, p, p, p) float32


def crop_patch(
    image: np.ndarray,
    fg_idx: np.ndarray,
    patch: int,
    pos_fraction: float,
    aug: Sequence[Any],
    case: int,
    seed: int,
) -> Crop:
    """A foreground-aware random crop (RandCropByPosNegLabel's rule), random flips and intensity jitter,
    all drawn from ``seed`` alone, so the same (case, seed) gives the same patch in any process."""
    rng = np.random.default_rng(seed)
    shape = np.array(image.shape)
    if rng.random() < pos_fraction and fg_idx.size:
        center = np.array(np.unravel_index(fg_idx[rng.integers(fg_idx.size)], shape))
    else:
        center = rng.integers(0, shape)
    start = np.clip(center - patch // 2, 0, shape - patch)
    box = tuple(slice(int(s), int(s) + patch) for s in start)
    flip = tuple(int(a) for a, r in enumerate(rng.random(3)) if r < 0.5)
    img = image[box]
    if flip:
        img = np.flip(img, flip)
    img_t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None]
    for t, s in zip(aug, rng.integers(2**31, size=len(aug)), strict=True):
        t.set_random_state(seed=int(s))
        img_t = t(img_t)
        # MONAI may hand back a MetaTensor; the network gets plain tensors
        img_t = img_t.as_tensor() if hasattr(img_t, "as_tensor") else torch.as_tensor(img_t)
    return Crop(case, box, flip, img_t.clamp(0, 1))


class StepCrops(torch.utils.data.Dataset):
    """Item k = the crops of step k, for DataLoader workers (``data.workers``); specs drawn beforehand."""

    def __init__(
        self,
        images: Sequence[np.ndarray],
        fg_idx: list[np.ndarray],
        specs: list[list[tuple[int, int]]],
        patch: int,
        pos_fraction: float,
        aug: Sequence[Any],
    ) -> None:
        self.images, self.fg_idx, self.specs = images, fg_idx, specs
        self.patch, self.pos_fraction, self.aug = patch, pos_fraction, aug

    def __len__(self) -> int:
        return len(self.specs)

    def __getitem__(self, k: int) -> list[Crop]:
        return [
            crop_patch(self.images[c], self.fg_idx[c], self.patch, self.pos_fraction, self.aug, c, seed)
            for c, seed in self.specs[k]
        ]


def as_is(x: Any) -> Any:
    return x
