"""Evaluation metrics and the nnU-Net style folder summary."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from svldrl.errors import UserError
from svldrl.eval import case_metrics, evaluate_folders, format_table, markdown_table
from svldrl.rules import overlap

SPACING = (1.0, 1.0, 2.0)


def _cube(shape: tuple[int, int, int] = (12, 12, 12), lo: int = 3, hi: int = 7) -> np.ndarray:
    arr = np.zeros(shape, dtype=np.uint8)
    arr[lo:hi, lo:hi, lo:hi] = 1
    return arr


def _save(path: Path, arr: np.ndarray, spacing: tuple[float, float, float] = SPACING) -> Path:
    nib.save(nib.Nifti1Image(arr.astype(np.uint8), np.diag([*spacing, 1.0])), str(path))
    return path


def test_identical_masks_score_perfectly() -> None:
    ref = _cube()
    m = case_metrics(ref, ref.copy(), SPACING, [1])[1]
    assert m["Dice"] == 1.0 and m["IoU"] == 1.0
    assert m["HD95"] == 0.0 and m["ASD"] == 0.0
    assert (m["TP"], m["FP"], m["FN"], m["n_pred"], m["n_ref"]) == (64, 0, 0, 64, 64)
    assert m["TN"] == ref.size - 64
    assert overlap(ref, ref) == (1.0, 1.0)


@pytest.mark.parametrize(("axis", "expected_mm"), [(2, 2.0), (0, 1.0)])
def test_one_voxel_shift_gives_hand_computed_dice_and_hd95_in_mm(axis: int, expected_mm: float) -> None:
    ref = _cube()
    pred = np.roll(ref, 1, axis=axis)
    m = case_metrics(pred, ref, SPACING, [1])[1]
    # A 4x4x4 cube shifted by one voxel keeps a 4x4x3 overlap: Dice = 2*48/128, IoU = 48/80.
    assert m["TP"] == 48 and m["FP"] == 16 and m["FN"] == 16
    assert m["Dice"] == pytest.approx(0.75)
    assert m["IoU"] == pytest.approx(0.6)
    assert m["HD95"] == pytest.approx(expected_mm)
    assert 0.0 < m["ASD"] < expected_mm
    assert overlap(pred, ref) == pytest.approx((0.75, 0.6))


def test_empty_and_one_sided_labels_are_nan_not_crashes() -> None:
    ref = _cube()
    empty = np.zeros_like(ref)
    both = case_metrics(empty, empty, SPACING, [1])[1]
    assert all(math.isnan(both[k]) for k in ("Dice", "IoU", "HD95", "ASD"))
    assert all(math.isnan(v) for v in overlap(empty, empty))
    missed = case_metrics(empty, ref, SPACING, [1])[1]
    assert missed["Dice"] == 0.0 and missed["FN"] == 64
    assert math.isnan(missed["HD95"]) and math.isnan(missed["ASD"])
    spurious = case_metrics(ref, empty, SPACING, [1])[1]
    assert spurious["Dice"] == 0.0 and spurious["FP"] == 64 and math.isnan(spurious["HD95"])


def test_evaluate_folders_writes_nnunet_summary_and_csv(tmp_path: Path) -> None:
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "labelsTs"
    pred_dir.mkdir()
    ref_dir.mkdir()
    ref_a = _cube()
    ref_a[8:10, 8:10, 8:10] = 2  # a second structure, predicted perfectly
    _save(ref_dir / "case_a.nii.gz", ref_a)
    pred_a = np.roll(_cube(), 1, axis=2)
    pred_a[ref_a == 2] = 2
    _save(pred_dir / "case_a.nii.gz", pred_a)
    # case_b has no label 2 anywhere (empty in both: NaN, left out of the mean) and misses label 1.
    _save(ref_dir / "case_b.nii.gz", _cube())
    _save(pred_dir / "case_b.nii.gz", np.zeros((12, 12, 12)))

    summary = evaluate_folders(pred_dir, ref_dir)

    on_disk = json.loads((pred_dir / "summary.json").read_text())
    assert set(on_disk) >= {"metric_per_case", "mean", "foreground_mean"}
    assert set(on_disk["mean"]) == {"1", "2"}
    first = on_disk["metric_per_case"][0]
    assert first["prediction_file"].endswith("case_a.nii.gz")
    assert first["reference_file"].endswith("case_a.nii.gz")
    assert set(first["metrics"]["1"]) == {
        "Dice",
        "IoU",
        "TP",
        "FP",
        "FN",
        "TN",
        "n_pred",
        "n_ref",
        "HD95",
        "ASD",
    }
    # Label 1: Dice 0.75 then 0 (missed) -> mean 0.375; HD95 defined only in case_a.
    assert summary["mean"]["1"]["Dice"] == pytest.approx(0.375)
    assert summary["mean"]["1"]["HD95"] == pytest.approx(2.0)
    assert summary["case_counts"]["1"]["one_side_empty"] == 1
    # Label 2: perfect in case_a, NaN in case_b, which must not drag the mean.
    assert math.isnan(on_disk["metric_per_case"][1]["metrics"]["2"]["Dice"])
    assert summary["mean"]["2"]["Dice"] == 1.0
    assert summary["foreground_mean"]["Dice"] == pytest.approx((0.375 + 1.0) / 2)

    with open(pred_dir / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["case", "label", "Dice", "IoU", "HD95", "ASD", "n_pred", "n_ref"]
    assert [(r["case"], r["label"]) for r in rows] == [
        ("case_a", "1"),
        ("case_a", "2"),
        ("case_b", "1"),
        ("case_b", "2"),
    ]
    assert float(rows[0]["HD95"]) == pytest.approx(2.0)

    table = format_table(summary)
    assert "0.3750 ± 0.3750" in table and "foreground" in table and "undefined in 1 case" in table


def test_foreground_merges_reference_labels(tmp_path: Path) -> None:
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    pred_dir.mkdir()
    ref_dir.mkdir()
    ref = _cube()
    ref[3:7, 3:7, 5:7] = 4  # same cube, half labelled 4
    _save(ref_dir / "c1.nii", ref)
    _save(pred_dir / "c1.nii", _cube())
    out = tmp_path / "results" / "summary.json"
    summary = evaluate_folders(pred_dir, ref_dir, out=out, foreground=[1, 4])
    assert list(summary["mean"]) == ["1"]
    assert summary["mean"]["1"]["Dice"] == 1.0
    assert out.exists() and (tmp_path / "results" / "summary.csv").exists()


def test_mismatched_grid_names_both_files(tmp_path: Path) -> None:
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    pred_dir.mkdir()
    ref_dir.mkdir()
    _save(ref_dir / "c1.nii.gz", _cube())
    _save(pred_dir / "c1.nii.gz", _cube(), spacing=(1.0, 1.0, 1.0))
    with pytest.raises(UserError, match="affine") as err:
        evaluate_folders(pred_dir, ref_dir)
    assert str(pred_dir / "c1.nii.gz") in str(err.value) and str(ref_dir / "c1.nii.gz") in str(err.value)
    _save(pred_dir / "c1.nii.gz", _cube(shape=(12, 12, 10)))
    with pytest.raises(UserError, match="shape"):
        evaluate_folders(pred_dir, ref_dir)


def test_missing_or_extra_prediction_is_a_user_error(tmp_path: Path) -> None:
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    pred_dir.mkdir()
    ref_dir.mkdir()
    for case in ("c1", "c2"):
        _save(ref_dir / f"{case}.nii.gz", _cube())
    _save(pred_dir / "c1.nii.gz", _cube())
    with pytest.raises(UserError, match="no prediction.*c2"):
        evaluate_folders(pred_dir, ref_dir)
    _save(pred_dir / "c2.nii.gz", _cube())
    _save(pred_dir / "c3.nii.gz", _cube())
    with pytest.raises(UserError, match="no reference.*c3"):
        evaluate_folders(pred_dir, ref_dir)


def test_markdown_table_formats_rows() -> None:
    text = markdown_table(
        [{"method": "ce", "Dice": 0.81234}, {"method": "a|b", "Dice": float("nan")}],
        {"method": "Method", "Dice": "Dice"},
    )
    assert text.splitlines() == [
        "| Method | Dice |",
        "| --- | --- |",
        "| ce | 0.8123 |",
        "| a\\|b | nan |",
    ]
