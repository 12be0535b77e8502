"""Training, resume, prediction and the CLI end to end on 32^3 phantoms with a tiny network."""

from __future__ import annotations

import csv
import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from svldrl import config as C
from svldrl.cli import main
from svldrl.engine.checkpoint import load_checkpoint
from svldrl.errors import UserError
from svldrl.runs import train
from svldrl.settings import Config
from tests.conftest import TINY, kill_at_second_validation


def _cfg(*extra: str) -> Config:
    return C.load_config(overrides=[*TINY, *extra])


def test_train_writes_run_folder_and_predict_keeps_affine(dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert (
        main(["train", str(dataset), "--out", str(run), "--quiet", *sum((["--set", s] for s in TINY), [])])
        == 0
    )
    for name in (
        "config.yaml",
        "checkpoint_latest.pt",
        "checkpoint_best.pt",
        "checkpoint_final.pt",
        "metrics.csv",
        "progress.png",
    ):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert 0.0 <= float(rows[-1]["val_dice"]) <= 1.0
    out = tmp_path / "pred"
    assert main(["predict", str(run), str(dataset / "imagesTs"), str(out), "--quiet"]) == 0
    for img in sorted((dataset / "imagesTs").glob("*.nii.gz")):
        cid = img.name.replace("_0000.nii.gz", "")
        pred, src = nib.load(out / f"{cid}.nii.gz"), nib.load(img)
        assert pred.shape == src.shape
        np.testing.assert_allclose(pred.affine, src.affine)
        assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1}
    summary = tmp_path / "summary.json"
    assert main(["evaluate", str(out), str(dataset / "labelsTs"), "--out", str(summary), "--quiet"]) == 0
    assert summary.is_file()


def test_predict_larger_than_patch(dataset: Path, tmp_path: Path) -> None:
    """A volume larger than the patch in every direction (and not a multiple of it) is tiled and stitched."""
    run = train(dataset, "clean", tmp_path / "run", _cfg("train.iterations=2"))
    big = tmp_path / "big"
    big.mkdir()
    rng = np.random.default_rng(0)
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    affine[:3, 3] = [-10, 5, 3]
    nib.save(
        nib.Nifti1Image(rng.uniform(0, 900, (70, 45, 37)).astype(np.float32), affine), big / "big_0000.nii.gz"
    )
    from svldrl.runs import predict_folder

    (out,) = predict_folder(run, big, tmp_path / "bigpred", batch=2)
    img = nib.load(out)
    assert img.shape == (70, 45, 37)
    np.testing.assert_allclose(img.affine, affine)


def test_resume_continues_log_and_matches_uninterrupted(dataset: Path, tmp_path: Path, monkeypatch) -> None:
    cfg = _cfg("train.deterministic=true")
    full = train(
        dataset, "clean", tmp_path / "full", C.load_config(overrides=[*TINY, "train.deterministic=true"])
    )

    from svldrl.engine.trainer import Trainer

    # the kill lands after epoch 1's checkpoint
    kill_at_second_validation(monkeypatch, Trainer, lambda: train(dataset, "clean", tmp_path / "killed", cfg))
    assert not (tmp_path / "killed" / "checkpoint_final.pt").exists()
    resumed = train(
        dataset,
        "clean",
        tmp_path / "killed",
        C.load_config([tmp_path / "killed" / "config.yaml"]),
        resume=True,
    )
    rows = list(csv.DictReader(open(resumed / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    a = load_checkpoint(full / "checkpoint_final.pt")["model"]
    b = load_checkpoint(resumed / "checkpoint_final.pt")["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)


def test_existing_run_without_resume_is_refused(dataset: Path, tmp_path: Path) -> None:
    run = train(dataset, "clean", tmp_path / "run", _cfg("train.iterations=2"))
    with pytest.raises(UserError, match="--resume"):
        train(dataset, "clean", run, _cfg("train.iterations=2"))
    # From Python, a trainer made to continue the run is restored before it trains, never over the run
    from svldrl.data.dataset import load_dataset
    from svldrl.engine.trainer import Trainer

    with pytest.raises(RuntimeError, match="restore"):
        Trainer(_cfg("train.iterations=2"), load_dataset(dataset), run, resume=True).fit()


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--set", "rl.no_such_key=1"], "unknown config key"),
        (["--set", "train.patch=3"], "out of range"),
        (["--set", "nets.backbone=resnet"], "must be one of"),
        (["--labels", "noisy/never_made"], "never_made"),
        (["--method", "magic"], "unknown method"),
        (
            ["--set", "mtcl.ema=0.5"],
            "is a setting of mtcl; this run's method is supervised, which would ignore it",
        ),
        (["--method", "mtcl", "--set", "rl.t_max=5"], "this run's method is mtcl, which would ignore it"),
    ],
)
def test_train_bad_options_exit_2(
    dataset: Path, tmp_path: Path, capsys, flags: list[str], needle: str
) -> None:
    code = main(["train", str(dataset), "--out", str(tmp_path / "r"), *flags])
    assert code == 2
    assert needle in _err(capsys)
    assert not (tmp_path / "r").exists()


def test_checkpoint_with_code_is_refused_not_executed(dataset: Path, tmp_path: Path, capsys) -> None:
    run = train(dataset, "clean", tmp_path / "run", _cfg("train.iterations=2"))
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    with open(run / "checkpoint_final.pt", "wb") as fh:
        pickle.dump({"format": "svldrl-checkpoint", "x": Evil()}, fh)
    code = main(["predict", str(run), str(dataset / "imagesTs"), str(tmp_path / "p")])
    assert code == 2 and "checkpoint" in _err(capsys)
    assert not marker.exists()


def test_foreign_and_truncated_checkpoints_are_refused(dataset: Path, tmp_path: Path) -> None:
    run = train(dataset, "clean", tmp_path / "run", _cfg("train.iterations=2"))
    ckpt = run / "checkpoint_final.pt"
    with pytest.raises(UserError, match="method 'supervised'"):
        load_checkpoint(ckpt, method="svldrl")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not an svldrl checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    data = ckpt.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "trunc.pt")


def test_a_run_made_before_a_default_changed_still_loads_resumes_and_predicts(
    dataset: Path, tmp_path: Path, capsys
) -> None:
    """A run's config.yaml holds every key, other methods' sections at the defaults of its day; a later default of a
    section its method does not read must not refuse it (predict, resume) nor count as a changed setting."""
    from svldrl.methods import section_owners

    run = tmp_path / "run"
    sets = sum((["--set", s] for s in [*TINY, "train.iterations=2", "train.threads=1"]), [])
    assert main(["train", str(dataset), "--out", str(run), *sets, "--quiet"]) == 0
    text = (run / "config.yaml").read_text()
    old = text.replace("shift_min: 1.0", "shift_min: 0.25").replace("init: 1.0", "init: 3.0")  # rl.*, tloss.*
    assert old != text
    (run / "config.yaml").write_text(old)
    assert main(["predict", str(run), str(dataset / "imagesTs"), str(tmp_path / "pred"), "--quiet"]) == 0
    assert (
        main(["train", str(dataset), "--out", str(run), *sets, "--iterations", "4", "--resume", "--quiet"])
        == 0
    )
    saved = C.load_config([run / "config.yaml"], owners=section_owners(), saved=True)
    assert saved.rl.shift_min == 1.0 and saved.method == "supervised"
    raw = C.load_config(overrides=[])
    raw_saved = dict(C.flatten(C.load_config(overrides=[]))) | {"rl.shift_min": 0.25}
    assert C.differences(raw, raw_saved, owners=section_owners()) == []
    assert C.differences(raw, raw_saved) == [("rl.shift_min", 0.25, 1.0)]  # without owners: every key counts


def test_resume_refuses_a_changed_setting(dataset: Path, tmp_path: Path, capsys) -> None:
    """--resume continues the run as started: a flag asking for something else is refused, not dropped; the
    device and thread count, which change no result (config.NEUTRAL_KEYS, as the benchmark's reuse), may."""
    torch.set_num_threads(1)
    run = tmp_path / "run"
    sets = sum((["--set", s] for s in [*TINY, "train.iterations=2", "train.threads=1"]), [])
    assert main(["train", str(dataset), "--out", str(run), *sets, "--quiet"]) == 0
    before = (run / "config.yaml").read_text()
    for extra, said in (
        (["--set", "train.lr=0.1"], "--set train.lr=0.1"),
        (["--deterministic"], "--deterministic"),
        (["--foreground", "1"], "--foreground"),
        (["--method", "tloss"], "--method tloss"),
    ):
        code = main(["train", str(dataset), "--out", str(run), *sets, *extra, "--resume", "--quiet"])
        err = capsys.readouterr().err
        assert code == 2 and said in err and len(err.strip().splitlines()) == 1, err
    assert (run / "config.yaml").read_text() == before
    # the same flags again, on another device setting, and a longer budget, are a resume
    argv = ["train", str(dataset), "--out", str(run), *sets, "--device", "cpu", "--set", "train.threads=2"]
    assert main([*argv, "--iterations", "4", "--resume", "--quiet"]) == 0


def test_resume_refuses_a_budget_below_the_iterations_done(dataset: Path, tmp_path: Path, capsys) -> None:
    """A budget below what the run has done would stop it where it is and rewrite config.yaml to the smaller
    budget with exit code 0: refused before anything is written. The same budget or a larger one resumes."""
    torch.set_num_threads(1)
    run = tmp_path / "run"
    sets = sum((["--set", s] for s in [*TINY, "train.threads=1"]), [])
    argv = ["train", str(dataset), "--out", str(run), *sets, "--quiet"]
    assert main([*argv, "--iterations", "4"]) == 0  # two epochs: the latest checkpoint is at iteration 4
    before = {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()}
    for extra, said in (
        (["--iterations", "2"], "--iterations 2"),
        (["--set", "train.iterations=3"], "--set"),
    ):
        code = main([*argv, *extra, "--resume"])
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
        assert lines[0].startswith(f"svldrl: error: {run}: --resume: the run has done 4 iterations"), lines[0]
        assert said in lines[0], lines[0]
    assert {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()} == before
    # the library refuses it too, before fit() rewrites config.yaml
    cfg = C.load_config([run / "config.yaml"])
    cfg.train.iterations = 2
    with pytest.raises(UserError, match="the run has done 4 iterations"):
        train(dataset, "clean", run, cfg, resume=True)
    assert (run / "config.yaml").read_bytes() == before["config.yaml"]
    # the budget already done: resumes and finishes at once; a larger one trains on
    assert main([*argv, "--iterations", "4", "--resume"]) == 0
    assert main([*argv, "--iterations", "6", "--resume"]) == 0
    assert load_checkpoint(run / "checkpoint_final.pt")["iteration"] == 6
    assert C.load_config([run / "config.yaml"]).train.iterations == 6


def test_checkpointed_plain_data_with_numpy_scalars_loads_back(tmp_path: Path) -> None:
    """Method notes hold NumPy numbers (a band's look-alike share); checkpoints load with weights_only, which
    refuses NumPy objects: they are saved as Python numbers."""
    from svldrl.engine.checkpoint import attribute_state, save_checkpoint

    notes = {
        "case": {"band_lookalike_share": np.float64(0.03), "band_width": np.int64(4), "band": "corrected"}
    }
    path = save_checkpoint(tmp_path / "c.pt", {"extra": {"target_notes": attribute_state(notes)}})
    back = load_checkpoint(path)["extra"]["target_notes"]
    assert back == {"case": {"band_lookalike_share": 0.03, "band_width": 4, "band": "corrected"}}
    assert type(back["case"]["band_width"]) is int
