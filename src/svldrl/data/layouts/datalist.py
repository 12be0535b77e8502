"""MSD / MONAI datalist JSON: ``{"training": [{"image", "label"}], "test": [...]}``, paths relative to the JSON's
folder. An MSD task folder (``dataset.json`` with ``training`` and no ``channel_names``) is read the same way."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from svldrl.data.cases import Case, Dataset
from svldrl.data.io import file_ending
from svldrl.data.layouts.common import CHANNEL, Layout, is_label_value, modality_of, read_json_object
from svldrl.errors import UserError

NAME = "datalist"


def probe(path: Path) -> bool:
    """A ``.json`` file (but an nnU-Net ``dataset.json``, which has no ``training`` list), or a folder whose
    ``dataset.json`` is an MSD task's."""
    if path.is_file():
        return path.suffix.lower() == ".json" and (
            path.name != "dataset.json" or "training" in read_json_object(path)
        )
    dataset_json = path / "dataset.json"
    if not dataset_json.is_file():
        return False
    data = read_json_object(dataset_json)
    return "training" in data and "channel_names" not in data


def load(path: Path) -> Dataset:
    json_path = path if path.is_file() else path / "dataset.json"
    data = read_json_object(json_path)
    if "training" not in data:
        raise UserError("datalist JSON has no 'training' list", json_path)
    base = Path(os.path.abspath(json_path.parent))
    training = data.get("training")
    if not isinstance(training, list):
        raise UserError('datalist \'training\' must be a list of {"image": ..., "label": ...}', json_path)
    modality = "mr"
    for key in ("modality", "channel_names"):  # MSD says "modality", nnU-Net v2 "channel_names"
        if isinstance(data.get(key), dict) and data[key]:
            modality = modality_of(next(iter(data[key].values())))
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
            case = _case(base, json_path, entry["image"], entry["label"], where, modality)
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
            case = _case(base, json_path, entry["image"], entry.get("label"), where, modality)
        elif isinstance(entry, str):
            case = _case(base, json_path, entry, None, where, modality)
        else:
            raise UserError(f"{where} must be a path or an object with 'image'", json_path)
        _claim(seen, case, json_path)
        test.append(case)
    return Dataset(base, train, test, modality, _labels(data), NAME, file_ending(train[0].image) or ".nii.gz")


def _case(base: Path, json_path: Path, image: Any, label: Any, where: str, modality: str) -> Case:
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
    case_id = stem[:-5] if CHANNEL.fullmatch(stem) and stem.endswith("_0000") else stem
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


def _labels(data: dict) -> dict[str, int]:
    labels = data.get("labels")
    if isinstance(labels, dict) and labels:
        # MSD: {"0": "background", "1": "left atrium"}; nnU-Net: {"background": 0, "left atrium": 1}.
        if all(str(k).isdigit() and isinstance(v, str) for k, v in labels.items()):
            return {v: int(k) for k, v in labels.items()}
        if all(is_label_value(v) for v in labels.values()):
            return dict(labels)
    return {"background": 0, "foreground": 1}


LAYOUT = Layout(NAME, probe, load, file_hint="a datalist .json file")
