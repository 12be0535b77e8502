"""Organ-absent training cases: a multi-organ set binarised for one organ has cases without it."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from svldrl import config as C
from svldrl.cli import main
from svldrl.errors import UserError
from svldrl.methods import METHODS
from svldrl.noise import run_noise
from svldrl.runs import train
from tests.conftest import TINY


def _empty(ds: Path, case: str) -> None:
    path = ds / "labelsTr" / f"{case}.nii.gz"
    img = nib.load(str(path))
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine), str(path))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_with_organ_absent_cases(method: str, dataset: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    for case in ("phantom_000", "phantom_003"):
        _empty(dataset, case)
    extra = ["rl.warmup=0.0", "rl.transition=0.3"] if method == "svldrl" else []
    cfg = C.load_config(overrides=[*TINY, "train.iterations=4", f"method={method}", *extra])
    run = train(dataset, "clean", tmp_path / "run", cfg)
    assert (run / "checkpoint_final.pt").is_file()
    with open(run / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and all(math.isfinite(float(r["train_loss"])) for r in rows), rows


def test_noise_keeps_an_empty_mask_empty_and_the_audit_judges_it(
    dataset: Path, tmp_path: Path, capsys
) -> None:
    _empty(dataset, "phantom_001")
    out = run_noise(dataset, "mt", 1.0, 0, params={"mode": "dilate"})
    assert not np.asarray(nib.load(str(out / "phantom_001.nii.gz")).dataobj).any()
    report = json.loads((out / "noise_report.json").read_text())
    assert report["cases"]["phantom_001"]["corrupted"] is False
    torch.set_num_threads(1)
    run = train(
        dataset,
        "noisy/mt_dilate1.0",
        tmp_path / "run",
        C.load_config(overrides=[*TINY, "train.iterations=2"]),
    )
    code = main(
        [
            "audit",
            str(run),
            str(dataset),
            "--labels",
            "noisy/mt_dilate1.0",
            "--out",
            str(tmp_path / "a"),
            "--disable-tta",
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert "phantom_001" in (tmp_path / "a" / "audit.csv").read_text()


def test_a_wholly_empty_training_set_is_refused(dataset: Path, tmp_path: Path) -> None:
    for i in range(6):
        _empty(dataset, f"phantom_{i:03d}")
    with pytest.raises(UserError, match="every training mask of fold 0 is empty"):
        train(dataset, "clean", tmp_path / "run", C.load_config(overrides=[*TINY, "train.iterations=2"]))
    assert not (tmp_path / "run").exists()
