"""Dataset layouts, case loading, normalisation and splits: round trips and every bad input."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import SimpleITK as sitk

from svldrl.data.dataset import Case, check_mask, load_case, load_dataset
from svldrl.data.io import read_volume, write_nifti
from svldrl.data.normalize import map_foreground, normalize_intensity
from svldrl.data.splits import load_or_create_splits, make_splits
from svldrl.errors import UserError
from svldrl.settings import Data

SHAPE = (10, 9, 8)
AFFINE = np.diag([1.0, 1.0, 1.5, 1.0])
CFG = Data()


def _pair(seed: int, values: tuple[int, ...] = (1,)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.normal(500.0, 50.0, SHAPE).astype(np.float32)
    label = np.zeros(SHAPE, dtype=np.uint8)
    for i, v in enumerate(values):
        label[2 + i, 2:6, 2:6] = v
    image[label > 0] += 300
    return image, label


def make_nnunet(root: Path, n: int = 3, n_test: int = 1, channel: str = "MR") -> Path:
    """A tiny nnU-Net v2 raw folder with ``n`` training and ``n_test`` test cases."""
    for i in range(n + n_test):
        split = "Tr" if i < n else "Ts"
        image, label = _pair(i)
        write_nifti(root / f"images{split}" / f"case_{i:03d}_0000.nii.gz", image, AFFINE)
        write_nifti(root / f"labels{split}" / f"case_{i:03d}.nii.gz", label, AFFINE)
    meta = {
        "channel_names": {"0": channel},
        "labels": {"background": 0, "organ": 1},
        "numTraining": n,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _edit_json(root: Path, **changes) -> None:
    meta = json.loads((root / "dataset.json").read_text())
    for key, value in changes.items():
        if value is None:
            meta.pop(key)
        else:
            meta[key] = value
    (root / "dataset.json").write_text(json.dumps(meta))


# ----------------------------------------------------------------------------------------------------------
# Round trips


def test_nnunet_round_trip(tmp_path):
    root = make_nnunet(tmp_path / "Dataset001_Toy", channel="CT")
    ds = load_dataset(root)
    assert ds.layout == "nnunet" and ds.modality == "ct" and ds.file_ending == ".nii.gz"
    assert ds.case_ids == ["case_000", "case_001", "case_002"]
    assert [c.case_id for c in ds.test] == ["case_003"] and ds.test[0].label is not None
    assert ds.labels == {"background": 0, "organ": 1}
    image, label, vol = load_case(ds.train[1], CFG)
    assert image.dtype == np.float32 and 0.0 <= image.min() and image.max() <= 1.0
    assert label.dtype == np.uint8 and set(np.unique(label)) == {0, 1}
    np.testing.assert_array_equal(label, _pair(1)[1])
    np.testing.assert_allclose(vol.affine, AFFINE)
    assert ds.noisy_dir("uniform") == root / "labelsTr_noisy" / "uniform"
    # Passing dataset.json itself reads the same dataset.
    assert load_dataset(root / "dataset.json").case_ids == ds.case_ids


def test_datalist_round_trip(tmp_path):
    root = make_nnunet(tmp_path / "ds")
    datalist = {
        "training": [
            {"image": f"imagesTr/case_{i:03d}_0000.nii.gz", "label": f"./labelsTr/case_{i:03d}.nii.gz"}
            for i in range(3)
        ],
        "test": ["imagesTs/case_003_0000.nii.gz"],
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "left atrium"},
    }
    (root / "list.json").write_text(json.dumps(datalist))
    ds = load_dataset(root / "list.json")
    assert ds.layout == "datalist" and ds.modality == "ct" and ds.root == root
    assert ds.case_ids == ["case_000", "case_001", "case_002"]
    assert ds.test[0].case_id == "case_003" and ds.test[0].label is None
    assert ds.labels == {"background": 0, "left atrium": 1}
    _, label, _ = load_case(ds.train[2], CFG)
    np.testing.assert_array_equal(label, _pair(2)[1])


def test_msd_task_folder(tmp_path):
    # An MSD / nnU-Net v1 task folder: dataset.json with a "training" list naming images without the
    # channel suffix that the files on disk carry.
    root = make_nnunet(tmp_path / "Task02_Heart")
    msd = {
        "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "left atrium"},
        "training": [
            {"image": f"./imagesTr/case_{i:03d}.nii.gz", "label": f"./labelsTr/case_{i:03d}.nii.gz"}
            for i in range(3)
        ],
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(msd))
    ds = load_dataset(root)
    assert (
        ds.layout == "datalist"
        and ds.modality == "mr"
        and ds.case_ids == ["case_000", "case_001", "case_002"]
    )
    assert ds.train[0].image.name == "case_000_0000.nii.gz"


def test_hdf5_folder_with_lists(tmp_path):
    # Left Atrium release: <case>/mri_norm2.h5 plus train.list / test.list beside the case folders.
    for i, name in enumerate(["A1", "B2", "C3"]):
        image, label = _pair(i)
        (tmp_path / name).mkdir()
        with h5py.File(tmp_path / name / "mri_norm2.h5", "w") as f:
            f["image"], f["label"] = image, label
    (tmp_path / "train.list").write_text("A1\nC3\n")
    (tmp_path / "test.list").write_text("B2\n")
    ds = load_dataset(tmp_path)
    assert ds.layout == "hdf5" and ds.file_ending == ".h5"
    assert ds.case_ids == ["A1", "C3"] and [c.case_id for c in ds.test] == ["B2"]
    image, label, vol = load_case(ds.train[1], CFG)
    np.testing.assert_array_equal(label, _pair(2)[1])
    assert image.shape == SHAPE and vol.spacing == (1.0, 1.0, 1.0)


def test_hdf5_flat_folder_without_lists(tmp_path):
    # Pancreas-CT release: image0001_norm.h5 ... in one folder; no lists means all are training.
    for i in range(2):
        image, label = _pair(i)
        with h5py.File(tmp_path / f"image000{i}_norm.h5", "w") as f:
            f["image"], f["label"] = image, label
    ds = load_dataset(tmp_path)
    assert ds.case_ids == ["image0000_norm", "image0001_norm"] and ds.test == []


def test_nrrd_pairs_carry_spacing_and_orientation(tmp_path):
    arr = np.zeros((6, 5, 4), dtype=np.int16)  # SimpleITK order (z, y, x)
    arr[1, 2, 3] = 1000  # one bright voxel; the mask marks the same voxel
    direction = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # rotated 90 degrees about z
    for suffix, values in (("image", arr), ("label", (arr > 0).astype(np.uint8))):
        img = sitk.GetImageFromArray(values)
        img.SetSpacing((2.0, 1.0, 3.0))
        img.SetOrigin((10.0, -5.0, 2.0))
        img.SetDirection(direction)
        sitk.WriteImage(img, str(tmp_path / f"brain1_{suffix}.nrrd"))
    ds = load_dataset(tmp_path)
    assert ds.layout == "folder" and ds.case_ids == ["brain1"]
    image, label, vol = load_case(ds.train[0], CFG)
    assert vol.spacing == pytest.approx((2.0, 1.0, 3.0))
    assert image.shape == (4, 5, 6)  # (i, j, k) = (x, y, z)
    ijk = tuple(int(v) for v in np.argwhere(label)[0])
    assert ijk == (3, 2, 1) and image[ijk] == 1.0
    # The affine puts that voxel where SimpleITK does (LPS -> RAS flips x and y).
    lps = sitk.ReadImage(str(tmp_path / "brain1_image.nrrd")).TransformIndexToPhysicalPoint(ijk)
    world = vol.affine @ np.array([*ijk, 1.0])
    np.testing.assert_allclose(world[:3], [-lps[0], -lps[1], lps[2]], atol=1e-6)


def test_noisy_label_set(tmp_path):
    root = make_nnunet(tmp_path / "ds")
    noisy = root / "labelsTr_noisy" / "erode"
    for i in range(3):
        label = _pair(i)[1]
        label[2, 2, 2] = 0  # a visible difference from the clean mask
        write_nifti(noisy / f"case_{i:03d}.nii.gz", label, AFFINE)
    ds = load_dataset(root, labels="noisy/erode")
    assert ds.label_set == "noisy/erode"
    assert all(c.label.parent == noisy for c in ds.train)
    assert ds.test[0].label.parent.name == "labelsTs"  # test masks stay clean
    _, label, _ = load_case(ds.train[0], CFG)
    assert label[2, 2, 2] == 0 and label.sum() == _pair(0)[1].sum() - 1


def test_foreground_mapping(tmp_path):
    image, label = _pair(0, values=(1, 2, 3, 4))
    write_nifti(tmp_path / "img.nii.gz", image, AFFINE)
    write_nifti(tmp_path / "lab.nii.gz", label, AFFINE)
    case = Case("c", tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz")
    _, mask, _ = load_case(case, replace(CFG, foreground=[1, 2, 4]))
    np.testing.assert_array_equal(mask, np.isin(label, [1, 2, 4]).astype(np.uint8))
    with pytest.raises(UserError, match=r"label values \[0, 1, 2, 3, 4\]; pass --foreground"):
        load_case(case, CFG)
    np.testing.assert_array_equal(map_foreground(label, None), (label > 0).astype(np.uint8))


def test_float_mask_with_integer_values_is_accepted():
    mask = check_mask(np.array([[[0.0, 1.0]]], dtype=np.float32), "m.nii.gz", None)
    assert mask.dtype == np.uint8 and mask.tolist() == [[[0, 1]]]
    assert check_mask(np.zeros((2, 2, 2)), "m.nii.gz", None, allow_empty=True).sum() == 0


def test_normalize_intensity():
    rng = np.random.default_rng(0)
    mr = rng.normal(800, 100, (16, 16, 16))
    out = normalize_intensity(mr, "mr")
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    ct = np.array([-2000.0, -160.0, 40.0, 240.0, 3000.0])
    np.testing.assert_allclose(normalize_intensity(ct, "ct", ct_window=(-160, 240)), [0, 0, 0.5, 1, 1])
    const = normalize_intensity(np.full((4, 4, 4), 7.0), "mr")
    assert const.dtype == np.float32 and not const.any()


def test_auto_modality_uses_the_dataset_window(tmp_path):
    root = make_nnunet(tmp_path / "ds", channel="CT")
    ds = load_dataset(root)
    image, _, _ = load_case(ds.train[0], replace(CFG, modality="auto", ct_window=[0, 2000]))
    raw = read_volume(ds.train[0].image).array
    np.testing.assert_allclose(image, raw / 2000.0, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# Bad inputs: each raises a UserError whose message names the file


def _missing_json(root):
    (root / "dataset.json").unlink()
    return root / "dataset.json"


def _bad_json(root):
    (root / "dataset.json").write_text('{"channel_names": ')
    return root / "dataset.json"


def _missing_key(key):
    def edit(root):
        _edit_json(root, **{key: None})
        return root / "dataset.json"

    return edit


def _no_background(root):
    _edit_json(root, labels={"organ": 1})
    return root / "dataset.json"


def _rename(src: str, dst: str):
    def edit(root):
        (root / src).rename(root / dst)
        return root / dst

    return edit


def _delete_label(root):
    (root / "labelsTr/case_001.nii.gz").unlink()
    return root / "imagesTr/case_001_0000.nii.gz"


def _extra_label(root):
    write_nifti(root / "labelsTr/stray.nii.gz", _pair(0)[1], AFFINE)
    return root / "labelsTr/stray.nii.gz"


def _test_duplicates_train(root):
    (root / "imagesTs/case_003_0000.nii.gz").rename(root / "imagesTs/case_000_0000.nii.gz")
    (root / "labelsTs/case_003.nii.gz").rename(root / "labelsTs/case_000.nii.gz")
    return root / "imagesTs/case_000_0000.nii.gz"


def _no_cases(root):
    for f in (root / "imagesTr").iterdir():
        f.unlink()
    for f in (root / "labelsTr").iterdir():
        f.unlink()
    return root / "imagesTr"


def _datalist(entries: list[dict], test: list | None = None):
    def edit(root):
        (root / "list.json").write_text(json.dumps({"training": entries, "test": test or []}))
        return root / "list.json"

    return edit


def _outside(root):
    outside = root.parent / "secret.nii.gz"
    write_nifti(outside, _pair(0)[0], AFFINE)
    return _datalist([{"image": str(outside), "label": "labelsTr/case_000.nii.gz"}])(root)


def _noisy(name: str, make_folder: bool):
    def edit(root):
        folder = root / "labelsTr_noisy" / name
        if make_folder:
            for i in (0, 2):  # case_001 is missing
                write_nifti(folder / f"case_{i:03d}.nii.gz", _pair(i)[1], AFFINE)
            return folder / "case_001.nii.gz"
        return folder

    return edit


_OK = {"image": "imagesTr/case_000_0000.nii.gz", "label": "labelsTr/case_000.nii.gz"}

BAD_DATASETS = {
    "missing dataset.json": (_missing_json, "missing dataset.json"),
    "malformed dataset.json": (_bad_json, "malformed JSON"),
    "no channel_names": (_missing_key("channel_names"), "missing key 'channel_names'"),
    "no labels": (_missing_key("labels"), "missing key 'labels'"),
    "no file_ending": (_missing_key("file_ending"), "missing key 'file_ending'"),
    "labels without background": (_no_background, "no background 0"),
    "no channel suffix": (
        _rename("imagesTr/case_000_0000.nii.gz", "imagesTr/case_000.nii.gz"),
        "channel suffix",
    ),
    "wrong channel suffix": (
        _rename("imagesTr/case_000_0000.nii.gz", "imagesTr/case_000_0001.nii.gz"),
        "wrong channel suffix _0001",
    ),
    "other file ending": (_rename("labelsTr/case_000.nii.gz", "labelsTr/case_000.nii"), "file ending"),
    "image without mask": (_delete_label, "image has no mask"),
    "mask without image": (_extra_label, "mask has no image"),
    "test id repeats a training id": (_test_duplicates_train, "duplicate case id 'case_000'"),
    "no cases": (_no_cases, "no training cases"),
    "datalist duplicate ids": (_datalist([_OK, _OK]), "duplicate case id 'case_000'"),
    "datalist path traversal": (
        _datalist([{**_OK, "label": "../../etc/passwd"}]),
        "points outside the datalist's folder",
    ),
    "datalist absolute path outside": (_outside, "points outside the datalist's folder"),
    "datalist missing file": (_datalist([{**_OK, "image": "imagesTr/nope.nii.gz"}]), "file not found"),
    "datalist without training": (_datalist([]), "no training cases"),
    "noisy set missing": (
        _noisy("gone", make_folder=False),
        "noisy label set 'gone' not found",
        "noisy/gone",
    ),
    "noisy case missing": (
        _noisy("part", make_folder=True),
        "noisy mask missing for training case",
        "noisy/part",
    ),
}


@pytest.mark.parametrize(
    "edit,message,labels", [(*v, "clean")[:3] for v in BAD_DATASETS.values()], ids=BAD_DATASETS
)
def test_bad_dataset(tmp_path, edit, message, labels):
    root = make_nnunet(tmp_path / "ds")
    named = edit(root)
    target = named if named.suffix == ".json" and named.name != "dataset.json" else root
    with pytest.raises(UserError, match=message) as info:
        load_dataset(target, labels=labels)
    assert str(named) in str(info.value)
    assert "\n" not in str(info.value)


def _case(tmp_path: Path, image: np.ndarray, label: np.ndarray, label_affine=AFFINE) -> Case:
    write_nifti(tmp_path / "img.nii.gz", image, AFFINE)
    write_nifti(tmp_path / "lab.nii.gz", label, label_affine)
    return Case("c", tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz")


_IMG, _LAB = _pair(0)
_SHIFTED = AFFINE.copy()
_SHIFTED[0, 3] = 0.5
BAD_CASES = {
    "grid shape differs": (_IMG, _LAB[:, :, :-1], AFFINE, "does not match mask grid", True),
    "grid origin differs": (_IMG, _LAB, _SHIFTED, "origin/direction differ", True),
    "multi-label mask": (
        _IMG,
        _LAB * 2 + (_LAB > 0),
        AFFINE,
        r"label values \[0, 3\]; pass --foreground",
        False,
    ),
    "non-integer mask": (_IMG, _LAB * np.float32(0.5), AFFINE, "non-integer values", False),
    "empty mask": (_IMG, np.zeros_like(_LAB), AFFINE, "mask is empty", False),
}


@pytest.mark.parametrize("image,label,affine,message,names_image", BAD_CASES.values(), ids=BAD_CASES.keys())
def test_bad_case(tmp_path, image, label, affine, message, names_image):
    case = _case(tmp_path, image, label, affine)
    with pytest.raises(UserError, match=message) as info:
        load_case(case, CFG)
    assert str(case.label) in str(info.value)
    if names_image:
        assert str(case.image) in str(info.value)


def test_bad_hdf5_and_pairs(tmp_path):
    h5 = tmp_path / "h5"
    h5.mkdir()
    with h5py.File(h5 / "a.h5", "w") as f:
        f["image"] = np.zeros(SHAPE, np.float32)
    with pytest.raises(UserError, match="no dataset 'label'") as info:
        load_dataset(h5)
    assert str(h5 / "a.h5") in str(info.value)
    (h5 / "train.list").write_text("zz\n")
    with pytest.raises(UserError, match="names 'zz'") as info:
        load_dataset(h5)
    assert str(h5 / "train.list") in str(info.value)
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 4, 4), np.int16)), str(pairs / "lung1_image.nrrd"))
    with pytest.raises(UserError, match="image has no mask") as info:
        load_dataset(pairs)
    assert str(pairs / "lung1_image.nrrd") in str(info.value)


def test_num_training_mismatch_warns(tmp_path):
    root = make_nnunet(tmp_path / "ds")
    _edit_json(root, numTraining=5)
    with pytest.warns(UserWarning, match="numTraining is 5"):
        assert len(load_dataset(root).train) == 3


# ----------------------------------------------------------------------------------------------------------
# Splits


def test_splits_match_nnunet_and_are_deterministic():
    ids = [f"case_{i}" for i in range(7)]
    splits = make_splits(list(reversed(ids)), num_folds=5)
    # sklearn KFold(5, shuffle=True, random_state=12345) over the sorted ids, as nnU-Net makes them.
    assert [s["val"] for s in splits] == [
        ["case_3", "case_6"],
        ["case_0", "case_4"],
        ["case_1"],
        ["case_5"],
        ["case_2"],
    ]
    assert splits == make_splits(ids, num_folds=5)
    for s in splits:
        assert sorted(s["train"] + s["val"]) == ids and not set(s["train"]) & set(s["val"])
    assert len(make_splits(ids[:3], num_folds=5)) == 3
    with pytest.raises(UserError, match="at least 2"):
        make_splits(ids[:1])


def test_splits_file_is_written_then_honoured(tmp_path):
    ids = [f"c{i}" for i in range(6)]
    splits = load_or_create_splits(tmp_path, ids, 3)
    assert json.loads((tmp_path / "splits_final.json").read_text()) == splits
    user = [{"train": ["c0", "c1", "c2", "c3", "c4"], "val": ["c5"]}]
    (tmp_path / "splits_final.json").write_text(json.dumps(user))
    assert load_or_create_splits(tmp_path, ids, 5) == user
    (tmp_path / "splits_final.json").write_text(json.dumps([{"train": ["c0", "x9"], "val": ["c5"]}]))
    with pytest.raises(UserError, match="unknown cases: x9") as info:
        load_or_create_splits(tmp_path, ids, 5)
    assert str(tmp_path / "splits_final.json") in str(info.value)


def test_splits_in_read_only_folder(tmp_path, monkeypatch):
    import svldrl.data.splits as splits_module

    def refuse(path, text):
        raise PermissionError(13, "Permission denied", str(path))

    # chmod does not stop root (CI containers), so simulate the read-only mount at the write call.
    monkeypatch.setattr(splits_module, "write_text", refuse)
    splits = load_or_create_splits(tmp_path, ["a", "b", "c"], 5)
    assert len(splits) == 3 and not (tmp_path / "splits_final.json").exists()
    monkeypatch.setattr(splits_module.os, "access", lambda *a: False)
    assert load_or_create_splits(tmp_path, ["a", "b", "c"], 5) == splits
