"""nnU-Net v2 raw folder: ``imagesTr/{CASE}_0000{ending}``, ``labelsTr/{CASE}{ending}``, ``dataset.json``
(``channel_names``, ``labels``, ``numTraining``, ``file_ending``); optional ``imagesTs/``, ``labelsTs/``.
Multi-channel datasets are accepted; the pipeline is single-channel and reads channel ``_0000``."""

from __future__ import annotations

import warnings
from pathlib import Path

from svldrl.data.cases import Case, Dataset
from svldrl.data.layouts.common import (
    CHANNEL,
    Layout,
    is_label_value,
    modality_of,
    read_json_object,
    visible_files,
)
from svldrl.errors import UserError

NAME = "nnunet"


def probe(path: Path) -> bool:
    """Its ``dataset.json``, or a folder with one, or with ``imagesTr/`` or ``labelsTr/`` (then the missing
    ``dataset.json`` is what the user is told)."""
    if path.is_file():
        return path.name == "dataset.json"
    return (path / "dataset.json").is_file() or (path / "imagesTr").is_dir() or (path / "labelsTr").is_dir()


def load(path: Path) -> Dataset:
    root, dataset_json = (path.parent, path) if path.is_file() else (path, path / "dataset.json")
    if not dataset_json.is_file():
        raise UserError(
            "missing dataset.json (nnU-Net raw folders need channel_names, labels, numTraining, file_ending)",
            dataset_json,
        )
    data = read_json_object(dataset_json)
    for key in ("channel_names", "labels", "file_ending"):
        if key not in data:
            raise UserError(f"malformed dataset.json: missing key '{key}'", dataset_json)
    channels = data["channel_names"]
    if not isinstance(channels, dict) or not channels:
        raise UserError("malformed dataset.json: channel_names must be a non-empty mapping", dataset_json)
    labels = data["labels"]
    if not isinstance(labels, dict) or not all(is_label_value(v) for v in labels.values()):
        raise UserError("malformed dataset.json: labels must map names to integer values", dataset_json)
    if 0 not in [v for v in labels.values() if isinstance(v, int)]:
        raise UserError("malformed dataset.json: labels have no background 0", dataset_json)
    ending = data["file_ending"]
    if not isinstance(ending, str) or not ending.startswith("."):
        raise UserError(
            f"malformed dataset.json: file_ending must look like '.nii.gz', got {ending!r}", dataset_json
        )
    first = channels.get("0", next(iter(channels.values())))
    modality = modality_of(first)

    images_tr = root / "imagesTr"
    if not images_tr.is_dir():
        raise UserError("missing imagesTr folder", images_tr)
    train = _cases(images_tr, root / "labelsTr", ending, len(channels), modality, require_labels=True)
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
        test = _cases(images_ts, labels_ts, ending, len(channels), modality, require_labels=False)
    train_ids = {c.case_id for c in train}
    for c in test:
        if c.case_id in train_ids:
            raise UserError(f"duplicate case id '{c.case_id}': also in imagesTr", c.image)
    return Dataset(root, train, test, modality, dict(labels), NAME, ending)


def _cases(
    image_dir: Path, label_dir: Path, ending: str, n_channels: int, modality: str, require_labels: bool
) -> list[Case]:
    images: dict[str, Path] = {}
    extra_channels: dict[str, Path] = {}
    for f in visible_files(image_dir):
        if not f.name.endswith(ending):
            raise UserError(f"file ending differs from dataset.json file_ending '{ending}'", f)
        stem = f.name[: -len(ending)]
        m = CHANNEL.fullmatch(stem)
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
        for f in visible_files(label_dir):
            if not f.name.endswith(ending):
                raise UserError(f"file ending differs from dataset.json file_ending '{ending}'", f)
            case_id = f.name[: -len(ending)]
            if case_id not in images:
                m = CHANNEL.fullmatch(case_id)
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


LAYOUT = Layout(NAME, probe, load, folder_hint="dataset.json + imagesTr/ (nnU-Net)")
