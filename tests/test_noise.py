"""Noise protocols (MT-Noise, Markov, SP-guided), the noise report and run_noise on a tiny dataset."""

from __future__ import annotations

import functools
import io
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from svldrl.errors import UserError
from svldrl.noise import PROTOCOLS, markov_noise, mt_noise, run_noise, spg_noise
from svldrl.noise.report import build_report, mask_dice, voxel_error_rate
from svldrl.reporter import Reporter, SvldrlWarning


def blob(shape=(24, 24, 24), center=None, radii=(6, 5, 4)) -> np.ndarray:
    """A binary ellipsoid."""
    center = center or tuple(s // 2 for s in shape)
    grid = np.indices(shape, dtype=np.float64)
    d = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii, strict=True))
    return (d <= 1.0).astype(np.uint8)


# ---------------------------------------------------------------- report


def test_report_numbers_match_a_hand_counted_case():
    clean = np.zeros((10, 10, 10), np.uint8)
    clean[3:7, 3:7, 3:7] = 1  # 4^3 = 64 voxels
    noisy, params = mt_noise(clean, np.random.default_rng(0), mode="dilate", r_min=3, r_max=3)
    # A 3-cube dilation grows the 4-cube by one voxel on each side: 6^3 = 216 voxels, 152 new.
    assert int(noisy.sum()) == 216
    assert params["r"] == 3 and params["sides"] == [3, 3, 3] and params["r_mm"] == pytest.approx(1.875)
    assert mask_dice(clean, noisy) == pytest.approx(2 * 64 / (64 + 216))
    assert params["dice"] == pytest.approx(2 * 64 / (64 + 216))
    assert voxel_error_rate(clean, noisy) == pytest.approx(152 / 1000)

    per_case = {
        "b": {"dice": mask_dice(clean, clean), "voxel_error_rate": 0.0, "corrupted": False},
        "a": {"dice": mask_dice(clean, noisy), "voxel_error_rate": 0.152, "corrupted": True, "noise": params},
    }
    rep = build_report("mt", {"ratio": 0.5}, per_case)
    assert list(rep["cases"]) == ["a", "b"]
    assert rep["n_cases"] == 2 and rep["n_corrupted"] == 1
    assert rep["mean_dice"] == pytest.approx((1.0 + 128 / 280) / 2)
    assert rep["mean_voxel_error_rate"] == pytest.approx(0.076)
    assert rep["mean_dice_corrupted"] == pytest.approx(128 / 280)
    assert rep["mean_voxel_error_rate_corrupted"] == pytest.approx(0.152)
    assert rep["cases"]["a"]["noise"]["operation"] == "dilate"
    json.dumps(rep)  # JSON-ready
    empty = build_report("mt", {}, {"b": per_case["b"]})
    assert empty["mean_dice_corrupted"] is None


def test_dice_of_two_empty_masks_is_one():
    z = np.zeros((4, 4, 4), np.uint8)
    assert mask_dice(z, z) == 1.0
    assert voxel_error_rate(z, z) == 0.0


# ---------------------------------------------------------------- MT-Noise


def test_mt_dilate_only_grows_and_erode_only_shrinks():
    clean = blob()
    for seed in range(4):
        grown, p = mt_noise(clean, np.random.default_rng(seed), mode="dilate", r_min=3, r_max=7)
        assert p["operation"] == "dilate"
        assert np.all(grown >= clean) and grown.sum() > clean.sum()
        shrunk, p = mt_noise(clean, np.random.default_rng(seed), mode="erode", r_min=3, r_max=7)
        assert p["operation"] == "erode"
        assert np.all(shrunk <= clean) and 0 < shrunk.sum() < clean.sum()
        assert grown.dtype == np.uint8 and shrunk.dtype == np.uint8


def test_mt_both_draws_both_operations_and_records_r():
    ops = set()
    for seed in range(20):
        _, p = mt_noise(blob(), np.random.default_rng(seed))
        ops.add(p["operation"])
        assert 3 <= p["r"] <= 15
    assert ops == {"dilate", "erode"}


def test_mt_sizes_are_in_millimetres():
    clean = blob((32, 32, 32), radii=(10, 9, 8))
    # r = 8 recipe voxels at 0.625 mm = 5 mm: 4 voxels of 1.25 mm in plane, 2 of 2.5 mm across slices.
    _, p = mt_noise(
        clean, np.random.default_rng(0), mode="dilate", r_min=8, r_max=8, spacing=(1.25, 1.25, 2.5)
    )
    assert p["r"] == 8 and p["r_mm"] == pytest.approx(5.0)
    assert p["sides"] == [4, 4, 2] and p["sides_mm"] == pytest.approx([5.0, 5.0, 5.0])
    # On the recipe's own grid the side is r voxels.
    _, p = mt_noise(clean, np.random.default_rng(0), mode="dilate", r_min=8, r_max=8, spacing=(0.625,) * 3)
    assert p["sides"] == [8, 8, 8]


def test_mt_draws_only_sides_that_change_the_mask():
    clean = blob((32, 32, 32), radii=(10, 9, 8))
    for seed in range(30):  # 2 mm voxels: r = 3..4 (1.9-2.5 mm) would be a 1-voxel element, i.e. nothing
        noisy, p = mt_noise(clean, np.random.default_rng(seed), spacing=(2.0, 2.0, 2.0))
        assert max(p["sides"]) >= 2 and p["r"] >= 5 and not np.array_equal(noisy, clean)
    # A grid too coarse for every recipe size still gets the smallest change, on its finest axis.
    noisy, p = mt_noise(clean, np.random.default_rng(0), mode="dilate", spacing=(30.0, 20.0, 40.0))
    assert p["sides"] == [1, 2, 1] and not np.array_equal(noisy, clean)


def test_mt_erosion_never_empties_a_thin_mask():
    thin = np.zeros((16, 16, 16), np.uint8)
    thin[4:12, 4:12, 7:9] = 1  # a 2-voxel thick plate: any cube side >= 3 erodes it away
    noisy, p = mt_noise(thin, np.random.default_rng(0), mode="erode", r_min=9, r_max=9)
    assert noisy.sum() > 0
    assert p["side_reduced_to"] == p["sides"] and max(p["sides"]) < 9


# ---------------------------------------------------------------- Markov


def test_markov_expanding_chain_grows_and_dice_falls_with_T():
    clean = blob()
    dices = []
    for T in (5, 20, 60):
        noisy, p = markov_noise(clean, np.random.default_rng(1), T=T, theta1=1.0, theta2=0.2)
        assert np.all(noisy >= clean) and noisy.sum() > clean.sum()
        assert p["n_expand"] == T and p["n_shrink"] == 0
        assert p["dice"] == pytest.approx(mask_dice(clean, noisy))
        dices.append(p["dice"])
    assert dices[0] > dices[1] > dices[2]


def test_markov_shrinking_chain_never_empties():
    tiny = np.zeros((8, 8, 8), np.uint8)
    tiny[3:5, 3:5, 3:5] = 1
    noisy, p = markov_noise(tiny, np.random.default_rng(0), T=50, theta1=0.0, theta2=1.0)
    assert 0 < noisy.sum() <= tiny.sum()
    assert p["steps_undone"] > 0


def test_markov_theta3_adds_interior_flips():
    clean = blob()
    base, _ = markov_noise(clean, np.random.default_rng(3), T=3, theta2=0.0)
    assert np.array_equal(base, clean)  # no boundary flips, no random flips: unchanged
    salted, _ = markov_noise(clean, np.random.default_rng(3), T=3, theta2=0.0, theta3=0.01)
    assert not np.array_equal(salted, clean)


# ---------------------------------------------------------------- SP-guided


@pytest.mark.parametrize("beta", [0.2, 0.5, 0.8])
def test_spg_reaches_beta_with_each_operation(beta):
    clean = blob()
    ops = set()
    for seed in range(15):
        noisy, p = spg_noise(clean, np.random.default_rng(seed), beta=beta)
        changed = np.logical_xor(clean, noisy).sum() / clean.sum()
        assert p["reached"] and changed >= beta
        assert p["changed_fraction"] == pytest.approx(changed)
        assert noisy.sum() > 0
        ops.add(p["operation"])
    assert ops == {"dilate", "erode", "affine"}


def test_spg_falls_back_when_the_drawn_operation_cannot_reach_beta():
    full = np.ones((12, 12, 12), np.uint8)  # cannot be dilated or eroded, only moved
    for seed in range(3):
        noisy, p = spg_noise(full, np.random.default_rng(seed), beta=0.3)
        assert p["operation"] == "affine" and p["reached"]
        assert noisy.sum() > 0
        assert np.logical_xor(full, noisy).sum() / full.sum() >= 0.3


# ---------------------------------------------------------------- all protocols


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_protocols_are_deterministic_and_seed_dependent(protocol):
    fn = PROTOCOLS[protocol]
    clean = blob()
    a, pa = fn(clean, np.random.default_rng(7))
    b, pb = fn(clean, np.random.default_rng(7))
    assert np.array_equal(a, b) and pa == pb
    others = [fn(clean, np.random.default_rng(s))[0] for s in range(8, 14)]
    assert any(not np.array_equal(a, o) for o in others)


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_protocols_never_return_an_empty_mask(protocol):
    one = np.zeros((10, 10, 10), np.uint8)
    one[5, 5, 5] = 1
    harsh = {
        "mt": {"mode": "erode"},
        "markov": {"theta1": 0.0, "theta2": 1.0},
        "spg": {"beta": 1.0},
    }
    for seed in range(5):
        noisy, _ = PROTOCOLS[protocol](one, np.random.default_rng(seed), **harsh[protocol])
        assert noisy.sum() > 0 and noisy.dtype == np.uint8


# ---------------------------------------------------------------- run_noise on a tiny dataset


def make_dataset(root: Path, n: int = 4, shape=(20, 20, 20)) -> Path:
    """A tiny nnU-Net-layout dataset of ellipsoids."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(123)
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    affine[:3, 3] = [-10.0, 5.0, 3.0]
    for i in range(n):
        center = tuple(int(c) for c in rng.integers(8, 12, size=3))
        label = blob(shape, center=center, radii=(5, 4, 4))
        image = (rng.normal(100, 10, shape) + 200 * label).astype(np.float32)
        nib.save(nib.Nifti1Image(image, affine), str(root / "imagesTr" / f"case_{i:03d}_0000.nii.gz"))
        nib.save(nib.Nifti1Image(label, affine), str(root / "labelsTr" / f"case_{i:03d}.nii.gz"))
    meta = {
        "channel_names": {"0": "MR"},
        "labels": {"background": 0, "organ": 1},
        "numTraining": n,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, message: str) -> None:
        self.lines.append(message)


def test_run_noise_writes_a_reported_noisy_set_and_leaves_labels_untouched(tmp_path):
    ds = make_dataset(tmp_path / "ds")
    before = folder_bytes(ds / "labelsTr")
    rep = Lines()
    out = run_noise(ds, "mt", 0.5, seed=0, params={"r_min": 3, "r_max": 5}, reporter=rep)
    assert out == ds / "labelsTr_noisy" / "mt0.5"
    assert folder_bytes(ds / "labelsTr") == before
    assert sorted(p.name for p in out.iterdir()) == [f"case_{i:03d}.nii.gz" for i in range(4)] + [
        "noise_report.json"
    ]
    assert not (ds / "labelsTr_noisy" / "mt0.5.partial").exists()
    report = json.loads((out / "noise_report.json").read_text())
    assert report["protocol"] == "mt" and report["n_cases"] == 4 and report["n_corrupted"] == 2
    assert report["args"]["seed"] == 0 and report["args"]["params"]["r_max"] == 5
    for case_id, entry in report["cases"].items():
        clean_img = nib.load(str(ds / "labelsTr" / f"{case_id}.nii.gz"))
        noisy_img = nib.load(str(out / f"{case_id}.nii.gz"))
        clean, noisy = np.asarray(clean_img.dataobj), np.asarray(noisy_img.dataobj)
        assert noisy.dtype == np.uint8
        assert np.allclose(noisy_img.affine, clean_img.affine)
        assert entry["dice"] == pytest.approx(mask_dice(clean, noisy))
        assert entry["voxel_error_rate"] == pytest.approx(voxel_error_rate(clean, noisy))
        if entry["corrupted"]:
            assert entry["noise"]["operation"] in ("dilate", "erode") and entry["dice"] < 1.0
        else:
            assert np.array_equal(noisy, clean) and entry["noise"]["operation"] == "none"
    assert report["mean_dice_corrupted"] < report["mean_dice"] < 1.0
    assert any("mean label Dice" in line for line in rep.lines)


def test_run_noise_is_byte_identical_for_the_same_seed(tmp_path):
    a = make_dataset(tmp_path / "a")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    out_a = run_noise(a, "spg", 0.5, seed=3)
    out_b = run_noise(b, "spg", 0.5, seed=3)
    assert out_a.name == "spg0.5"
    assert folder_bytes(out_a) == folder_bytes(out_b)
    out_c = run_noise(b, "spg", 0.5, seed=4, name="spg_seed4")
    assert folder_bytes(out_c) != folder_bytes(out_a)


def test_run_noise_returns_an_existing_identical_set_and_refuses_a_different_one(tmp_path):
    ds = make_dataset(tmp_path / "ds", n=2)
    out = run_noise(ds, "markov", 1.0, seed=0, params={"T": 5})
    assert out.name == "markov1.0"
    stamp = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    rep = Lines()
    assert run_noise(ds, "markov", 1.0, seed=0, params={"T": 5}, reporter=rep) == out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamp
    assert any("already exists" in line for line in rep.lines)
    with pytest.raises(UserError, match="choose another --name"):
        run_noise(ds, "markov", 1.0, seed=1, params={"T": 5})


def test_run_noise_resumes_a_killed_run(tmp_path, monkeypatch):
    ref = make_dataset(tmp_path / "ref", n=4)
    ds = tmp_path / "ds"
    shutil.copytree(ref, ds)
    expected = folder_bytes(run_noise(ref, "mt", 1.0, seed=5, params={"mode": "dilate"}))

    import svldrl.noise.run as run_mod

    real_write = run_mod.write_nifti
    calls = {"n": 0}

    def dying_write(*args, **kwargs):
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed while writing the third case
        calls["n"] += 1
        return real_write(*args, **kwargs)

    monkeypatch.setattr(run_mod, "write_nifti", dying_write)
    with pytest.raises(KeyboardInterrupt):
        run_noise(ds, "mt", 1.0, seed=5, params={"mode": "dilate"})
    partial = ds / "labelsTr_noisy" / "mt_dilate1.0.partial"
    assert partial.is_dir() and not (ds / "labelsTr_noisy" / "mt_dilate1.0").exists()
    assert len(list(partial.glob("*.nii.gz"))) == 2

    # A resume with other settings must not mix two noisy sets.
    monkeypatch.setattr(run_mod, "write_nifti", real_write)
    with pytest.raises(UserError, match="other settings"):
        run_noise(ds, "mt", 1.0, seed=6, params={"mode": "dilate"}, name="mt_dilate1.0")

    rep = Lines()
    out = run_noise(ds, "mt", 1.0, seed=5, params={"mode": "dilate"}, reporter=rep)
    assert sum("done earlier" in line for line in rep.lines) == 2
    assert not partial.exists()
    assert folder_bytes(out) == expected


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"protocol": "gaussian", "ratio": 0.5}, "unknown noise protocol"),
        ({"protocol": "mt", "ratio": 1.5}, "ratio"),
        ({"protocol": "mt", "ratio": 0.5, "params": {"radius": 3}}, "unknown parameter"),
        ({"protocol": "mt", "ratio": 0.5, "params": {"r_min": 9, "r_max": 3}}, "r_min"),
        ({"protocol": "markov", "ratio": 0.5, "params": {"theta1": 2}}, "theta1"),
        ({"protocol": "spg", "ratio": 0.5, "params": {"beta": 0}}, "beta"),
        ({"protocol": "mt", "ratio": 0.5, "name": "../labelsTr"}, "invalid noisy-set name"),
    ],
)
def test_run_noise_rejects_bad_settings(tmp_path, kwargs, message):
    ds = make_dataset(tmp_path / "ds", n=1, shape=(8, 8, 8))
    with pytest.raises(UserError, match=message):
        run_noise(ds, seed=0, **kwargs)
    assert not (ds / "labelsTr_noisy").exists()


def test_run_noise_restarts_a_leftover_that_finished_no_case(tmp_path):
    ds = make_dataset(tmp_path / "ds", n=2)
    path = ds / "labelsTr" / "case_000.nii.gz"
    img = nib.load(str(path))
    labels = np.asarray(img.dataobj).copy()
    labels[:2, :2, :2] = 2  # a second label: not a binary mask any more
    nib.save(nib.Nifti1Image(labels, img.affine), str(path))
    with pytest.raises(UserError, match="--foreground"):
        run_noise(ds, "mt", 1.0, seed=0)
    out = run_noise(ds, "mt", 1.0, seed=0, foreground=[1, 2])
    report = json.loads((out / "noise_report.json").read_text())
    assert report["args"]["foreground"] == [1, 2]
    assert report["cases"]["case_000"]["foreground_clean"] == int((labels > 0).sum())


def test_noise_checks_every_case_before_writing_any(tmp_path):
    ds = make_dataset(tmp_path / "ds")
    last = ds / "labelsTr" / "case_003.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((7, 7, 7), np.uint8), np.eye(4)), str(last))  # not its image's grid
    with pytest.raises(UserError, match="does not match mask grid") as err:
        run_noise(ds, "mt", 1.0, seed=0)
    assert "case_003" in str(err.value)
    assert not list((ds / "labelsTr_noisy").glob("*/*.nii.gz"))  # nothing written for the good cases either


def test_unchanged_and_harsh_corruptions_are_reported(tmp_path, monkeypatch):
    ds = make_dataset(tmp_path / "ds")
    import svldrl.noise.run as noise_run

    @functools.wraps(mt_noise)  # same parameters as MT-Noise
    def identity(mask, rng, **kw):  # a drawn corruption that happens to change nothing
        return mask.copy(), {"operation": "dilate"}

    monkeypatch.setitem(noise_run.PROTOCOLS, "mt", identity)
    report = json.loads((run_noise(ds, "mt", 1.0, seed=0, name="same") / "noise_report.json").read_text())
    assert report["n_selected"] == 4 and report["n_corrupted"] == 0 and report["n_unchanged"] == 4
    assert all(e["selected"] and not e["corrupted"] for e in report["cases"].values())
    monkeypatch.undo()
    # erosion by 9.4 mm of a ~6 mm blob removes nearly all of it: a warning per case, also under --quiet
    stream = io.StringIO()
    rep = Reporter(quiet=True, stream=stream)
    out = run_noise(ds, "mt", 1.0, seed=0, params={"mode": "erode", "r_min": 15}, name="harsh", reporter=rep)
    report = json.loads((out / "noise_report.json").read_text())
    assert all(e["removed_fraction"] > 0.9 for e in report["cases"].values())
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4 and all(ln.startswith("warning: noise harsh:") and "lost" in ln for ln in lines), (
        lines
    )
    # a caller's own progress object without warn: the warnings are Python warnings, not lost
    with pytest.warns(SvldrlWarning, match="lost"):
        run_noise(
            ds, "mt", 1.0, seed=0, params={"mode": "erode", "r_min": 15}, name="harsh2", reporter=Lines()
        )
