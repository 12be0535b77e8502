"""scripts/fetch_lung_data.py, offline parts: manifest, slice sorting, contour filling, resampling, guards."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fetch_lung_data.py"


@pytest.fixture(scope="module")
def fetch():
    spec = importlib.util.spec_from_file_location("fetch_lung_data", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["fetch_lung_data"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_manifest_pins_files_with_checksums_and_six_cases(fetch):
    m = fetch.load_manifest()
    assert {f["package"]: f["version"] for f in m["files"]} == {"pycerr": "2.5.1", "pyradiomics": "3.0.1"}
    for f in m["files"]:
        assert re.fullmatch(r"[0-9a-f]{64}", f["sha256"]) and f["size"] > 0
    ids = [c["id"] for c in m["cases"]]
    assert ids == [f"lung_{i:03d}" for i in range(6)]
    assert all(c["licence"] for c in m["cases"])


def _slice(z: float, value: int) -> SimpleNamespace:
    return SimpleNamespace(
        ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
        ImagePositionPatient=[-10.0, -20.0, z],
        PixelSpacing=[0.5, 0.8],  # between rows (y), between columns (x)
        pixel_array=np.full((4, 5), value, dtype=np.int16),
        RescaleSlope=1.0,
        RescaleIntercept=-1000.0,
    )


def test_ct_slices_are_sorted_by_position_and_rescaled(fetch):
    slices = [_slice(6.0, 3), _slice(0.0, 1), _slice(3.0, 2)]
    volume, origin, spacing, direction = fetch.stack_ct(slices)
    assert volume.shape == (3, 4, 5) and volume.dtype == np.int16
    assert [int(volume[k, 0, 0]) for k in range(3)] == [-999, -998, -997]
    assert origin == (-10.0, -20.0, 0.0)
    assert spacing == (0.8, 0.5, 3.0)
    assert direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    with pytest.raises(fetch.FetchError, match="evenly"):
        fetch.stack_ct([_slice(0.0, 1), _slice(3.0, 1), _slice(7.0, 1)])


def test_contours_fill_their_slice_and_nested_contours_make_a_hole(fetch):
    origin, spacing, direction = np.array([-10.0, -20.0, 0.0]), np.array([1.0, 1.0, 3.0]), np.eye(3)

    def square(x0, y0, side, z):
        return np.array(
            [[x0, y0, z], [x0 + side, y0, z], [x0 + side, y0 + side, z], [x0, y0 + side, z]], float
        )

    # Outer square: voxel columns 2..8 / rows 3..9 on slice 1 (z = 3 mm); inner square 4..6 / 5..7.
    outer = square(-10 + 2, -20 + 3, 6, 3.0)
    inner = square(-10 + 4, -20 + 5, 2, 3.0)
    mask = fetch.rasterise([outer], origin, direction, spacing, (3, 12, 12))
    assert mask[0].sum() == 0 and mask[2].sum() == 0
    assert mask[1, 3:10, 2:9].all() and mask[1].sum() == 49
    holed = fetch.rasterise([outer, inner], origin, direction, spacing, (3, 12, 12))
    assert holed[1].sum() == 49 - 9 and holed[1, 6, 5] == 0
    with pytest.raises(fetch.FetchError, match="between slices"):
        fetch.rasterise([square(-8, -17, 6, 4.5)], origin, direction, spacing, (3, 12, 12))


def test_polygon_fill_without_scikit_image_matches(fetch, monkeypatch):
    rows, cols = np.array([1.0, 1.0, 6.0, 6.0]), np.array([2.0, 7.0, 7.0, 2.0])
    monkeypatch.setitem(sys.modules, "skimage.draw", None)  # import fails: matplotlib fallback
    fallback = fetch.fill_polygon(rows, cols, (10, 10))
    monkeypatch.undo()
    assert fallback.sum() > 0
    if importlib.util.find_spec("skimage") is not None:
        np.testing.assert_array_equal(fallback, fetch.fill_polygon(rows, cols, (10, 10)))


def test_resampling_is_isotropic_keeps_the_frame_and_the_mask_binary(fetch):
    sitk = pytest.importorskip("SimpleITK")
    arr = np.zeros((4, 10, 12), np.int16)  # z, y, x
    arr[1:3, 3:7, 4:9] = 100
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.0, 1.0, 3.0))
    img.SetOrigin((5.0, -2.0, 7.0))
    out = fetch.resample(img, 1.5, is_label=False)
    assert out.GetSize() == (8, 7, 8) and out.GetSpacing() == (1.5, 1.5, 1.5)
    assert out.GetOrigin() == img.GetOrigin()
    assert sitk.GetArrayFromImage(out).dtype == np.int16
    mask = sitk.GetImageFromArray((arr > 0).astype(np.uint8))
    mask.CopyInformation(img)
    m = sitk.GetArrayFromImage(fetch.resample(mask, 1.5, is_label=True))
    assert set(np.unique(m)) == {0, 1}


def test_cache_inside_a_git_work_tree_is_refused_before_any_download(fetch, tmp_path, monkeypatch):
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    monkeypatch.setattr(fetch, "download", lambda *a, **k: pytest.fail("must not download"))
    with pytest.raises(fetch.FetchError, match="git work tree"):
        fetch.fetch(tmp_path / "repo" / "cache", 1.5)
    assert fetch.main(["--cache", str(tmp_path / "repo" / "cache")]) == 2
    assert fetch.git_work_tree(tmp_path / "elsewhere") is None or (tmp_path / ".git").exists() is False


def test_dataset_json_is_an_nnunet_ct_dataset(fetch):
    m = fetch.load_manifest()
    facts = [{"id": c["id"]} for c in m["cases"]]
    d = fetch.dataset_json(m, facts, 1.5)
    assert d["channel_names"] == {"0": "CT"} and d["labels"] == {"background": 0, "tumour": 1}
    assert d["numTraining"] == 6 and d["file_ending"] == ".nii.gz"
    json.dumps(d)
