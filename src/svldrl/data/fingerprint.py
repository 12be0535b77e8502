"""The dataset fingerprint of CT intensities, and CT normalisation as nnU-Net does it.

CT values mean the same thing in every scan (Hounsfield units), so nnU-Net normalises CT with one range for
the whole dataset, not per case: it samples foreground intensities from every training case (10,000 per
case, with replacement, ``RandomState(1234)``, so small organs count as much as large ones), takes their
0.5 and 99.5 percentiles, clips every image to that range and z-scores it with the foreground mean and std
(``DatasetFingerprintExtractor.collect_foreground_intensities`` and ``CTNormalization``). svldrl does the same
sampling and clipping but maps the clipped range linearly onto [0, 1] instead of z-scoring, because the
SVL-DRL agents' actions clip intensities to [0, 1] (docs/method.md section 3).

The per-case percentile rule it replaces (still the MR default) maps air and soft tissue of each CT crop to
a different range: on a non-contrast abdominal crop, [-1024, 150..311] HU onto [0, 1] puts soft tissue
(11-50 HU) in a band ~0.04 wide, and the band moves from case to case.

The fingerprint is computed once from the training cases and the masks a run trains with, cached beside the
dataset in ``svldrl_fingerprint.json`` (a file svldrl owns; never written over a file it did not write, and
not at all in a read-only dataset), and its range is recorded in the run's config (``data.intensity_range``)
so that ``svldrl predict`` and the audit normalise exactly as training did. ``data.ct_window`` overrides it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from svldrl.data.io import read_json, read_volume, write_text
from svldrl.errors import UserError

FINGERPRINT_FILE = "svldrl_fingerprint.json"
SAMPLES_PER_CASE = 10000
SEED = 1234
VERSION = 1


def foreground_samples(image: np.ndarray, mask: np.ndarray, n: int = SAMPLES_PER_CASE) -> np.ndarray:
    """``n`` foreground intensities drawn with replacement (nnU-Net's rule); empty for an empty mask."""
    values = np.asarray(image)[np.asarray(mask) > 0]
    if not values.size:
        return values.astype(np.float64)
    return np.random.RandomState(SEED).choice(values, n, replace=True).astype(np.float64)


def summarise(samples: Sequence[np.ndarray]) -> dict[str, float]:
    """Percentiles 0.5 / 50 / 99.5, mean and std of the pooled foreground samples."""
    pooled = np.concatenate([np.asarray(s, dtype=np.float64) for s in samples]) if samples else np.zeros(0)
    if not pooled.size:
        raise UserError("no training case has foreground voxels: the intensity fingerprint needs masks")
    lo, median, hi = (float(v) for v in np.percentile(pooled, (0.5, 50.0, 99.5)))
    return {
        "percentile_00_5": lo,
        "median": median,
        "percentile_99_5": hi,
        "mean": float(pooled.mean()),
        "std": float(pooled.std()),
        "n_samples": int(pooled.size),
    }


def compute_fingerprint(cases: Sequence[Any], foreground: Sequence[int] | None = None) -> dict[str, Any]:
    """The foreground intensity fingerprint of ``cases`` (:class:`~svldrl.data.dataset.Case` objects)."""
    from svldrl.data.dataset import check_mask  # dataset imports this module

    samples = []
    for case in cases:
        image = read_volume(case.image, key=case.image_key).array
        mask = check_mask(read_volume(case.label, key=case.label_key).array, case.label, foreground, True)
        samples.append(foreground_samples(image, mask))
    stats = summarise(samples)
    stats["n_cases"] = len(cases)
    stats["n_cases_with_foreground"] = sum(1 for s in samples if s.size)
    return stats


def _key(label_set: str, foreground: Sequence[int] | None, case_ids: Sequence[str]) -> str:
    fg = "any" if foreground is None else ",".join(str(int(v)) for v in foreground)
    return f"{label_set}|foreground={fg}|cases={len(case_ids)}:{hash_ids(case_ids)}"


def hash_ids(case_ids: Sequence[str]) -> str:
    """A short stable digest of the sorted case ids (a fingerprint is stale once the cases change)."""
    import hashlib

    return hashlib.sha256("\n".join(sorted(case_ids)).encode()).hexdigest()[:12]


def dataset_fingerprint(
    root: str | Path,
    cases: Sequence[Any],
    label_set: str = "clean",
    foreground: Sequence[int] | None = None,
    reporter: Any = None,
) -> dict[str, Any]:
    """The cached fingerprint of these training cases and masks, computed (and cached) when missing.

    Args:
        root: the dataset folder; the cache is ``root/svldrl_fingerprint.json``.
        cases: the training cases (all of them, as nnU-Net: the validation fold's too).
        label_set: ``clean`` or ``noisy/NAME`` (the masks the foreground comes from).
        foreground: label values mapped to foreground (None: any label > 0).
        reporter: gets one line when the fingerprint is computed.
    """
    path = Path(root) / FINGERPRINT_FILE
    key = _key(label_set, foreground, [c.case_id for c in cases])
    cache: dict[str, Any] = {}
    if path.is_file():
        data = read_json(path, None)
        if not isinstance(data, dict) or data.get("written_by") != "svldrl":
            path = None  # a file of that name svldrl did not write: use it for nothing, write nothing
        else:
            cache = data
            if isinstance(cache.get("entries", {}).get(key), dict):
                return dict(cache["entries"][key])
    if reporter is not None:
        reporter.info(f"CT intensity fingerprint of {len(cases)} training cases ({label_set} masks)")
    stats = compute_fingerprint(cases, foreground)
    if path is not None and os.access(Path(root), os.W_OK):
        entries = dict(cache.get("entries", {}))
        entries[key] = stats
        try:
            write_text(
                path, json.dumps({"written_by": "svldrl", "version": VERSION, "entries": entries}, indent=2)
            )
        except OSError:
            pass  # a read-only or full dataset disk: the fingerprint is recomputed next time, nothing is lost
    return stats


def ct_range(stats: dict[str, Any]) -> list[float]:
    """The clip range [percentile 0.5, percentile 99.5] of a fingerprint, as ``data.intensity_range``."""
    lo, hi = float(stats["percentile_00_5"]), float(stats["percentile_99_5"])
    if not hi > lo:
        raise UserError(
            f"the training foreground has a constant intensity ({lo:g}); set data.ct_window to a HU window"
        )
    return [lo, hi]
