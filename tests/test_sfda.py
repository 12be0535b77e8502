"""SFDA-style noise: the domain shift, the empty-prediction fallback and run_noise on the tiny dataset."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from svldrl.errors import UserError
from svldrl.noise.sfda import apply_shift, draw_shift, intensity_curve, mask_from_probability
from svldrl.runs import run_noise

# A source model of a few steps: the test checks the plumbing, not the noise level.
TINY_SOURCE = {"iterations": 4, "patch": 32, "features": [4, 8, 16, 32], "batch": 1}


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, msg: str) -> None:
        self.lines.append(msg)


# ---------------------------------------------------------------- the shift


def test_shift_is_seeded_keeps_the_shape_and_changes_intensities():
    rng = np.random.default_rng(0)
    image = np.clip(rng.normal(0.5, 0.2, (20, 22, 24)), 0, 1).astype(np.float32)
    a = draw_shift(np.random.default_rng(7))
    b = draw_shift(np.random.default_rng(7))
    assert a == b
    json.dumps(a)  # recorded in the report
    out1 = apply_shift(image, a, np.random.default_rng(1))
    out2 = apply_shift(image, a, np.random.default_rng(1))
    assert out1.shape == image.shape and out1.dtype == np.float32
    np.testing.assert_array_equal(out1, out2)
    assert np.abs(out1 - image).mean() > 0.02
    # Another image's bias field differs, the shift (a domain) does not.
    assert not np.array_equal(out1, apply_shift(image, a, np.random.default_rng(2)))


def test_fold_inverts_part_of_the_range_and_zero_strength_is_the_identity():
    x = np.linspace(0, 1, 201, dtype=np.float32)
    shift = draw_shift(np.random.default_rng(3), strength=0.0, gamma_max=1.0, invert=0.3, contrast_max=1.0)
    y = intensity_curve(x, shift)
    a, b = shift["fold"]
    assert b - a == pytest.approx(0.3)
    assert np.any(np.diff(y) < 0)  # a decreasing stretch: contrast inverted there
    assert y[0] == pytest.approx(0.0) and y[-1] == pytest.approx(1.0)
    ident = draw_shift(
        np.random.default_rng(3),
        strength=0.0,
        gamma_max=1.0,
        invert=0.0,
        contrast_max=1.0,
        bias=0.0,
        blur=0.0,
    )
    np.testing.assert_allclose(
        apply_shift(x.reshape(1, 1, -1), ident, np.random.default_rng(0)).ravel(), x, atol=1e-6
    )


def test_empty_prediction_falls_back_to_a_component_then_to_the_dilated_clean_mask():
    clean = np.zeros((12, 12, 12), np.uint8)
    clean[4:8, 4:8, 4:8] = 1
    prob = np.zeros(clean.shape, np.float32)
    prob[1:3, 1:3, 1:3] = 0.3  # small component
    prob[6:11, 6:11, 6:11] = 0.2  # the largest one above the lower threshold
    mask, how = mask_from_probability(prob, clean, 0.5, 0.1)
    assert how == "low_threshold_component"
    assert mask.sum() == 125 and mask[8, 8, 8] == 1 and mask[1, 1, 1] == 0
    mask, how = mask_from_probability(np.zeros_like(prob), clean, 0.5, 0.1)
    assert how == "dilated_clean" and mask.sum() == 6**3
    mask, how = mask_from_probability(prob, np.zeros_like(clean), 0.5, 0.1)
    assert how == "none" and mask.sum() == 0  # an empty clean mask may stay empty
    prob[5, 5, 5] = 0.9
    mask, how = mask_from_probability(prob, clean, 0.5, 0.1)
    assert how == "none" and mask.sum() == 1


# ---------------------------------------------------------------- run_noise


def test_run_noise_sfda_writes_masks_and_report_and_is_reproducible(dataset: Path):
    labels_before = digest(dataset / "labelsTr")
    rep = Lines()
    out = run_noise(dataset, "sfda", 0.5, seed=1, name="s", params=TINY_SOURCE, reporter=rep)
    assert out == dataset / "labelsTr_noisy" / "s"
    assert digest(dataset / "labelsTr") == labels_before
    assert not (dataset / "labelsTr_noisy" / "s.partial").exists()
    report = json.loads((out / "noise_report.json").read_text())
    assert report["protocol"] == "sfda" and report["n_cases"] == 6 and report["n_corrupted"] == 3
    for cid, entry in report["cases"].items():
        noisy = nib.load(out / f"{cid}.nii.gz")
        clean = nib.load(dataset / "labelsTr" / f"{cid}.nii.gz")
        assert noisy.shape == clean.shape
        np.testing.assert_allclose(noisy.affine, clean.affine, atol=1e-4)
        op = entry["noise"]
        if entry["corrupted"]:
            assert op["operation"] == "sfda" and op["fallback"] in (
                "none",
                "low_threshold_component",
                "dilated_clean",
            )
            assert op["shift"]["gamma"] > 0 and op["source_run"] == "s.source/run"
            assert entry["foreground_noisy"] > 0  # never an empty mask for a non-empty clean one
        else:
            assert op == {"operation": "none"} and entry["dice"] == 1.0

    # The shifted training images keep each image's grid and change its intensities.
    source = dataset / "labelsTr_noisy" / "s.source"
    assert (source / "run" / "checkpoint_final.pt").is_file()
    for cid in report["cases"]:
        orig = nib.load(dataset / "imagesTr" / f"{cid}_0000.nii.gz")
        shifted = nib.load(source / "dataset" / "imagesTr" / f"{cid}_0000.nii.gz")
        assert shifted.shape == orig.shape
        np.testing.assert_allclose(shifted.affine, orig.affine, atol=1e-4)
        a = np.asarray(orig.dataobj, dtype=np.float32)
        a = (a - a.min()) / (a.max() - a.min())
        assert np.abs(np.asarray(shifted.dataobj) - a).mean() > 0.01

    masks = {p.name: p.read_bytes() for p in out.glob("*.nii.gz")}
    # Deleting the set and running again reuses the cached source model: same masks, no training.
    shutil.rmtree(out)
    rep2 = Lines()
    run_noise(dataset, "sfda", 0.5, seed=1, name="s", params=TINY_SOURCE, reporter=rep2)
    assert any("reusing source model" in line for line in rep2.lines)
    assert {p.name: p.read_bytes() for p in out.glob("*.nii.gz")} == masks
    # A training killed after its last checkpoint is resumed, not restarted: still the same masks.
    shutil.rmtree(out)
    (source / "run" / "checkpoint_final.pt").unlink()
    rep3 = Lines()
    run_noise(dataset, "sfda", 0.5, seed=1, name="s", params=TINY_SOURCE, reporter=rep3)
    assert any("resuming" in line for line in rep3.lines)
    assert {p.name: p.read_bytes() for p in out.glob("*.nii.gz")} == masks
    # A fresh source model trained with the same seed (deterministic training) gives the same masks.
    again = run_noise(dataset, "sfda", 0.5, seed=1, name="t", params=TINY_SOURCE)
    assert {p.name: p.read_bytes() for p in again.glob("*.nii.gz")} == masks
    # An existing run as the source model: no training, no shift recorded.
    ext = run_noise(
        dataset, "sfda", 1.0, seed=1, name="ext", params={**TINY_SOURCE, "source_run": str(source / "run")}
    )
    rep_ext = json.loads((ext / "noise_report.json").read_text())
    assert rep_ext["n_corrupted"] == 6
    assert all(e["noise"]["shift"] is None for e in rep_ext["cases"].values())
    assert not (dataset / "labelsTr_noisy" / "ext.source").exists()


@pytest.mark.parametrize(
    ("params", "name", "words"),
    [
        ({"threshold": 1.5}, None, "threshold"),
        ({"fallback_threshold": 0.7}, None, "fallback_threshold"),
        ({"patch": 30}, None, "patch"),
        ({"features": [8]}, None, "features"),
        ({"nope": 1}, None, "unknown parameter"),
        ({}, "x.source", "invalid noisy-set name"),
    ],
)
def test_bad_sfda_settings_are_user_errors(dataset: Path, params: dict, name: str | None, words: str):
    with pytest.raises(UserError, match=words):
        run_noise(dataset, "sfda", 0.5, seed=0, name=name, params=params)


def test_missing_source_run_is_a_user_error(dataset: Path, tmp_path: Path):
    with pytest.raises(UserError, match="source_run"):
        run_noise(dataset, "sfda", 0.5, seed=0, params={"source_run": str(tmp_path / "none")})


def test_the_parameter_list_is_written_once():
    import dataclasses

    from svldrl.noise.run import protocol_defaults
    from svldrl.noise.sfda import SFDAParams, check_sfda_params

    defaults = {f.name: f.default for f in dataclasses.fields(SFDAParams)}
    assert protocol_defaults("sfda") == defaults
    check_sfda_params(**defaults)  # the defaults are valid
    with pytest.raises(ValueError, match="threshold"):
        check_sfda_params(**{**defaults, "threshold": 1.5})
