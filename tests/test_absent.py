"""Organ-absent training cases: a multi-organ set binarised for one organ has cases without it."""

from __future__ import annotations

import csv
import json
import math
import shutil
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


# ---------------------------------------------------------------- --foreground against the labels the masks hold

TRAIN_SETS = sum((["--set", s] for s in [*TINY, "train.threads=1"]), [])


def _relabel(folder: Path, case: str, mapping: dict[int, int], extra: int | None = None) -> None:
    """Rewrite a mask's label values (``mapping``); ``extra``: also mark a small block far from the organ with
    this value (another structure of a multi-organ mask)."""
    path = folder / f"{case}.nii.gz"
    img = nib.load(str(path))
    old = np.asarray(img.dataobj)
    new = old.copy()
    for a, b in mapping.items():
        new[old == a] = b
    if extra is not None:
        new[:2, :2, :2] = extra
    nib.save(nib.Nifti1Image(new.astype(np.uint8), img.affine), str(path))


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("svldrl: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_foreground_missing_from_most_masks_is_refused_by_train_noise_and_evaluate(
    dataset: Path, tmp_path: Path, capsys
) -> None:
    """One mask marks the structure with 255, the five others with 1: --foreground 255 would train (corrupt,
    score) five all-background masks with exit code 0. Each command refuses before writing anything."""
    _relabel(dataset / "labelsTr", "phantom_002", {1: 255})
    labels_before = _files(dataset / "labelsTr")
    out = tmp_path / "run"
    code = main(["train", str(dataset), "--out", str(out), "--foreground", "255", *TRAIN_SETS, "--quiet"])
    line = _one_error_line(capsys)
    assert code == 2
    assert str(dataset) in line and "--foreground 255: 5 of the 6 training masks" in line, line
    assert "(they hold: 1;" in line and "phantom_000" in line and "--foreground 1,255" in line, line
    assert not out.exists()

    code = main(["noise", str(dataset), "--protocol", "mt", "--foreground", "255", "--quiet"])
    line = _one_error_line(capsys)
    assert code == 2 and "5 of the 6 training masks" in line and "(they hold: 1;" in line, line
    assert not (dataset / "labelsTr_noisy").exists()
    assert _files(dataset / "labelsTr") == labels_before

    ref = tmp_path / "ref"
    ref.mkdir()
    for case in ("phantom_000", "phantom_001", "phantom_002"):
        shutil.copy(dataset / "labelsTr" / f"{case}.nii.gz", ref)
    code = main(["evaluate", str(ref), str(ref), "--foreground", "255", "--quiet"])
    line = _one_error_line(capsys)
    assert code == 2 and str(ref) in line and "2 of the 3 references" in line and "(they hold: 1;" in line, (
        line
    )
    assert sorted(p.name for p in ref.iterdir()) == [f"phantom_00{i}.nii.gz" for i in range(3)]
    # the labels the masks do use are accepted
    assert main(["evaluate", str(ref), str(ref), "--foreground", "1,255", "--quiet"]) == 0
    assert (ref / "summary.json").is_file()


def test_one_organ_of_a_multi_organ_set_trains_its_absent_cases_as_negatives(
    dataset: Path, tmp_path: Path, capsys
) -> None:
    """A multi-organ set binarised for organ 3, absent (other organs only) from two of six cases: those are
    negatives, trained on with a warning that --quiet keeps; progress stays hidden."""
    for i in range(6):
        case = f"phantom_{i:03d}"
        if i < 4:
            _relabel(dataset / "labelsTr", case, {1: 3}, extra=1)  # organ 3 and another organ, 1
        else:
            _relabel(dataset / "labelsTr", case, {1: 2}, extra=1)  # organ 3 absent: organs 2 and 1
    run = tmp_path / "run"
    argv = ["train", str(dataset), "--out", str(run), "--foreground", "3", "--fold", "all", *TRAIN_SETS]
    code = main([*argv, "--iterations", "2", "--quiet"])
    err = capsys.readouterr().err
    assert code == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: 2 training case(s) without foreground"), err
    assert "phantom_004, phantom_005" in lines[0] and "hold other labels only: 1, 2" in lines[0], lines[0]
    assert (run / "checkpoint_final.pt").is_file()
    assert "epoch" not in err  # progress hidden
    # without --quiet the progress is there too
    assert main([*argv, "--iterations", "4", "--resume"]) == 0
    err = capsys.readouterr().err
    assert "warning: 2 training case(s)" in err and "epoch 2/2" in err, err
    # noise and evaluate treat them the same: kept, with a warning
    noise = ["noise", str(dataset), *"--protocol mt --mode dilate --name n --foreground 3".split()]
    assert main([*noise, "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.startswith(
        "warning: 2 training mask(s) hold other labels (1, 2) but none of --foreground 3"
    ), err
    assert len(err.strip().splitlines()) == 1, err
    noisy = dataset / "labelsTr_noisy" / "n"
    assert not np.asarray(nib.load(str(noisy / "phantom_005.nii.gz")).dataobj).any()
    ref = tmp_path / "ref"
    ref.mkdir()
    for i in (0, 1, 2, 4):  # organ 3 absent from phantom_004
        shutil.copy(dataset / "labelsTr" / f"phantom_00{i}.nii.gz", ref)
    assert main(["evaluate", str(ref), str(ref), "--foreground", "3", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: 1 reference(s) hold other labels (1, 2) but none of --foreground 3"), err
    assert len(err.strip().splitlines()) == 1 and "phantom_004" in err, err


def test_foreground_check_rule() -> None:
    from svldrl.data.normalize import ForegroundCheck

    def tally(masks: list[list[int]]) -> ForegroundCheck:
        check = ForegroundCheck([3])
        for i, held in enumerate(masks):
            check.add(f"c{i}", np.array(held or [0]))
        return check

    # half of the masks with labels lack label 3: negatives; empty masks count on neither side
    assert tally([[3, 1], [3], [1], [1, 2], [], []]).check("masks", "x") == ["c2", "c3"]
    with pytest.raises(
        UserError, match=r"--foreground 3: 3 of the 5 masks with labels .*they hold: 1, 2; c2, c3, c4"
    ):
        tally([[3, 1], [3], [1], [1, 2], [2], []]).check("masks", "x")
    assert ForegroundCheck(None).check("masks", "x") == []
