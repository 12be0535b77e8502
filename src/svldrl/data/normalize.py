"""Intensity normalisation to [0, 1] and label-to-foreground mapping.

MR: clip each image to its own robust percentiles, then min-max. CT: clip to one range for the whole
dataset, then min-max: a fixed HU window when one is given (``data.ct_window``), else the dataset
fingerprint's foreground percentiles 0.5 / 99.5 (``data.intensity_range``, nnU-Net's CT rule; see
:mod:`svldrl.data.fingerprint`). A CT image with neither (a run trained before the fingerprint existed) falls
back to the per-image percentile rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from svldrl.errors import UserError


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


#: ``--foreground`` is refused when more than this share of the masks that hold any label hold none of the
#: chosen ones (:class:`ForegroundCheck`).
MAX_LACKING = 0.5
_SHOWN = 8  # label values / case ids named in a message


class ForegroundCheck:
    """Which masks hold labels, but none of the ``--foreground`` ones, and what they hold instead.

    Such a mask maps to all background. In a few masks that is a case where the chosen structure is absent
    (a multi-organ set binarised for one organ): a negative example, kept (the caller warns). In most masks
    it is a wrong label value (``--foreground 255`` for masks that mark the structure with 1), and every such
    mask would silently train as, be corrupted as, or be scored against an empty mask: :meth:`check` refuses
    when more than :data:`MAX_LACKING` of the masks holding any label lack every chosen one. Empty masks (no
    label at all) count on neither side. Nothing is checked without ``foreground`` (masks must be binary).
    """

    def __init__(self, foreground: Sequence[int] | None) -> None:
        self.foreground = None if foreground is None else sorted({int(v) for v in foreground})
        self.n_labelled = 0  # masks holding any non-zero label
        self.lacking: dict[str, list[int]] = {}  # name -> the non-zero labels it holds, none of them chosen

    def add(self, name: str, raw: np.ndarray, mapped: np.ndarray | None = None) -> None:
        """Count one mask: ``raw`` as read (integer-valued), ``mapped`` its foreground if already computed.
        The other labels are looked up only in a mask without any chosen one."""
        if self.foreground is None:
            return
        if mapped is None:
            mapped = map_foreground(raw, self.foreground)
        if np.any(mapped):
            self.n_labelled += 1
            return
        a = np.asarray(raw)
        self.add_labels(name, np.unique(a[a != 0]))

    def add_labels(self, name: str, held: Iterable[int]) -> None:
        """Count one mask by the non-zero label values it holds."""
        if self.foreground is None:
            return
        values = sorted({int(v) for v in held} - {0})
        if not values:
            return
        self.n_labelled += 1
        if not set(values) & set(self.foreground):
            self.lacking[name] = values

    def held(self, names: Iterable[str] | None = None) -> str:
        """The label values the lacking masks (or those of ``names``) hold, as text: ``1, 3``."""
        keys = self.lacking if names is None else [n for n in names if n in self.lacking]
        values = sorted({v for n in keys for v in self.lacking[n]})
        return ", ".join(map(str, values[:_SHOWN])) + (", ..." if len(values) > _SHOWN else "")

    def check(self, what: str, consequence: str, where: str | Path | None = None) -> list[str]:
        """Refuse a wrong label value; otherwise return the names of the masks without any chosen label.

        Args:
            what: the masks, plural, for the message (``"training masks"``).
            consequence: what would happen to them (``"they would train as all background"``).
            where: the file or folder the message names.

        Raises:
            UserError: more than :data:`MAX_LACKING` of the masks that hold any label hold none of the chosen
                ones; the message says which label values they hold.
        """
        if self.foreground is None or len(self.lacking) <= MAX_LACKING * self.n_labelled:
            return sorted(self.lacking)
        fg = ",".join(map(str, self.foreground))
        names = sorted(self.lacking)
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        values = sorted({v for n in names for v in self.lacking[n]})
        hint = (
            f" (e.g. --foreground {','.join(map(str, sorted(set(self.foreground) | set(values))))} if these "
            "values all mark it)"
            if len(values) <= 3
            else ""
        )
        raise UserError(
            f"--foreground {fg}: {len(names)} of the {self.n_labelled} {what} with labels hold none of these "
            f"labels (they hold: {self.held()}; {shown}), so {consequence}; pass the label values that mark "
            f"the structure in these masks{hint}",
            where,
        )
