"""Synthetic phantoms: deterministic, realistic enough to need a model, loadable, safe for user data."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from svldrl.data.dataset import load_case, load_dataset
from svldrl.data.io import read_volume
from svldrl.data.synth import FG_FRACTION, make_phantom, synthesize
from svldrl.errors import UserError
from svldrl.reporter import Reporter
from svldrl.settings import Data


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    return synthesize(
        tmp_path_factory.mktemp("s") / "Dataset900_Phantoms", cases=3, size=32, seed=7, test_cases=1
    )


def test_same_seed_gives_identical_files(made, tmp_path):
    again = synthesize(tmp_path / "again", cases=3, size=32, seed=7, test_cases=1)
    first, second = _files(made), _files(again)
    assert sorted(first) == sorted(second) and len(first) == 9  # 4 images, 4 masks, dataset.json
    assert first == second  # byte-identical, gzip included


def test_different_seeds_differ():
    a, la = make_phantom(32, seed=1, index=0)
    b, lb = make_phantom(32, seed=2, index=0)
    c, _ = make_phantom(32, seed=1, index=1)
    assert not np.array_equal(a, b) and not np.array_equal(la, lb) and not np.array_equal(a, c)
    np.testing.assert_array_equal(make_phantom(32, seed=1, index=0)[0], a)


@pytest.mark.parametrize("size", [32, 40, 64])
def test_foreground_fraction_in_range(size):
    for index in range(4):
        image, label = make_phantom(size, seed=3, index=index)
        assert image.shape == label.shape == (size,) * 3
        assert FG_FRACTION[0] <= label.mean() <= FG_FRACTION[1]
        assert ndimage.label(label)[1] == 1  # one connected object


def test_intensities_are_mr_like_not_normalised(made):
    raw = read_volume(made / "imagesTr" / "phantom_000_0000.nii.gz")
    assert raw.array.dtype == np.int16 and raw.array.max() > 500 and raw.array.min() >= 0
    assert raw.spacing == pytest.approx((1.0, 1.0, 1.5))


def test_output_loads_as_nnunet_dataset(made):
    meta = json.loads((made / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "MR"} and meta["labels"] == {"background": 0, "organ": 1}
    assert "seed 7" in meta["description"] and meta["numTraining"] == 3
    ds = load_dataset(made)
    assert ds.case_ids == ["phantom_000", "phantom_001", "phantom_002"]
    assert [c.case_id for c in ds.test] == ["phantom_003"]
    image, label, vol = load_case(ds.train[0], Data())
    assert image.dtype == np.float32 and image.max() == 1.0 and label.sum() > 0


def test_intensity_alone_does_not_segment_the_organ():
    # Even the best intensity window (chosen with the true mask) misses much of the organ or takes in
    # the touching distractor and other tissue: a model has to use shape and context.
    scores = []
    for index in range(4):
        image, label = make_phantom(32, seed=11, index=index)
        smooth = ndimage.gaussian_filter(image.astype(np.float32), 1.0)
        inside = smooth[label > 0]
        best = 0.0
        for lo_q, hi_q in ((1, 99), (5, 95), (10, 90), (20, 80)):
            lo, hi = np.percentile(inside, [lo_q, hi_q])
            pred = (smooth >= lo) & (smooth <= hi)
            best = max(best, 2 * (pred & (label > 0)).sum() / (pred.sum() + label.sum()))
        scores.append(best)
    assert np.mean(scores) < 0.75


def test_sizes_and_speed():
    start = time.perf_counter()
    make_phantom(64, seed=0, index=0)
    assert time.perf_counter() - start < 2.0  # about 0.1 s here; generous for busy CI machines
    assert make_phantom(128, seed=0, index=0)[0].shape == (128, 128, 128)


def test_refuses_foreign_folders(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not written by svldrl synth") as info:
        synthesize(tmp_path, cases=1, size=32, seed=0)
    assert str(tmp_path) in str(info.value)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    other = tmp_path / "other"
    other.mkdir()
    (other / "dataset.json").write_text('{"channel_names": {"0": "CT"}}')
    with pytest.raises(UserError, match="dataset.json not written by svldrl synth"):
        synthesize(other, cases=1, size=32, seed=0)
    with pytest.raises(UserError, match="size"):
        synthesize(tmp_path / "new", cases=1, size=8, seed=0)


def test_rerun_replaces_own_output_and_protects_derived_data(tmp_path):
    out = tmp_path / "ds"
    synthesize(out, cases=3, size=32, seed=0)
    synthesize(out, cases=2, size=32, seed=1)  # only our files there: replaced, stale case removed
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [
        "phantom_000_0000.nii.gz",
        "phantom_001_0000.nii.gz",
    ]
    assert len(load_dataset(out).train) == 2
    (out / "labelsTr_noisy").mkdir()
    synthesize(out, cases=2, size=32, seed=1)  # the same call again: same bytes, derived data stays valid
    with pytest.raises(UserError, match="labelsTr_noisy"):
        synthesize(out, cases=2, size=32, seed=2)


def test_reports_progress(tmp_path):
    stream = io.StringIO()
    synthesize(tmp_path / "ds", cases=2, size=32, seed=0, reporter=Reporter(quiet=False, stream=stream))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and lines[-1].startswith("synth 2/2")


# Digests of make_phantom's arrays as the generator wrote them before the difficulty option existed.
STANDARD_DIGESTS = {
    (32, 3, 0, 0): "87c8653474f5a8c5",
    (32, 3, 1, 1): "5da220ce690a6df5",
    (40, 0, 5, 0): "17512f61c5ab69d8",
}


def _digest(a: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(a.tobytes()).hexdigest()[:16]


@pytest.mark.parametrize("args", list(STANDARD_DIGESTS))
def test_standard_difficulty_is_unchanged_and_easy_keeps_the_shapes(args):
    image, mask = make_phantom(*args)
    assert _digest(image) == STANDARD_DIGESTS[args]  # the default is byte-for-byte what it always was
    assert (make_phantom(*args, difficulty="standard")[0] == image).all()
    easy_image, easy_mask = make_phantom(*args, difficulty="easy")
    assert (easy_mask == mask).all()  # difficulty changes how the organ looks, not where it is
    assert not (easy_image == image).all()


def _organ_cv(image: np.ndarray, mask: np.ndarray) -> float:
    """Coefficient of variation inside the organ (noise, texture and bias), away from its border."""
    core = ndimage.binary_erosion(mask.astype(bool), iterations=1)
    return float(image[core].std() / image[core].mean())


def test_easy_phantoms_are_less_noisy():
    ratios = []
    for i in range(6):
        std_img, mask = make_phantom(32, 11, i)
        easy_img, _ = make_phantom(32, 11, i, difficulty="easy")
        ratios.append(_organ_cv(easy_img, mask) / _organ_cv(std_img, mask))
    assert max(ratios) < 0.8, ratios


def test_difficulty_is_recorded_and_checked(tmp_path):
    std = synthesize(tmp_path / "std", cases=1, size=16, seed=0)
    assert "difficulty" not in json.loads((std / "dataset.json").read_text())["synth"]  # as before
    easy = synthesize(tmp_path / "easy", cases=1, size=16, seed=0, difficulty="easy")
    meta = json.loads((easy / "dataset.json").read_text())
    assert meta["synth"]["difficulty"] == "easy" and "difficulty easy" in meta["description"]
    with pytest.raises(UserError, match="difficulty must be one of"):
        synthesize(tmp_path / "bad", cases=1, size=16, seed=0, difficulty="hard")
