"""A dataset as a list of cases, and one case as normalised arrays.

The formats a dataset may come in (nnU-Net v2 raw folder, MSD / MONAI datalist JSON, HDF5 folder, image / mask
pairs) are read by :mod:`svldrl.data.layouts`, one module each, found by what the path holds.

Noisy masks live beside the clean ones in ``labelsTr_noisy/<name>/{case_id}.nii.gz`` and are chosen
with ``labels="noisy/<name>"``.

Trusted cases (a few masks drawn or reviewed by an expert beside many cheaper ones, MTCL's and PLIL's setting)
are marked on the training cases (``Case.trusted``) by ``load_dataset(..., trusted=...)``:

- ``labelsTr_trusted/{case_id}.nii.gz`` (or the dataset's file ending): a user's expert masks for some training
  cases, beside ``labelsTr/`` and never over it. A trusted case with an expert mask trains and validates on it,
  whatever label set was chosen.
- ``labelsTr_noisy/<name>/trusted.json`` (``{"cases": [...]}``): the cases ``svldrl noise --trusted N`` left
  untouched, so their masks in that set are the clean ones.
- a list the user gives (``data.trusted: FILE``): a JSON list of case ids (or ``{"cases": [...]}``) or a text
  file with one id a line; those cases' masks in the chosen label set are trusted (an expert mask still wins).

``trusted="auto"`` takes the first two (their union), ``"none"`` ignores every source (the default of
:func:`load_dataset`: nothing changes for callers that do not ask).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from svldrl.data.cases import NOISY_DIR as NOISY_DIR  # re-exported: where noisy label sets live
from svldrl.data.cases import Case, Dataset
from svldrl.data.io import Grid, Volume, read_grid, read_json, read_volume
from svldrl.data.layouts import read_layout
from svldrl.data.layouts.common import visible_files
from svldrl.data.normalize import ForegroundCheck, map_foreground, normalize_intensity
from svldrl.errors import UserError
from svldrl.settings import Data

NOISY_ENDING = ".nii.gz"
#: A user's expert masks for some training cases (``{case_id}.nii.gz``), beside ``labelsTr/``.
TRUSTED_DIR = "labelsTr_trusted"
#: In a noisy set: the cases ``svldrl noise --trusted N`` left untouched (``{"cases": [...]}``).
TRUSTED_FILE = "trusted.json"
#: ``data.trusted`` values besides a file: the dataset's and the noisy set's own records, or no trusted cases.
TRUSTED_AUTO, TRUSTED_NONE = "auto", "none"


# ----------------------------------------------------------------------------------------------------------
# Loading a dataset


def load_dataset(path: str | Path, labels: str = "clean", trusted: str = TRUSTED_NONE) -> Dataset:
    """Read a dataset in any of the layouts :data:`svldrl.data.layouts.LAYOUTS` knows.

    Args:
        path: nnU-Net raw folder, datalist ``.json`` file, folder of ``.h5`` files, or folder of
            ``*_image.nrrd`` / ``*_label.nrrd`` pairs.
        labels: ``"clean"`` (the given masks) or ``"noisy/NAME"`` (training masks from
            ``labelsTr_noisy/NAME/{case_id}.nii.gz``; test masks stay clean).
        trusted: which training cases are trusted (``data.trusted``): ``"none"`` (default), ``"auto"`` (the
            expert masks in ``labelsTr_trusted/`` and the cases the noisy set records in ``trusted.json``) or
            the path of a list of case ids; see :func:`apply_trusted`.

    Raises:
        UserError: a missing or malformed file, a case without its mask, duplicate ids, no cases; bad trusted
            cases (:func:`apply_trusted`).
    """
    path = Path(os.path.abspath(path))
    if not path.exists():
        raise UserError("dataset not found", path)
    return apply_trusted(_apply_label_set(read_layout(path), labels), trusted)


# Noisy label sets ------------------------------------------------------------------------------------------


def _apply_label_set(ds: Dataset, labels: str) -> Dataset:
    if labels == "clean":
        return ds
    name = labels[len("noisy/") :] if labels.startswith("noisy/") else ""
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise UserError(f"labels must be 'clean' or 'noisy/NAME', got '{labels}'")
    folder = ds.noisy_dir(name)
    if not folder.is_dir():
        raise UserError(f"noisy label set '{name}' not found", folder)
    train = []
    for case in ds.train:
        f = folder / f"{case.case_id}{NOISY_ENDING}"
        if not f.is_file():
            raise UserError(f"noisy mask missing for training case '{case.case_id}'", f)
        train.append(
            replace(case, label=f, label_key="label", clean_label=case.label, clean_label_key=case.label_key)
        )
    return replace(ds, train=train, label_set=labels)


# Trusted cases ---------------------------------------------------------------------------------------------


def apply_trusted(ds: Dataset, trusted: str = TRUSTED_AUTO) -> Dataset:
    """``ds`` with its trusted training cases marked (``Case.trusted``) and given their trusted masks.

    Which cases: ``"auto"``, every case with an expert mask in ``labelsTr_trusted/`` and every case the chosen
    noisy set records in its ``trusted.json`` (none: the dataset unchanged); ``"none"``, no case (the dataset
    unchanged); any other value is the path of a list of case ids (:func:`read_trusted_list`). Which mask: a
    trusted case's expert mask where it has one, else its mask in the chosen label set (for the cases a noisy
    set records, the clean mask the noise left untouched). The case's ``clean_label`` stays the dataset's own.

    Raises:
        UserError: a trusted case that is not a training case of the dataset, an expert mask on another grid
            than its image (or a file in ``labelsTr_trusted/`` that is no case's mask), every training case
            trusted (nothing is left to stand for the cheaper masks: train with ``--labels`` and
            ``--trusted none``), or a list that names no case.
    """
    if trusted == TRUSTED_NONE:
        return ds
    if not isinstance(trusted, str) or not trusted:
        raise UserError(f"data.trusted must be auto, none or the path of a list of case ids, got {trusted!r}")
    expert = _expert_masks(ds)
    if trusted == TRUSTED_AUTO:
        recorded, record = _recorded_trusted(ds)
        ids = sorted(set(expert) | set(recorded))
        sources = [
            *([f"{TRUSTED_DIR}/ ({len(expert)} expert masks)"] if expert else []),
            *([f"{record} ({len(recorded)} cases the noise left untouched)"] if recorded else []),
        ]
        where: Path = ds.root
    else:
        where = Path(os.path.abspath(trusted))
        ids = read_trusted_list(where)
        unknown = [cid for cid in ids if cid not in set(ds.case_ids)]
        if unknown:
            raise UserError(f"trusted case '{unknown[0]}' is {_not_a_training_case(ds, unknown[0])}", where)
        sources = [str(where)]
    if not ids:
        return ds
    if len(ids) == len(ds.train):
        raise UserError(
            f"every training case ({len(ids)}) is trusted, so none is left to stand for the cheaper masks and "
            "nothing would validate apart from training; train on them as clean masks with --trusted none",
            where,
        )
    chosen = set(ids)
    train = []
    for case in ds.train:
        if case.case_id not in chosen:
            train.append(case)
            continue
        clean = case.clean_label if case.clean_label is not None else case.label
        clean_key = case.clean_label_key if case.clean_label is not None else case.label_key
        mask = expert.get(case.case_id)
        if mask is not None:
            check_grid(read_grid(case.image, case.image_key), read_grid(mask, "label"), case.image, mask)
            case = replace(case, label=mask, label_key="label")
        train.append(replace(case, trusted=True, clean_label=clean, clean_label_key=clean_key))
    return replace(ds, train=train, trusted_source=" + ".join(sources))


def read_trusted_list(path: str | Path) -> list[str]:
    """The case ids of a trusted-case list: a JSON list of ids (or ``{"cases": [...]}``, a noisy set's
    ``trusted.json``), or a text file with one id a line (blank lines and ``#`` comments skipped).

    Raises:
        UserError: a missing or malformed file, a repeated id, or a list without any id.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(
            "trusted-case list not found (data.trusted: auto, none or a JSON / text list of case ids)", path
        )
    if path.suffix.lower() == ".json":
        data = read_json(path)
        if isinstance(data, dict):
            data = data.get("cases")
        if not isinstance(data, list) or not all(isinstance(c, str) and c.strip() for c in data):
            raise UserError(
                'malformed trusted-case list: expected a JSON list of case ids or {"cases": [...]}', path
            )
        ids = [c.strip() for c in data]
    else:
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            raise UserError("trusted-case list is not a text file (one case id a line)", path) from None
        ids = [s for line in text.splitlines() if (s := line.split("#", 1)[0].strip())]
    repeated = sorted({c for c in ids if ids.count(c) > 1})
    if repeated:
        raise UserError(f"trusted-case list names '{repeated[0]}' twice", path)
    if not ids:
        raise UserError("trusted-case list names no case (trusted cases were asked for explicitly)", path)
    return sorted(ids)


def _not_a_training_case(ds: Dataset, case_id: str) -> str:
    if case_id in {c.case_id for c in ds.test}:
        return "a test case, not a training case (a test case never trains nor selects a model)"
    return "not a training case of the dataset"


def _expert_masks(ds: Dataset) -> dict[str, Path]:
    """Case id -> expert mask in ``labelsTr_trusted/``; every file there must be a training case's mask."""
    folder = ds.root / TRUSTED_DIR
    if not folder.is_dir():
        return {}
    endings = list(dict.fromkeys([NOISY_ENDING, ds.file_ending]))
    known = set(ds.case_ids)
    masks: dict[str, Path] = {}
    for f in visible_files(folder):
        ending = next((e for e in endings if f.name.endswith(e)), None)
        if ending is None:
            raise UserError(f"not a trusted mask: expected {{CASE}}{' or {CASE}'.join(endings)}", f)
        cid = f.name[: -len(ending)]
        if cid in masks:
            raise UserError(f"two trusted masks for case '{cid}' (also {masks[cid].name})", f)
        if cid not in known:
            raise UserError(f"trusted mask of case '{cid}', which is {_not_a_training_case(ds, cid)}", f)
        masks[cid] = f
    return masks


def _recorded_trusted(ds: Dataset) -> tuple[list[str], str]:
    """The cases the chosen noisy set records as trusted (its ``trusted.json``), and how to name that record."""
    if not ds.label_set.startswith("noisy/"):
        return [], ""
    path = ds.noisy_dir(ds.label_set[len("noisy/") :]) / TRUSTED_FILE
    if not path.is_file():
        return [], ""
    ids = read_trusted_list(path)
    unknown = [cid for cid in ids if cid not in set(ds.case_ids)]
    if unknown:
        raise UserError(f"trusted case '{unknown[0]}' is {_not_a_training_case(ds, unknown[0])}", path)
    return ids, f"{ds.label_set}/{TRUSTED_FILE}"


# ----------------------------------------------------------------------------------------------------------
# Loading a case


def load_case(
    case: Case,
    data: Data,
    need_label: bool = True,
    allow_empty: bool = False,
    labels: ForegroundCheck | None = None,
) -> tuple[np.ndarray, np.ndarray | None, Volume]:
    """Read, normalise and check one case.

    Args:
        case: the case.
        data: the ``data`` section of the config (``modality``, ``clip_percentiles``, ``ct_window``,
            ``intensity_range``, ``foreground``); ``modality: auto`` takes the case's.
        need_label: read and check the mask.
        allow_empty: accept a mask without foreground (a case where the structure is absent).
        labels: counts the mask (by case id) for the check of ``foreground`` against the labels it holds.

    Returns:
        (image float32 in [0, 1], mask uint8 in {0, 1} or None, the image's :class:`Volume` with the
        raw array, affine and header for writing predictions).

    Raises:
        UserError: unreadable files, image and mask on different grids, a multi-label mask without
            ``foreground``, non-integer or empty masks.
    """
    vol = read_volume(case.image, key=case.image_key)
    modality = data.modality
    if modality == "auto":
        modality = case.modality or "mr"
    image = normalize_intensity(
        vol.array, modality, data.clip_percentiles, data.ct_window, data.intensity_range
    )
    if not need_label:
        return image, None, vol
    if case.label is None:
        raise UserError(f"case '{case.case_id}' has no mask", case.image)
    mask_vol = read_volume(case.label, key=case.label_key)
    check_grid(vol, mask_vol, case.image, case.label)
    label = check_mask(mask_vol.array, case.label, data.foreground, allow_empty)
    if labels is not None:
        labels.add(case.case_id, mask_vol.array, label)
    return image, label, vol


def check_grid(
    image: Volume | Grid,
    mask: Volume | Grid,
    image_path: str | Path,
    mask_path: str | Path,
    tol: float = 1e-3,
) -> None:
    """Raise a :class:`UserError` naming both files unless the volumes share shape and affine (``tol`` mm).

    Either side may be a :class:`Volume` or just its :class:`Grid` (read without the voxels).
    """
    a = image.grid if isinstance(image, Volume) else image
    b = mask.grid if isinstance(mask, Volume) else mask
    same_shape = a.shape == b.shape
    diff = float(np.abs(np.asarray(a.affine) - np.asarray(b.affine)).max())
    if same_shape and diff <= tol:
        return

    def grid(g: Grid) -> str:
        return f"shape {tuple(g.shape)}, spacing {tuple(round(s, 4) for s in g.spacing)}"

    detail = "" if grid(a) != grid(b) else f"; origin/direction differ by up to {diff:.3g} mm"
    raise UserError(
        f"image grid ({grid(a)}) does not match mask grid ({grid(b)}) of {mask_path}{detail}",
        image_path,
    )


def check_mask(
    array: np.ndarray, path: str | Path, foreground: Sequence[int] | None = None, allow_empty: bool = False
) -> np.ndarray:
    """Validate a mask and map it to uint8 {0, 1}.

    Args:
        array: label array as read.
        path: its file, for messages.
        foreground: label values that make the foreground; ``None`` requires a binary mask.
        allow_empty: accept a mask without foreground (predictions may be empty).

    Raises:
        UserError: non-integer values, values other than 0/1 without ``foreground``, empty mask.
    """
    a = np.asarray(array)
    if a.dtype.kind == "b":
        a = a.view(np.uint8)
    elif a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise UserError("mask has NaN or Inf values", path)
        frac = a[a != np.round(a)]
        if frac.size:
            raise UserError(
                f"mask has non-integer values (e.g. {float(frac.flat[0]):g}); expected integer labels", path
            )
    elif a.dtype.kind not in "iu":
        raise UserError(f"mask has unsupported data type {a.dtype}", path)
    if foreground is None:
        if a.size and (a.min() < 0 or a.max() > 1):
            values = [int(v) for v in np.unique(a)]
            shown = str(values) if len(values) <= 12 else f"[{values[0]}, {values[1]}, ..., {values[-1]}]"
            raise UserError(
                f"mask has label values {shown}; pass --foreground to choose the foreground labels", path
            )
        mask = (a > 0).astype(np.uint8)
    else:
        mask = map_foreground(a, [int(v) for v in foreground])
    if not allow_empty and not mask.any():
        which = "" if foreground is None else f" with foreground labels {list(foreground)}"
        raise UserError(f"mask is empty (no foreground voxels{which})", path)
    return mask
