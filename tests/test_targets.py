"""svldrl targets: the masks a configuration starts training from, written before anything trains; presets."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from svldrl import config as C
from svldrl.cli import main
from svldrl.data.dataset import load_case, load_dataset
from svldrl.rules import band_correct, overlap
from svldrl.runs import run_noise

TINY = ["--set", "train.patch=32", "--set", "nets.features=[4,8,16,32]"]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_targets_writes_the_corrected_masks_with_the_inputs_affine_and_a_report(
    dataset: Path, tmp_path: Path
) -> None:
    """The band update's targets, one NIfTI per case named as in labelsTr, on the input mask's grid, and a
    report of the voxels changed and the label Dice against the clean masks; the dataset is only read."""
    run_noise(dataset, "mt", 1.0, 0, name="dil", params={"mode": "dilate"})
    before = _files(dataset)
    out = tmp_path / "targets"
    band = ["--set", "rl.band_width=1", "--set", "rl.band_guard=false"]
    args = ["targets", str(dataset), "--labels", "noisy/dil", "--method", "supervised_band", *band, *TINY]
    assert main([*args, "--out", str(out), "--quiet"]) == 0
    assert _files(dataset) == before
    report = json.loads((out / "targets.json").read_text())
    ds = load_dataset(dataset, "noisy/dil")
    assert sorted(p.name for p in out.glob("*.nii.gz")) == sorted(f"{c.case_id}.nii.gz" for c in ds.train)
    dcfg = C.load_config().data
    rows = {r["case"]: r for r in report["cases"]}
    for case in ds.train:
        image, given, vol = load_case(case, dcfg)
        written = nib.load(out / f"{case.case_id}.nii.gz")
        np.testing.assert_allclose(written.affine, nib.load(case.label).affine)
        expected = band_correct(image, given, 1)
        np.testing.assert_array_equal(np.asarray(written.dataobj) > 0, expected)
        row = rows[case.case_id]
        assert row["voxels_changed"] == int(np.count_nonzero(expected != (given > 0)))
        clean = load_case(load_dataset(dataset).train[ds.train.index(case)], dcfg)[1]
        assert row["label_dice_target"] == pytest.approx(overlap(expected, clean)[0])
        assert row["band"] == "corrected"
    assert report["n_changed"] > 0
    assert report["mean_label_dice_target"] == pytest.approx(
        np.mean([r["label_dice_target"] for r in rows.values()])
    )
    assert "label Dice against the clean masks" in (out / "targets.md").read_text()
    # a rerun into its own folder replaces its own files
    assert main([*args, "--out", str(out), "--quiet"]) == 0


def test_targets_of_a_configuration_without_correction_are_the_given_masks(
    dataset: Path, tmp_path: Path
) -> None:
    """The paper's method corrects nothing before training: the given masks come back unchanged."""
    out = tmp_path / "paper"
    assert main(["targets", str(dataset), "--preset", "paper", *TINY, "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "targets.json").read_text())
    assert report["method"] == "svldrl" and report["config"]["rl"]["reward"] == "paper"
    assert report["n_changed"] == 0 and report["mean_label_dice_target"] == 1.0
    for case in load_dataset(dataset).train:
        given = np.asarray(nib.load(case.label).dataobj) > 0
        np.testing.assert_array_equal(np.asarray(nib.load(out / f"{case.case_id}.nii.gz").dataobj) > 0, given)


def test_the_recommended_preset_keeps_masks_its_guard_cannot_vouch_for(dataset: Path, tmp_path: Path) -> None:
    """The standard phantoms' look-alike touches the organ: the recommended preset leaves their clean masks
    as they are (the unguarded band moves them) and says why per case."""
    out = tmp_path / "rec"
    assert (
        main(["targets", str(dataset), "--preset", "recommended", *TINY, "--out", str(out), "--quiet"]) == 0
    )
    report = json.loads((out / "targets.json").read_text())
    assert report["mean_label_dice_target"] == 1.0 and report["n_changed"] == 0
    assert all(r["band"].startswith("kept as given") for r in report["cases"])
    unguarded = tmp_path / "unguarded"
    args = ["targets", str(dataset), "--preset", "recommended", "--set", "rl.band_guard=false", *TINY]
    assert main([*args, "--out", str(unguarded), "--quiet"]) == 0
    assert json.loads((unguarded / "targets.json").read_text())["mean_label_dice_target"] < 0.99


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--preset", "nonsense"], "unknown preset 'nonsense'"),
        (["--labels", "noisy/missing"], "missing"),
        (["--out-inside"], "inside the dataset"),
        (["--out-labels"], "labelsTr"),
    ],
)
def test_targets_refuses_bad_input_in_one_line_and_writes_nothing(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str
) -> None:
    before = _files(dataset)
    out = tmp_path / "out"
    if extra == ["--out-inside"]:
        extra, out = [], dataset / "targets"
    elif extra == ["--out-labels"]:
        extra, out = [], dataset / "labelsTr"
    assert main(["targets", str(dataset), *extra, *TINY, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]
    assert _files(dataset) == before
    assert not (tmp_path / "out").exists()


def test_presets_ship_with_the_package_and_say_where_they_come_from() -> None:
    """--preset works for train and benchmark rows alike; each preset's header says which parts are the paper's
    and which are ours, and on which data it was chosen."""
    from svldrl.bench.spec import load_benchmark
    from svldrl.cli import build_train_config, make_parser

    assert C.presets() == ["paper", "recommended"]
    for name in C.presets():
        text = C.preset_path(name).read_text()
        assert "The paper's" in text and "Chosen on" in text and ("Ours" in text or "Our decisions" in text)
    rec = C.load_config([C.preset_path("recommended")])
    assert rec.method == "supervised_band" and rec.rl.band_guard
    a = make_parser().parse_args(
        ["train", "DS", "--out", "RUN", "--preset", "recommended", "--set", "seed=3"]
    )
    cfg = build_train_config(a)
    assert cfg.seed == 3 and {k: v for k, v in C.flatten(cfg).items() if k != "seed"} == {
        k: v for k, v in C.flatten(rec).items() if k != "seed"
    }
    bench = load_benchmark(Path(__file__).parents[1] / "benchmarks" / "real_anatomy.yaml")
    row = bench.method("recommended")
    assert row.method == "supervised_band"
    assert C.load_config(overrides=[f"method={row.method}", *row.overrides]) == rec
