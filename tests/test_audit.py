"""The label audit: the detectors on hand-made cases, the audit end to end on tiny phantoms (files, grids,
ranking, out-of-fold judging, untouched user masks), bad input, and the HTML report in headless Chromium."""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.util
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch

import svldrl.audit.audit as audit_module
from svldrl import config as C
from svldrl.audit.audit import audit, case_measures, cl_suspect_errors, correct_mask, suspect_errors
from svldrl.audit.cli import add_parser
from svldrl.data.dataset import load_case, load_dataset
from svldrl.data.io import write_nifti
from svldrl.errors import UserError
from svldrl.noise import run_noise
from svldrl.reporter import Reporter
from svldrl.runs import train
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]


def _sphere(n: int = 24, r: float = 7.0) -> np.ndarray:
    g = np.indices((n, n, n)) - n / 2
    return ((g**2).sum(0) < r**2).astype(np.uint8)


def _hand_case() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(clean, given, probs, expected errors): the given mask has a spurious cube and a cut-away cap."""
    clean = _sphere()
    given = clean.copy()
    given[2:6, 2:6, 2:6] = 1  # labelled foreground far from the organ (type 1)
    given[12:20, 12:20, 17:20] = 0  # a cap of the organ left out (type 2 where the organ was)
    expected = np.zeros_like(clean)
    expected[(given == 1) & (clean == 0)] = 1
    expected[(given == 0) & (clean == 1)] = 2
    # A model that agrees with the clean mask, confidently except in a one-voxel shell at the boundary.
    probs = np.where(clean == 1, 0.95, 0.05).astype(np.float32)
    shell = clean.astype(bool) ^ (_sphere(r=6.0) > 0)
    probs[shell] = 0.7
    return clean, given, probs, expected


def test_suspect_errors_flag_the_flipped_region_and_nothing_else() -> None:
    clean, given, probs, expected = _hand_case()
    assert expected.any() and (expected == 1).any() and (expected == 2).any()
    errors = suspect_errors(given, probs, 0.8)
    # The spurious cube and the removed cap are flagged (apart from the shell the model is unsure of).
    confident = ~(clean.astype(bool) ^ (_sphere(r=6.0) > 0))
    np.testing.assert_array_equal(errors[confident], expected[confident])
    assert not errors[expected == 0].any()
    assert errors.dtype == np.uint8
    # p = 0.7 in the shell is not confident at T = 0.8 but is at T = 0.6.
    assert not errors[~confident & (expected != 0)].any()
    assert (suspect_errors(given, probs, 0.6) == expected).all()
    np.testing.assert_array_equal(correct_mask(given, suspect_errors(given, probs, 0.6)), clean)
    with pytest.raises(UserError, match="threshold"):
        suspect_errors(given, probs, 0.5)


def test_confident_learning_detector_flags_inside_the_flipped_region() -> None:
    _, given, probs, expected = _hand_case()
    errors = cl_suspect_errors(given, probs)
    assert errors.any()
    assert not errors[expected == 0].any()
    assert set(np.unique(errors[errors > 0])) <= {1, 2}
    np.testing.assert_array_equal(errors[errors > 0], expected[errors > 0])


def test_case_measures_volume_direction_and_boundary() -> None:
    given = np.zeros((20, 20, 20), np.uint8)
    given[5:15, 5:15, 5:15] = 1  # 1000 voxels; its boundary: 10^3 - 8^3 = 488 voxels
    errors = np.zeros_like(given)
    errors[5:15, 5:15, 14] = 1  # the top face rejected: 100 voxels of type 1
    errors[0, 0, 0] = 2
    affine = np.diag([0.5, 0.5, 2.0, 1.0])  # 0.5 mm^3 a voxel
    m = case_measures(given, errors, affine)
    assert m["error_voxels"] == 101
    assert m["error_ml"] == pytest.approx(101 * 0.5 / 1000)
    assert m["over_ml"] == pytest.approx(0.05) and m["under_ml"] == pytest.approx(0.0005)
    assert m["direction"] == "over-segmentation"
    assert m["dice"] == pytest.approx(2 * 900 / (1000 + 901))
    # Boundary voxels within one voxel of the rejected face: the face and the ring below it (100 + 36).
    assert m["boundary_share"] == pytest.approx(136 / 488)
    assert case_measures(np.zeros_like(given), np.zeros_like(given), affine)["dice"] == 1.0


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ("labelsTr" in str(p) or "imagesTr" in str(p))
    }


@pytest.fixture(scope="module")
def audited(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """Two fold runs (tiny) on MT-Noise masks and an out-of-fold audit with both runs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads spin against other jobs on a shared 2-core machine
    base = tmp_path_factory.mktemp("audit")
    ds = base / phantom_root.name
    shutil.copytree(phantom_root, ds)
    run_noise(ds, "mt", 0.5, 0)
    runs = base / "runs"
    for fold in (0, 1):
        cfg = C.load_config(overrides=[*TINY, "data.num_folds=2", f"data.fold={fold}", "train.iterations=4"])
        train(ds, "noisy/mt0.5", runs / f"fold_{fold}", cfg)
    before = _digest(ds)
    out = base / "audit"
    result = audit(runs, ds, out, labels="noisy/mt0.5", top=2)
    yield SimpleNamespace(ds=ds, runs=runs, out=out, result=result, before=before)
    torch.set_num_threads(threads)


def test_audit_writes_maps_on_the_masks_grid_and_ranks_cases(audited: SimpleNamespace) -> None:
    ds, out = audited.ds, audited.out
    cases = load_dataset(ds, "noisy/mt0.5").train
    for case in cases:
        mask = nib.load(case.label)
        given = (np.asarray(mask.dataobj) != 0).astype(np.uint8)
        maps = {
            k: nib.load(out / k / f"{case.case_id}.nii.gz") for k in ("errors", "confidence", "corrected")
        }
        for img in maps.values():
            assert img.shape == mask.shape
            np.testing.assert_allclose(img.affine, mask.affine)
        errors = np.asarray(maps["errors"].dataobj)
        probs = np.asarray(maps["confidence"].dataobj)
        assert errors.dtype == np.uint8 and probs.dtype == np.float32
        assert set(np.unique(errors)) <= {0, 1, 2} and 0.0 <= probs.min() and probs.max() <= 1.0
        np.testing.assert_array_equal(np.asarray(maps["corrected"].dataobj), given ^ (errors > 0))
        np.testing.assert_array_equal(errors, suspect_errors(given, probs, 0.8))
    rows = list(csv.DictReader(open(out / "audit.csv")))
    assert sorted(r["case"] for r in rows) == sorted(c.case_id for c in cases)
    dices = [float(r["dice_given_vs_corrected"]) for r in rows]
    assert dices == sorted(dices)
    assert [int(r["rank"]) for r in rows] == list(range(1, len(rows) + 1))
    assert {r["judged_by"] for r in rows} == {"out_of_fold"}  # two folds: every case judged by the other run
    assert {r["direction"] for r in rows} <= {"over-segmentation", "under-segmentation", "mixed", "none"}
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert figures == sorted(f"{r['case']}.png" for r in rows[:2])
    html = (out / "audit.html").read_text()
    assert "<script" not in html and "http" not in html.replace("http-equiv", "")
    for name in figures:
        assert f'src="figures/{name}"' in html
    assert (out / "audit.md").read_text().count("![") == 2


def test_audit_leaves_the_users_masks_byte_identical(audited: SimpleNamespace) -> None:
    assert _digest(audited.ds) == audited.before
    assert not list(audited.ds.rglob("*.png"))


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="svldrl")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args, Reporter(quiet=args.quiet))
    except UserError:
        return 2


def test_one_run_judges_its_training_cases_in_fold(audited: SimpleNamespace, tmp_path: Path) -> None:
    out = tmp_path / "one"
    code = _cli(
        [
            "audit",
            str(audited.runs / "fold_0"),
            str(audited.ds),
            "--labels",
            "noisy/mt0.5",
            "--out",
            str(out),
            "--top",
            "0",
            "--quiet",
            "--detector",
            "cl",
        ]
    )
    assert code == 0
    rows = {r["case"]: r["judged_by"] for r in csv.DictReader(open(out / "audit.csv"))}
    fold0 = json.loads((audited.ds / "splits_final.json").read_text())[0]
    assert {c for c, how in rows.items() if how == "in_fold"} == set(fold0["train"])
    assert {c for c, how in rows.items() if how == "out_of_fold"} == set(fold0["val"])
    assert (
        "in-fold" in (out / "audit.md").read_text() and "under-detected" in (out / "audit.html").read_text()
    )


def test_audit_finds_a_hand_flipped_region_end_to_end(
    audited: SimpleNamespace, dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One case's mask gets a spurious cube; a model agreeing with the clean masks flags exactly that cube."""
    ds = load_dataset(dataset)
    hand = dataset / "labelsTr_noisy" / "hand"
    images, clean = [], {}
    for case in ds.train:
        img = nib.load(case.label)
        mask = np.asarray(img.dataobj).astype(np.uint8)
        clean[case.case_id] = mask.copy()
        if case.case_id == ds.train[2].case_id:
            mask[1:5, 1:5, 1:5] = 1  # a corner of air labelled as organ
        write_nifti(hand / f"{case.case_id}.nii.gz", mask, img.affine, img.header)
        cfg = C.load_config([audited.runs / "fold_0" / "config.yaml"])
        images.append((load_case(case, cfg.data, need_label=False)[0], case.case_id))

    def agrees_with_clean(method, net, cfg, image, batch=None, tta=False):  # noqa: ANN001 - the patched function's shape
        cid = next(c for im, c in images if np.array_equal(im, image))
        return np.where(clean[cid] > 0, 0.97, 0.02).astype(np.float32)

    monkeypatch.setattr(audit_module, "predict_probability", agrees_with_clean)
    result = audit(audited.runs, dataset, tmp_path / "out", labels="noisy/hand", top=1)
    bad = ds.train[2].case_id
    assert result.rows[0]["case"] == bad and result.rows[0]["direction"] == "over-segmentation"
    assert all(r["error_voxels"] == 0 for r in result.rows[1:])
    errors = np.asarray(nib.load(tmp_path / "out" / "errors" / f"{bad}.nii.gz").dataobj)
    expected = np.zeros_like(errors)
    expected[1:5, 1:5, 1:5] = 1
    expected[clean[bad] > 0] = 0
    np.testing.assert_array_equal(errors, expected)
    for cid, mask in clean.items():
        np.testing.assert_array_equal(
            np.asarray(nib.load(tmp_path / "out" / "corrected" / f"{cid}.nii.gz").dataobj), mask
        )


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"run": "missing_run"}, "run folder not found"),
        ({"labels": "noisy/never_made"}, "never_made"),
        ({"out": "DS/labelsTr/audit"}, "labelsTr"),
        ({"out": "DS/labelsTr_noisy/mt0.5/x"}, "labelsTr_noisy"),
        ({"out": "DS"}, "dataset folder"),
        ({"threshold": 0.3}, "--threshold"),
        ({"detector": "magic"}, "--detector"),
    ],
)
def test_bad_input_is_a_one_line_user_error(
    audited: SimpleNamespace, tmp_path: Path, change: dict, needle: str
) -> None:
    kw = {"run": audited.runs, "dataset": audited.ds, "out": tmp_path / "out", "labels": "noisy/mt0.5"}
    kw.update(change)
    if isinstance(kw["out"], str):
        kw["out"] = Path(kw["out"].replace("DS", str(audited.ds)))
    if kw["run"] == "missing_run":
        kw["run"] = tmp_path / "missing_run"
    with pytest.raises(UserError, match=needle) as info:
        audit(**kw)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists() and not (audited.ds / "labelsTr" / "audit").exists()


def test_html_report_renders_in_headless_chromium(audited: SimpleNamespace, tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium not installed (apt-get install chromium) - HTML rendering not checked")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1200,900",
            (audited.out / "audit.html").resolve().as_uri(),
        ],
        check=False,
        capture_output=True,
        timeout=120,
    )
    assert shot.is_file() and shot.stat().st_size > 0
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (900, 1200)
    # Not blank: text and table lines make many distinct colours and a clear spread of brightness.
    assert pixels.std() > 0.05
    assert len(np.unique(pixels.reshape(-1, 3).round(2), axis=0)) > 20


def test_benchmark_auroc_is_mann_whitney() -> None:
    spec = importlib.util.spec_from_file_location("audit_bench", ROOT / "benchmarks" / "audit_bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.auroc([0.9, 0.8, 0.2, 0.1], [True, True, False, False]) == 1.0
    assert bench.auroc([0.1, 0.2, 0.8, 0.9], [True, True, False, False]) == 0.0
    assert bench.auroc([0.5, 0.5, 0.5], [True, False, True]) == 0.5  # ties count one half
    # 3 positives, 2 negatives: 5 of the 6 pairs ordered correctly.
    assert bench.auroc([0.9, 0.6, 0.3, 0.4, 0.1], [True, True, True, False, False]) == pytest.approx(5 / 6)
    assert np.isnan(bench.auroc([0.1, 0.2], [True, True]))


def test_band_keeps_boundary_errors_and_drops_remote_model_mistakes() -> None:
    from svldrl.audit.audit import restrict_to_band, suspect_errors

    given = np.zeros((24, 24, 24), np.uint8)
    given[6:14, 6:14, 6:14] = 1
    probs = np.zeros(given.shape, np.float32)
    probs[6:15, 6:15, 6:15] = 0.95  # the true organ is one voxel wider: a boundary error
    probs[20:23, 20:23, 20:23] = 0.95  # a look-alike far away: the model's mistake, not a label error
    errors = suspect_errors(given, probs, 0.8)
    kept = restrict_to_band(errors, given, 3)
    assert kept[14, 10, 10] == 2 and kept[21, 21, 21] == 0
    assert (restrict_to_band(errors, given, 0) == errors).all()


def test_tta_is_the_mean_over_the_eight_mirrorings() -> None:
    """Mirrored views are mapped back before averaging (a network that is not mirror-equivariant)."""
    import itertools

    from svldrl.engine.trainer import Trainer

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv3d(1, 2, 3, padding=1)

        def forward(self, x: torch.Tensor, heads=("seg",)) -> dict[str, torch.Tensor]:  # noqa: ANN001
            return {"seg": self.conv(x)}

    cfg = C.load_config(overrides=TINY)
    image = np.random.default_rng(0).random((32, 40, 36), dtype=np.float32)
    net = Net()
    plain = audit_module.predict_probability(Trainer, net, cfg, image)
    views = []
    for axes in (a for k in range(4) for a in itertools.combinations((0, 1, 2), k)):
        flipped = np.flip(image, axes) if axes else image
        p = audit_module.predict_probability(Trainer, net, cfg, np.ascontiguousarray(flipped))
        views.append(np.flip(p, axes) if axes else p)
    assert len(views) == 8 and not np.allclose(views[0], views[7], atol=1e-3)
    tta = audit_module.predict_probability(Trainer, net, cfg, image, tta=True)
    np.testing.assert_allclose(tta, np.mean(views, axis=0), atol=1e-5)
    np.testing.assert_array_equal(plain, views[0])
