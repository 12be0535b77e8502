"""scripts/fetch_real_anatomy.py, offline: the builders on a tiny fake atlas, reruns, checksums, guards."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from svldrl.data.dataset import load_case, load_dataset
from svldrl.settings import Data

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fetch_real_anatomy.py"
SPEC = {"aal": "Putamen", "left": 73, "right": 74, "dataset": 801}
BLOB_RADIUS = 5.0


@pytest.fixture(scope="module")
def fetch():
    spec = importlib.util.spec_from_file_location("fetch_real_anatomy", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["fetch_real_anatomy"] = mod
    spec.loader.exec_module(mod)
    return mod


def fake_atlas_arrays(flip: bool = False):
    """40^3 T1-like volume at 1 mm (RAS, centre at world 0): white matter ~110 with texture, two grey blobs
    labelled 73 (left: world x = -8) and 74 (right: x = +8), and a dark CSF-like slab."""
    rng = np.random.default_rng(0)
    n = 40
    t1 = 110 + 4 * rng.standard_normal((n, n, n))
    ii, jj, kk = np.indices((n, n, n))
    labels = np.zeros((n, n, n), np.uint8)
    for value, ci in ((73, 12), (74, 28)):
        r = np.sqrt((ii - ci) ** 2 + ((jj - 20) / 1.3) ** 2 + (kk - 20) ** 2)
        labels[r <= BLOB_RADIUS] = value
        t1[r <= BLOB_RADIUS] = 85 + 3 * rng.standard_normal(int((r <= BLOB_RADIUS).sum()))
    t1[:, :4, :] = 30  # CSF-like
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = -20.0
    if flip:  # the same voxels, but the affine says voxel x runs right to left
        affine[0, 0], affine[0, 3] = -1.0, 19.0
    return np.clip(t1, 0, 255).astype(np.uint8), labels, affine


@pytest.fixture(scope="module")
def atlas(fetch):
    t1, labels, affine = fake_atlas_arrays()
    return fetch.make_atlas(t1, affine, labels, affine, {73: "Putamen_L", 74: "Putamen_R"})


@pytest.fixture(scope="module")
def settings(fetch):
    return fetch.Settings(seed=1, spacing=1.5, size=16, train_cases=3, test_cases=2)


@pytest.fixture(scope="module")
def train_set(fetch, atlas, settings, tmp_path_factory):
    out = tmp_path_factory.mktemp("real") / "Dataset801_ColinPutamen"
    ds = fetch.build_training_set(atlas, "putamen", SPEC, out, settings, {"test": True})
    return out, ds


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def world_of_mask(path: Path) -> np.ndarray:
    img = nib.load(str(path))
    idx = np.argwhere(np.asarray(img.dataobj) > 0)
    return (img.affine[:3, :3] @ idx.T + img.affine[:3, 3:4]).T


def test_manifest_pins_versions_and_checksums(fetch):
    m = fetch.load_manifest()
    versions = {s["package"]: s["version"] for s in m["sources"]}
    assert versions == {"mricron-data": "1.2.20211006+dfsg-4", "slicerio": "1.4.0"}
    for s in m["sources"]:
        assert re.fullmatch(r"[0-9a-f]{64}", s["sha256"]) and s["size"] > 0
        assert s["files"] and all(re.fullmatch(r"[0-9a-f]{64}", v) for v in s["files"].values())
    assert m["structures"]["putamen"]["left"] == 73 and m["structures"]["putamen"]["right"] == 74
    assert len(m["check_structures"]) == 6


def test_same_seed_gives_identical_files_and_another_seed_differs(
    fetch, atlas, settings, train_set, tmp_path
):
    out, _ = train_set
    again = tmp_path / "again" / out.name
    fetch.build_training_set(atlas, "putamen", SPEC, again, settings, {"test": True})
    assert files_of(again) == files_of(out)
    other = tmp_path / "other" / out.name
    fetch.build_training_set(
        atlas, "putamen", SPEC, other, fetch.Settings(**{**vars(settings), "seed": 2}), {}
    )
    first, second = files_of(out), files_of(other)
    assert first.keys() == second.keys()
    assert all(first[k] != second[k] for k in first if k.startswith("images"))


def test_training_cases_come_from_the_left_and_test_cases_from_the_right(train_set):
    out, ds = train_set
    blob_ml = 4 / 3 * np.pi * BLOB_RADIUS**3 * 1.3 / 1000
    for sub, sign, n in (("Tr", -1, 3), ("Ts", 1, 2)):
        masks = sorted((out / f"labels{sub}").glob("*.nii.gz"))
        assert len(masks) == n and len(list((out / f"images{sub}").glob("*_0000.nii.gz"))) == n
        for m in masks:
            arr = np.asarray(nib.load(str(m)).dataobj)
            assert arr.dtype == np.uint8 and set(np.unique(arr)) == {0, 1}
            # One blob only, on its side (augmentation moves world positions by a few mm, not across).
            assert ndi.label(arr)[1] == 1 and sign * world_of_mask(m)[:, 0].mean() > 4
            assert arr.sum() * 1.5**3 / 1000 > 0.5 * blob_ml  # mostly inside the crop
    for split, label in (("train", 73), ("test", 74)):
        assert all(c["aal_label"] == label and c["inside"] >= 0.9 for c in ds["cases"][split])
    assert "one subject" in ds["description"].lower()


def test_crops_are_not_always_centred_and_the_augmentation_varies(train_set):
    _, ds = train_set
    cases = ds["cases"]["train"] + ds["cases"]["test"]
    assert any(any(s != 0 for s in c["shift_vox"]) for c in cases)
    assert len({c["gamma"] for c in cases}) == len(cases)
    assert all(0 <= c["rotation_deg"] <= 10 and all(0.9 <= s <= 1.1 for s in c["scale_xyz"]) for c in cases)


def test_affines_carry_the_spacing_and_image_and_mask_share_the_grid(train_set):
    out, _ = train_set
    for img_path in sorted(out.glob("images*/*.nii.gz")):
        img = nib.load(str(img_path))
        case = img_path.name.replace("_0000.nii.gz", ".nii.gz")
        mask = nib.load(str(out / img_path.parent.name.replace("images", "labels") / case))
        assert img.shape == (16, 16, 16) and mask.shape == img.shape
        np.testing.assert_allclose(np.sqrt((img.affine[:3, :3] ** 2).sum(axis=0)), 1.5)
        np.testing.assert_allclose(img.affine, mask.affine)
        assert np.linalg.det(img.affine[:3, :3]) > 0  # no flip


def test_dataset_loads_in_svldrl_with_mr_like_intensities(train_set):
    out, ds = train_set
    assert ds["channel_names"] == {"0": "MR"} and ds["labels"] == {"background": 0, "putamen": 1}
    assert ds["numTraining"] == 3 and ds["file_ending"] == ".nii.gz"
    loaded = load_dataset(out)
    assert len(loaded.train) == 3 and len(loaded.test) == 2 and loaded.modality == "mr"
    image, label, vol = load_case(loaded.train[0], Data(modality="auto"))
    assert image.shape == label.shape == (16, 16, 16) and label.sum() > 0
    assert vol.array.dtype == np.int16 and vol.array.max() > 100  # not normalised to [0, 1]
    assert 0.0 <= image.min() and image.max() <= 1.0  # svldrl normalises itself


@pytest.mark.parametrize("spacing", [1.5, 2.0])
def test_check_set_is_clean_with_margins_and_a_dev_test_split(fetch, atlas, tmp_path, spacing):
    out = tmp_path / "Dataset810_ColinAAL"
    ds = fetch.build_check_set(atlas, {"putamen": SPEC}, ["putamen"], out, spacing, {"test": True})
    assert ds["svldrl_split"] == {"dev": ["putamen_L"], "test": ["putamen_R"]}
    assert ds["name"] == "Dataset810_ColinAAL" and "dev" in (out / "README.txt").read_text()
    blob_ml = 4 / 3 * np.pi * BLOB_RADIUS**3 * 1.3 / 1000
    for case in ds["cases"]:
        assert min(case["margin_vox"]) >= 8
        assert abs(case["volume_ml"] - blob_ml) < 0.15 * blob_ml  # un-augmented: the blob's own volume
        world = world_of_mask(out / "labelsTr" / f"{case['id']}.nii.gz")
        assert (np.sign(world[:, 0]) == (-1 if case["id"].endswith("_L") else 1)).all()
    loaded = load_dataset(out)
    assert [c.case_id for c in loaded.train] == ["putamen_L", "putamen_R"]
    image, label, vol = load_case(loaded.train[1], Data(modality="auto"))
    assert label.sum() > 0 and vol.array.max() > 100
    np.testing.assert_allclose(vol.spacing, spacing)


def test_atlas_off_the_t1_grid_or_flipped_is_refused(fetch):
    t1, labels, affine = fake_atlas_arrays()
    shifted = affine.copy()
    shifted[0, 3] += 1
    with pytest.raises(fetch.FetchError, match="not on the T1's grid"):
        fetch.make_atlas(t1, affine, labels, shifted, {})
    t1, labels, flipped = fake_atlas_arrays(flip=True)
    bad = fetch.make_atlas(t1, flipped, labels, flipped, {73: "Putamen_L", 74: "Putamen_R"})
    with pytest.raises(fetch.FetchError, match="flipped"):
        fetch.structure_labels(bad, SPEC)
    wrong_names = fetch.make_atlas(t1, flipped, labels, flipped, {73: "Putamen_R", 74: "Putamen_L"})
    with pytest.raises(fetch.FetchError, match="expected Putamen_L"):
        fetch.structure_labels(wrong_names, SPEC)


def test_label_text_is_parsed(fetch):
    names = fetch.parse_label_text("71 Caudate_L 7001\n72 Caudate_R 7002\n\n")
    assert names == {71: "Caudate_L", 72: "Caudate_R"}


def test_a_checksum_mismatch_is_refused_in_one_line(fetch, tmp_path, monkeypatch, capsys):
    bad = tmp_path / "f.bin"
    bad.write_bytes(b"not the file")
    with pytest.raises(fetch.FetchError, match="checksum mismatch"):
        fetch.verify_sha256(bad, "0" * 64)
    cache = tmp_path / "cache"
    folder = cache / "sources" / "mricron-data" / "usr" / "share" / "mricron" / "templates"
    folder.mkdir(parents=True)
    for name in ("ch2.nii.gz", "aal.nii.gz", "aal.nii.txt"):
        (folder / name).write_bytes(b"tampered")
    monkeypatch.setattr(fetch, "download_deb", lambda *a, **k: pytest.fail("must not download"))
    assert fetch.main(["--cache", str(cache), "--skip-ct"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checksum mismatch" in err[0]


def test_reruns_do_nothing_and_other_settings_are_refused_unless_forced(fetch, tmp_path):
    final = tmp_path / "Dataset900_X"
    calls = []

    def build(out: Path) -> dict:
        calls.append(out)
        (out / "a.txt").write_text("x")
        return {"ok": True}

    stamp = {"version": 1, "seed": 0}
    assert fetch.ensure_dataset(final, stamp, False, build) == {"ok": True}
    assert not final.with_name("Dataset900_X.partial").exists()
    mtime = (final / "a.txt").stat().st_mtime_ns
    assert fetch.ensure_dataset(final, stamp, False, build) is None and len(calls) == 1
    assert (final / "a.txt").stat().st_mtime_ns == mtime
    with pytest.raises(fetch.FetchError, match="other settings"):
        fetch.ensure_dataset(final, {"version": 1, "seed": 1}, False, build)
    assert fetch.ensure_dataset(final, {"version": 1, "seed": 1}, True, build) == {"ok": True}
    assert json.loads((final / fetch.STAMP).read_text()) == {"version": 1, "seed": 1}


def test_the_seed_changes_training_sets_only(fetch, settings):
    m = fetch.load_manifest()
    a = dict(fetch.plan(m, settings, ["putamen"], True))
    b = dict(fetch.plan(m, fetch.Settings(**{**vars(settings), "seed": 9}), ["putamen"], True))
    assert a["Dataset801_ColinPutamen"] != b["Dataset801_ColinPutamen"]
    assert a[m["check_dataset"]] == b[m["check_dataset"]] and a[m["ct_dataset"]] == b[m["ct_dataset"]]


def test_cache_inside_a_git_work_tree_is_refused(fetch, tmp_path, monkeypatch):
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    monkeypatch.setattr(fetch, "obtain", lambda *a, **k: pytest.fail("must not fetch"))
    assert fetch.main(["--cache", str(tmp_path / "repo" / "cache")]) == 2


def test_ct_check_set_keeps_one_connected_organ_per_segment(fetch, tmp_path):
    ct = np.full((30, 30, 10), -3024, np.int32)
    ct[2:28, 2:28, :] = 40
    seg = np.zeros(ct.shape, np.uint8)
    seg[10:16, 5:20, 2:8] = 5
    ct[seg == 5] = -850
    seg[20:24, 8:12, 3:6] = 2
    seg[26, 26, 0] = 2  # a stray voxel: dropped
    affine = np.diag([3.0, 3.0, 10.0, 1.0])
    seg_file = tmp_path / "Segmentation.seg.nrrd"
    seg_file.write_bytes(
        b"NRRD0004\ntype: unsigned char\nSegment0_Name:=spine\nSegment0_LabelValue:=2\nSegment0_Layer:=0\n"
        b"Segment1_Name:=right lung\nSegment1_LabelValue:=5\nSegment1_Layer:=0\n\n\x00\x01"
    )
    names = fetch.read_segment_names(seg_file)
    assert names == {2: "spine", 5: "right lung"}
    segments = [
        {"id": "lung_right", "name": "right lung", "value": 5},
        {"id": "spine", "name": "spine", "value": 2},
    ]
    out = tmp_path / "Dataset811_CT"
    ds = fetch.build_ct_check_set(ct, seg, affine, names, segments, out, {})
    by_id = {c["id"]: c for c in ds["cases"]}
    assert by_id["spine"]["components"] == 2 and by_id["spine"]["voxels"] == 4 * 4 * 3
    assert by_id["lung_right"]["margin_vox"] == [8, 5, 2]  # 8 voxels, or to the volume's edge
    loaded = load_dataset(out)
    assert loaded.modality == "ct" and len(loaded.train) == 2
    vol = nib.load(str(out / "imagesTr" / "lung_right_0000.nii.gz"))
    arr = np.asarray(vol.dataobj)
    assert arr.min() >= -1024 and (arr == -850).any()
    np.testing.assert_allclose(np.sqrt((vol.affine[:3, :3] ** 2).sum(axis=0)), [3, 3, 10])
    with pytest.raises(fetch.FetchError, match="expected"):
        fetch.build_ct_check_set(ct, seg, affine, {5: "left lung"}, segments[:1], tmp_path / "bad", {})
