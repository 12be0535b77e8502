"""CT normalisation as nnU-Net does it: one foreground-percentile range for the dataset, kept in the run."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from svldrl import config as C
from svldrl.data import fingerprint as FP
from svldrl.data.dataset import load_case, load_dataset
from svldrl.data.normalize import normalize_intensity
from svldrl.runs import predict_folder, train
from svldrl.settings import Data
from tests.conftest import TINY


@pytest.fixture()
def ct_dataset(dataset: Path) -> Path:
    """The phantoms as CT: air at -1024 HU, the body at -150..250 HU, the organ near 40 HU."""
    meta = json.loads((dataset / "dataset.json").read_text())
    meta["channel_names"] = {"0": "CT"}
    (dataset / "dataset.json").write_text(json.dumps(meta))
    for img_path in sorted(dataset.glob("images*/*.nii.gz")):
        img = nib.load(str(img_path))
        a = np.asarray(img.dataobj).astype(np.float32)
        hu = np.where(a < 100, -1024.0, (a - 700.0) * 0.35 + 40.0)
        nib.save(nib.Nifti1Image(hu.astype(np.int16), img.affine), str(img_path))
    return dataset


def test_fingerprint_is_nnunets_foreground_sampling(ct_dataset: Path) -> None:
    ds = load_dataset(ct_dataset)
    stats = FP.compute_fingerprint(ds.train)
    pooled = []
    for case in ds.train:
        image = np.asarray(nib.load(str(case.image)).dataobj)
        mask = np.asarray(nib.load(str(case.label)).dataobj) > 0
        pooled.append(np.random.RandomState(1234).choice(image[mask], 10000, replace=True))
    pooled = np.concatenate(pooled).astype(np.float64)
    assert stats["n_samples"] == 10000 * len(ds.train) == pooled.size
    assert stats["percentile_00_5"] == pytest.approx(np.percentile(pooled, 0.5))
    assert stats["percentile_99_5"] == pytest.approx(np.percentile(pooled, 99.5))
    assert stats["mean"] == pytest.approx(pooled.mean()) and stats["std"] == pytest.approx(pooled.std())


def test_ct_range_spreads_soft_tissue_and_is_the_same_for_every_case(ct_dataset: Path) -> None:
    ds = load_dataset(ct_dataset)
    lo, hi = FP.ct_range(FP.compute_fingerprint(ds.train))
    assert -300 < lo < hi < 400  # the organ's HU, not air (-1024)
    a = np.array([-1024.0, 11.0, 50.0, 3000.0])
    out = normalize_intensity(a, "ct", (0.5, 99.5), None, [lo, hi])
    assert out[0] == 0.0 and out[-1] == 1.0
    assert out[2] - out[1] > 0.04  # soft tissue is no longer squeezed into a sliver of [0, 1]
    assert normalize_intensity(a, "ct", (0.5, 99.5), [-1000, 400], [lo, hi])[1] == pytest.approx(1011 / 1400)


def test_training_records_the_range_and_predict_uses_it(
    ct_dataset: Path, tmp_path: Path, monkeypatch
) -> None:
    torch.set_num_threads(1)
    cfg = C.load_config(overrides=[*TINY, "train.iterations=2", "train.threads=1"])
    run = train(ct_dataset, "clean", tmp_path / "run", cfg)
    saved = yaml.safe_load((run / "config.yaml").read_text())["data"]
    stats = FP.compute_fingerprint(load_dataset(ct_dataset).train)
    assert saved["modality"] == "ct"
    assert saved["intensity_range"] == pytest.approx([stats["percentile_00_5"], stats["percentile_99_5"]])
    # ... while the config the caller passed stays as given (the same one can train another dataset)
    assert cfg.data.modality == "auto" and cfg.data.intensity_range is None
    cache = json.loads((ct_dataset / FP.FINGERPRINT_FILE).read_text())
    assert cache["written_by"] == "svldrl" and len(cache["entries"]) == 1

    # A second run reads the cache instead of sampling the cases again.
    def boom(*a, **k):
        raise AssertionError("fingerprint recomputed")

    monkeypatch.setattr(FP, "compute_fingerprint", boom)
    train(ct_dataset, "clean", tmp_path / "run2", C.load_config(overrides=[*TINY, "train.iterations=2"]))
    monkeypatch.undo()

    # Prediction normalises with the run's range: a case scaled by training's rule gives the same input.
    seen = []
    import svldrl.runs.run as P

    real = P.segment_volume
    monkeypatch.setattr(
        P, "segment_volume", lambda m, n, c, image, b=None: seen.append(image) or real(m, n, c, image, b)
    )
    predict_folder(run, ct_dataset / "imagesTs", tmp_path / "pred")
    case = load_dataset(ct_dataset).test[0]
    expected, _, _ = load_case(case, Data(**saved), need_label=False)
    np.testing.assert_allclose(seen[0], expected)


def test_a_window_overrides_and_a_read_only_dataset_still_trains(
    ct_dataset: Path, tmp_path: Path, monkeypatch
) -> None:
    torch.set_num_threads(1)
    cfg = C.load_config(overrides=[*TINY, "train.iterations=2", "data.ct_window=[-1000,400]"])
    run = train(ct_dataset, "clean", tmp_path / "run", cfg)
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["intensity_range"] is None
    assert not (ct_dataset / FP.FINGERPRINT_FILE).exists()
    # A dataset folder the user cannot write (a read-only mount; root ignores chmod, so it is simulated).
    monkeypatch.setattr(FP.os, "access", lambda path, mode: Path(path) != ct_dataset)
    run = train(
        ct_dataset, "clean", tmp_path / "run_ro", C.load_config(overrides=[*TINY, "train.iterations=2"])
    )
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["intensity_range"] is not None
    assert not (ct_dataset / FP.FINGERPRINT_FILE).exists()


def test_a_foreign_file_of_the_cache_name_is_left_alone(ct_dataset: Path) -> None:
    (ct_dataset / FP.FINGERPRINT_FILE).write_text("a user's notes")
    ds = load_dataset(ct_dataset)
    stats = FP.dataset_fingerprint(ct_dataset, ds.train)
    assert stats["n_cases"] == len(ds.train)
    assert (ct_dataset / FP.FINGERPRINT_FILE).read_text() == "a user's notes"
