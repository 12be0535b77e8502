"""Dataset layouts to a list of cases, and one case to normalised arrays.

Four layouts are read, each found by what the path holds:

- nnU-Net v2 raw folder: ``imagesTr/{CASE}_0000{ending}``, ``labelsTr/{CASE}{ending}``, ``dataset.json``
  (``channel_names``, ``labels``, ``numTraining``, ``file_ending``); optional ``imagesTs/``, ``labelsTs/``.
  Multi-channel datasets are accepted; the pipeline is single-channel and reads channel ``_0000``.
- MSD / MONAI datalist JSON: ``{"training": [{"image", "label"}], "test": [...]}``, paths relative to
  the JSON's folder. An MSD task folder (``dataset.json`` with ``training``) is read the same way.
- Folder of HDF5 files (Left Atrium / Pancreas-CT releases): datasets ``image`` and ``label``;
  ``train.list`` / ``test.list`` beside them pick the split.
- Folder of ``<name>_image.nrrd`` + ``<name>_label.nrrd`` pairs (pyradiomics' test data), all training.

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
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from svldrl.data.io import (
    H5_ENDINGS,
    NIFTI_ENDINGS,
    SITK_ENDINGS,
    Grid,
    Volume,
    file_ending,
    read_grid,
    read_json,
    read_volume,
)
from svldrl.data.normalize import ForegroundCheck, map_foreground, normalize_intensity
from svldrl.errors import UserError

NOISY_DIR = "labelsTr_noisy"
NOISY_ENDING = ".nii.gz"
#: A user's expert masks for some training cases (``{case_id}.nii.gz``), beside ``labelsTr/``.
TRUSTED_DIR = "labelsTr_trusted"
#: In a noisy set: the cases ``svldrl noise --trusted N`` left untouched (``{"cases": [...]}``).
TRUSTED_FILE = "trusted.json"
#: ``data.trusted`` values besides a file: the dataset's and the noisy set's own records, or no trusted cases.
TRUSTED_AUTO, TRUSTED_NONE = "auto", "none"
LAYOUTS = ("nnunet", "datalist", "hdf5", "folder")
# HDF5 stems shared by every case of a release (LA: <case>/mri_norm2.h5): the folder names the case.
GENERIC_H5_STEMS = {"mri_norm2", "mri_norm", "image", "data", "volume", "img"}
_PAIR_ENDINGS = "|".join(re.escape(e) for e in SITK_ENDINGS + NIFTI_ENDINGS)
_PAIR_IMAGE = re.compile(rf"(.+)_image({_PAIR_ENDINGS})", re.IGNORECASE)
_PAIR_LABEL = re.compile(rf"(.+)_(?:label|mask)({_PAIR_ENDINGS})", re.IGNORECASE)
_CHANNEL = re.compile(r"(.+)_(\d{4})")


@dataclass
class Case:
    """One volume and its mask.

    ``image_key`` / ``label_key`` pick the datasets of HDF5 files. ``modality`` is the dataset's
    ("mr" / "ct"), used when the config says ``data.modality: auto``. With a noisy label set, ``label`` is
    the noisy mask and ``clean_label`` / ``clean_label_key`` the dataset's own (methods with a clean subset,
    such as MTCL's, train those cases on it). ``trusted``: the mask in ``label`` is trusted (an expert's, or
    one the noise left untouched; see the module docstring): validation and MTCL's clean subset use it.
    """

    case_id: str
    image: Path
    label: Path | None
    image_key: str = "image"
    label_key: str = "label"
    modality: str | None = None
    clean_label: Path | None = None
    clean_label_key: str = "label"
    trusted: bool = False

    def with_clean_label(self) -> Case:
        """This case with the dataset's own mask (itself when no other label set was chosen)."""
        if self.clean_label is None:
            return self
        return replace(self, label=self.clean_label, label_key=self.clean_label_key)


@dataclass
class Dataset:
    """Training and test cases of one dataset.

    ``labels`` maps label names to values as in dataset.json (region-based nnU-Net datasets may
    map a name to a list of values). ``label_set`` is ``"clean"`` or ``"noisy/<name>"``. ``trusted_source``
    says where the trusted cases (``Case.trusted``) come from, empty without any.
    """

    root: Path
    train: list[Case]
    test: list[Case]
    modality: str
    labels: dict[str, int]
    layout: str
    file_ending: str
    label_set: str = "clean"
    trusted_source: str = ""

    def noisy_dir(self, name: str) -> Path:
        """Folder of the noisy training masks called ``name``."""
        return self.root / NOISY_DIR / name

    @property
    def case_ids(self) -> list[str]:
        """Ids of the training cases, in order."""
        return [c.case_id for c in self.train]

    @property
    def trusted_ids(self) -> list[str]:
        """Ids of the trusted training cases, sorted (empty without trusted cases)."""
        return sorted(c.case_id for c in self.train if c.trusted)

    def case(self, case_id: str) -> Case:
        """The training or test case with this id."""
        for c in self.train + self.test:
            if c.case_id == case_id:
                return c
        raise UserError(f"no case '{case_id}' in the dataset", self.root)


# ----------------------------------------------------------------------------------------------------------
# Loading a dataset


def load_dataset(path: str | Path, labels: str = "clean", trusted: str = TRUSTED_NONE) -> Dataset:
    """Read a dataset in any of the four layouts (see the module docstring).

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
    if path.is_file():
        if path.suffix.lower() != ".json":
            raise UserError("expected a dataset folder or a datalist .json file", path)
        data = _read_json(path)
        if "training" in data:
            ds = _load_datalist(path, data)
        elif path.name == "dataset.json":
            ds = _load_nnunet(path.parent, path, data)
        else:
            raise UserError("datalist JSON has no 'training' list", path)
    else:
        ds = _load_folder(path)
    return apply_trusted(_apply_label_set(ds, labels), trusted)


def _load_folder(root: Path) -> Dataset:
    dataset_json = root / "dataset.json"
    if dataset_json.is_file():
        data = _read_json(dataset_json)
        if "training" in data and "channel_names" not in data:
            return _load_datalist(dataset_json, data)  # MSD task folder / nnU-Net v1
        return _load_nnunet(root, dataset_json, data)
    if (root / "imagesTr").is_dir() or (root / "labelsTr").is_dir():
        raise UserError(
            "missing dataset.json (nnU-Net raw folders need channel_names, labels, numTraining, file_ending)",
            dataset_json,
        )
    h5_files = sorted(
        p
        for p in root.rglob("*")
        if p.name.lower().endswith(H5_ENDINGS) and not p.name.startswith(".") and p.is_file()
    )
    if h5_files:
        return _load_hdf5(root, h5_files)
    ds = _load_pairs(root)
    if ds is None:
        raise UserError(
            "no cases found: expected dataset.json + imagesTr/ (nnU-Net), .h5 files, "
            "or <name>_image.nrrd + <name>_label.nrrd pairs",
            root,
        )
    return ds


def _read_json(path: Path) -> dict:
    """A JSON object the user gave (dataset.json, a datalist): one-line errors for anything else."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise UserError("malformed JSON: expected an object at the top level", path)
    return data


def _modality_of(name: Any) -> str:
    return "ct" if str(name).strip().upper() == "CT" else "mr"


def _visible_files(folder: Path) -> list[Path]:
    # Hidden files are OS clutter (.DS_Store) or our own half-written temporaries; never cases.
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file())


# nnU-Net v2 ------------------------------------------------------------------------------------------------


def _load_nnunet(root: Path, dataset_json: Path, data: dict) -> Dataset:
    for key in ("channel_names", "labels", "file_ending"):
        if key not in data:
            raise UserError(f"malformed dataset.json: missing key '{key}'", dataset_json)
    channels = data["channel_names"]
    if not isinstance(channels, dict) or not channels:
        raise UserError("malformed dataset.json: channel_names must be a non-empty mapping", dataset_json)
    labels = data["labels"]
    if not isinstance(labels, dict) or not all(_is_label_value(v) for v in labels.values()):
        raise UserError("malformed dataset.json: labels must map names to integer values", dataset_json)
    if 0 not in [v for v in labels.values() if isinstance(v, int)]:
        raise UserError("malformed dataset.json: labels have no background 0", dataset_json)
    ending = data["file_ending"]
    if not isinstance(ending, str) or not ending.startswith("."):
        raise UserError(
            f"malformed dataset.json: file_ending must look like '.nii.gz', got {ending!r}", dataset_json
        )
    first = channels.get("0", next(iter(channels.values())))
    modality = _modality_of(first)

    images_tr = root / "imagesTr"
    if not images_tr.is_dir():
        raise UserError("missing imagesTr folder", images_tr)
    train = _nnunet_cases(images_tr, root / "labelsTr", ending, len(channels), modality, require_labels=True)
    if not train:
        raise UserError("no training cases: imagesTr holds no images", images_tr)
    n_declared = data.get("numTraining")
    if isinstance(n_declared, int) and n_declared != len(train):
        warnings.warn(
            f"{dataset_json}: numTraining is {n_declared} but imagesTr holds {len(train)} cases", stacklevel=3
        )
    test: list[Case] = []
    images_ts = root / "imagesTs"
    if images_ts.is_dir():
        labels_ts = root / "labelsTs"
        test = _nnunet_cases(images_ts, labels_ts, ending, len(channels), modality, require_labels=False)
    train_ids = {c.case_id for c in train}
    for c in test:
        if c.case_id in train_ids:
            raise UserError(f"duplicate case id '{c.case_id}': also in imagesTr", c.image)
    return Dataset(root, train, test, modality, dict(labels), "nnunet", ending)


def _is_label_value(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return True
    # Region-based nnU-Net datasets (BraTS) map a region name to a list of label values.
    return isinstance(v, list) and bool(v) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)


def _nnunet_cases(
    image_dir: Path, label_dir: Path, ending: str, n_channels: int, modality: str, require_labels: bool
) -> list[Case]:
    images: dict[str, Path] = {}
    extra_channels: dict[str, Path] = {}
    for f in _visible_files(image_dir):
        if not f.name.endswith(ending):
            raise UserError(f"file ending differs from dataset.json file_ending '{ending}'", f)
        stem = f.name[: -len(ending)]
        m = _CHANNEL.fullmatch(stem)
        if m is None:
            raise UserError(f"image name lacks the channel suffix: expected {stem}_0000{ending}", f)
        case_id, channel = m.group(1), int(m.group(2))
        if channel >= n_channels:
            expected = "_0000" if n_channels == 1 else f"_0000.._{n_channels - 1:04d}"
            raise UserError(
                f"wrong channel suffix _{m.group(2)}: dataset.json channel_names has {n_channels} "
                f"channel(s), expected {expected}",
                f,
            )
        if channel == 0:
            images[case_id] = f
        else:
            extra_channels.setdefault(case_id, f)
    for case_id, f in extra_channels.items():
        if case_id not in images:
            raise UserError(f"case '{case_id}' has no channel _0000 image", f)

    masks: dict[str, Path] = {}
    if label_dir.is_dir():
        for f in _visible_files(label_dir):
            if not f.name.endswith(ending):
                raise UserError(f"file ending differs from dataset.json file_ending '{ending}'", f)
            case_id = f.name[: -len(ending)]
            if case_id not in images:
                m = _CHANNEL.fullmatch(case_id)
                if m is not None and m.group(1) in images:
                    raise UserError(f"mask names carry no channel suffix: expected {m.group(1)}{ending}", f)
                raise UserError(f"mask has no image (expected {image_dir.name}/{case_id}_0000{ending})", f)
            masks[case_id] = f
        # A labelsTs folder with masks must cover every test image, as labelsTr does (empty: ignored).
        require_labels = require_labels or bool(masks)
    for case_id, f in images.items():
        if require_labels and case_id not in masks:
            raise UserError(f"image has no mask (expected {label_dir.name}/{case_id}{ending})", f)
    return [Case(cid, images[cid], masks.get(cid), modality=modality) for cid in sorted(images)]


# Datalist JSON ---------------------------------------------------------------------------------------------


def _load_datalist(json_path: Path, data: dict) -> Dataset:
    base = Path(os.path.abspath(json_path.parent))
    training = data.get("training")
    if not isinstance(training, list):
        raise UserError('datalist \'training\' must be a list of {"image": ..., "label": ...}', json_path)
    modality = "mr"
    for key in ("modality", "channel_names"):  # MSD says "modality", nnU-Net v2 "channel_names"
        if isinstance(data.get(key), dict) and data[key]:
            modality = _modality_of(next(iter(data[key].values())))
            break
    seen: dict[str, str] = {}
    train: list[Case] = []
    # MONAI datalists may carry a "validation" list: labelled cases, so part of the training pool
    # (our cross-validation splits decide what is validated on).
    for section in ("training", "validation"):
        entries = data.get(section) or []
        if not isinstance(entries, list):
            raise UserError(f"datalist '{section}' must be a list", json_path)
        for i, entry in enumerate(entries):
            where = f"{section}[{i}]"
            if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
                raise UserError(f"{where} must be an object with 'image' and 'label'", json_path)
            case = _datalist_case(base, json_path, entry["image"], entry["label"], where, modality)
            _claim(seen, case, json_path)
            train.append(case)
    if not train:
        raise UserError("datalist has no training cases", json_path)
    test: list[Case] = []
    tests = data.get("test") or []
    if not isinstance(tests, list):
        raise UserError("datalist 'test' must be a list", json_path)
    for i, entry in enumerate(tests):
        where = f"test[{i}]"
        if isinstance(entry, dict) and "image" in entry:
            case = _datalist_case(base, json_path, entry["image"], entry.get("label"), where, modality)
        elif isinstance(entry, str):
            case = _datalist_case(base, json_path, entry, None, where, modality)
        else:
            raise UserError(f"{where} must be a path or an object with 'image'", json_path)
        _claim(seen, case, json_path)
        test.append(case)
    return Dataset(
        base,
        train,
        test,
        modality,
        _datalist_labels(data),
        "datalist",
        file_ending(train[0].image) or ".nii.gz",
    )


def _datalist_case(base: Path, json_path: Path, image: Any, label: Any, where: str, modality: str) -> Case:
    if isinstance(image, list) and image:
        image = image[0]  # multi-channel entry (BraTS: flair, t1ce, t1, t2): the pipeline reads one channel
    if not isinstance(image, str) or not image:
        raise UserError(f"{where}.image must be a path", json_path)
    image_path = _resolve_inside(base, image, json_path, f"{where}.image")
    label_path = None
    if label is not None:
        if not isinstance(label, str) or not label:
            raise UserError(f"{where}.label must be a path", json_path)
        label_path = _resolve_inside(base, label, json_path, f"{where}.label")
    ending = file_ending(image_path)
    stem = image_path.name[: -len(ending)] if ending else image_path.name
    case_id = stem[:-5] if _CHANNEL.fullmatch(stem) and stem.endswith("_0000") else stem
    return Case(case_id, image_path, label_path, modality=modality)


def _resolve_inside(base: Path, rel: str, json_path: Path, where: str) -> Path:
    """``base / rel`` normalised; refuse paths leaving ``base`` (checked lexically: symlinked data works)."""
    p = Path(rel)
    full = Path(os.path.normpath(p if p.is_absolute() else base / p))
    if os.path.commonpath([str(full), str(base)]) != str(base):
        raise UserError(f"{where} '{rel}' points outside the datalist's folder {base}", json_path)
    if not full.is_file():
        # nnU-Net v1 lists images as imagesTr/CASE.nii.gz while the file is imagesTr/CASE_0000.nii.gz.
        ending = file_ending(full)
        alt = full.with_name(full.name[: -len(ending)] + "_0000" + ending) if ending else full
        if alt.is_file() and "imagesT" in str(full.parent.name):
            return alt
        raise UserError(f"{where} file not found: {full}", json_path)
    return full


def _claim(seen: dict[str, str], case: Case, source: Path) -> None:
    if case.case_id in seen:
        raise UserError(f"duplicate case id '{case.case_id}' ({seen[case.case_id]} and {case.image})", source)
    seen[case.case_id] = str(case.image)


def _datalist_labels(data: dict) -> dict[str, int]:
    labels = data.get("labels")
    if isinstance(labels, dict) and labels:
        # MSD: {"0": "background", "1": "left atrium"}; nnU-Net: {"background": 0, "left atrium": 1}.
        if all(str(k).isdigit() and isinstance(v, str) for k, v in labels.items()):
            return {v: int(k) for k, v in labels.items()}
        if all(_is_label_value(v) for v in labels.values()):
            return dict(labels)
    return {"background": 0, "foreground": 1}


# HDF5 folder -----------------------------------------------------------------------------------------------


def _load_hdf5(root: Path, files: list[Path]) -> Dataset:
    import h5py

    stem_count = Counter(_h5_stem(f) for f in files)
    cases: dict[str, Case] = {}
    aliases: dict[str, str] = {}
    for f in files:
        stem = _h5_stem(f)
        generic = stem_count[stem] > 1 or stem.lower() in GENERIC_H5_STEMS
        case_id = f.parent.name if generic and f.parent != root else stem
        if case_id in cases:
            raise UserError(f"duplicate case id '{case_id}' (also {cases[case_id].image})", f)
        try:
            with h5py.File(f, "r") as h:
                keys = set(h.keys())
        except Exception as exc:  # h5py raises OSError / KeyError / ValueError on broken files
            raise UserError(f"cannot read HDF5 file ({type(exc).__name__})", f) from None
        if "image" not in keys:
            raise UserError(f"HDF5 file has no dataset 'image' (has: {', '.join(sorted(keys)) or 'none'})", f)
        cases[case_id] = Case(case_id, f, f if "label" in keys else None, modality="mr")
        # List files name cases by id, file stem, or stem without the release's "_norm" suffix.
        for alias in {case_id, stem, re.sub(r"_norm\d*$", "", stem)}:
            aliases.setdefault(alias, case_id)

    def read_list(name: str) -> list[str] | None:
        list_path = root / name
        if not list_path.is_file():
            return None
        ids = []
        for line in list_path.read_text().splitlines():
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            key = Path(entry).name
            key = key[: -len(file_ending(key))] if key.lower().endswith(H5_ENDINGS) else key
            if key not in aliases:
                raise UserError(f"names '{entry}', but no such .h5 file is in the folder", list_path)
            ids.append(aliases[key])
        return ids

    train_ids = read_list("train.list")
    test_ids = read_list("test.list") or []
    both = sorted(set(test_ids) & set(train_ids or []))
    if both:
        raise UserError(f"case '{both[0]}' is in both train.list and test.list", root / "test.list")
    if train_ids is None:
        train_ids = [cid for cid in cases if cid not in set(test_ids)]
    train = [cases[cid] for cid in dict.fromkeys(train_ids)]
    test = [cases[cid] for cid in dict.fromkeys(test_ids)]
    for c in train:
        if c.label is None:
            raise UserError("training case has no dataset 'label'", c.image)
    if not train:
        raise UserError("no training cases among the .h5 files", root)
    return Dataset(root, train, test, "mr", {"background": 0, "foreground": 1}, "hdf5", ".h5")


def _h5_stem(f: Path) -> str:
    return f.name[: -len(file_ending(f))]


# Image / mask pairs ----------------------------------------------------------------------------------------


def _load_pairs(root: Path) -> Dataset | None:
    images: dict[str, Path] = {}
    masks: dict[str, Path] = {}
    for f in _visible_files(root):
        if m := _PAIR_LABEL.fullmatch(f.name):
            target = masks
        elif m := _PAIR_IMAGE.fullmatch(f.name):
            target = images
        else:
            continue
        if m.group(1) in target:
            raise UserError(f"duplicate case id '{m.group(1)}' (also {target[m.group(1)]})", f)
        target[m.group(1)] = f
    if not images and not masks:
        return None
    for cid, f in images.items():
        if cid not in masks:
            raise UserError(f"image has no mask (expected {cid}_label{file_ending(f)})", f)
    for cid, f in masks.items():
        if cid not in images:
            raise UserError(f"mask has no image (expected {cid}_image{file_ending(f)})", f)
    train = [Case(cid, images[cid], masks[cid], modality="mr") for cid in sorted(images)]
    return Dataset(
        root, train, [], "mr", {"background": 0, "foreground": 1}, "folder", file_ending(train[0].image)
    )


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
    for f in _visible_files(folder):
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
    data_cfg: dict,
    need_label: bool = True,
    allow_empty: bool = False,
    labels: ForegroundCheck | None = None,
) -> tuple[np.ndarray, np.ndarray | None, Volume]:
    """Read, normalise and check one case.

    Args:
        case: the case.
        data_cfg: the ``data`` section of the config (``modality``, ``clip_percentiles``,
            ``ct_window``, ``foreground``); ``modality: auto`` takes the dataset's.
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
    modality = data_cfg.get("modality", "auto")
    if modality == "auto":
        modality = case.modality or "mr"
    clip = data_cfg.get("clip_percentiles", (0.5, 99.5))
    image = normalize_intensity(
        vol.array, modality, clip, data_cfg.get("ct_window"), data_cfg.get("intensity_range")
    )
    if not need_label:
        return image, None, vol
    if case.label is None:
        raise UserError(f"case '{case.case_id}' has no mask", case.image)
    mask_vol = read_volume(case.label, key=case.label_key)
    check_grid(vol, mask_vol, case.image, case.label)
    label = check_mask(mask_vol.array, case.label, data_cfg.get("foreground"), allow_empty)
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
