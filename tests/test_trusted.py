"""Trusted cases: a few expert (or untouched) masks beside many noisy ones, MTCL's and PLIL's setting.

What a user notices: ``svldrl noise --trusted N`` leaves N recorded cases clean, reproducibly; training with
trusted cases validates and selects its checkpoint on them only; MTCL's clean subset is the trusted cases;
``data.train_on=trusted`` trains on them alone; bad trusted input is one line, exit 2, nothing written; a
benchmark's noise entry takes ``trusted: N``.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from svldrl import config as C
from svldrl.cli import main
from svldrl.data.dataset import load_dataset
from svldrl.engine.checkpoint import load_checkpoint
from svldrl.methods import get_method
from svldrl.noise.run import run_noise, select_cases, select_corrupted
from svldrl.reporter import Reporter
from svldrl.settings import Config
from tests.conftest import TINY

TRAIN_SETS = sum((["--set", s] for s in [*TINY, "train.threads=1"]), [])


def _mask(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _dot_set(dataset: Path, name: str = "dot", trusted: list[str] | None = None) -> Path:
    """A noisy set that shrank every mask to one voxel, except the ``trusted`` cases (recorded, clean)."""
    folder = dataset / "labelsTr_noisy" / name
    folder.mkdir(parents=True)
    for f in sorted((dataset / "labelsTr").glob("*.nii.gz")):
        img = nib.load(str(f))
        if f.name[: -len(".nii.gz")] in (trusted or []):
            shutil.copyfile(f, folder / f.name)
            continue
        dot = np.zeros(img.shape, np.uint8)
        dot[0, 0, 0] = 1
        nib.save(nib.Nifti1Image(dot, img.affine), str(folder / f.name))
    if trusted:
        (folder / "trusted.json").write_text(json.dumps({"cases": trusted}))
    return folder


def _cfg(method: str = "supervised", *extra: str) -> Config:
    return C.load_config(overrides=[*TINY, f"method={method}", "train.threads=1", *extra])


def _trainer(dataset: Path, labels: str, out: Path, method: str = "supervised", *extra: str):
    cfg = _cfg(method, *extra)
    ds = load_dataset(dataset, labels, trusted=cfg.data.trusted)
    return get_method(method)(cfg, ds, out)


# ------------------------------------------------------------------ noise --trusted N


def test_noise_trusted_leaves_n_recorded_cases_untouched_reproducibly(dataset: Path, tmp_path: Path, capsys):
    argv = ["noise", str(dataset), "--protocol", "mt", "--ratio", "1.0", "--mode", "dilate"]
    assert main([*argv, "--trusted", "2", "--seed", "4", "--quiet"]) == 0
    folder = dataset / "labelsTr_noisy" / "mt_dilate1.0_t2"
    trusted = json.loads((folder / "trusted.json").read_text())["cases"]
    report = json.loads((folder / "noise_report.json").read_text())
    assert len(trusted) == 2 and report["trusted"] == trusted and report["n_trusted"] == 2
    assert report["settings"]["trusted"] == 2
    for f in sorted((dataset / "labelsTr").glob("*.nii.gz")):
        cid = f.name[: -len(".nii.gz")]
        clean, noisy = _mask(f) > 0, _mask(folder / f.name) > 0
        if cid in trusted:  # untouched, and reported so
            assert np.array_equal(clean, noisy) and report["cases"][cid]["trusted"] is True
        else:  # ratio 1.0 applies to the others: every one dilated
            assert noisy.sum() > clean.sum() and "trusted" not in report["cases"][cid]
    assert report["n_corrupted"] == 4

    # the same seed on another copy: the same cases, the same files byte for byte
    other = tmp_path / "copy" / dataset.name
    shutil.copytree(dataset, other, ignore=shutil.ignore_patterns("labelsTr_noisy"))
    assert main(["noise", str(other), *argv[2:], "--trusted", "2", "--seed", "4", "--quiet"]) == 0
    assert _files(other / "labelsTr_noisy") == _files(dataset / "labelsTr_noisy")

    # without --trusted nothing changes: the corruption draw and the recorded settings are the old ones
    assert select_corrupted(6, 0.5, 4, []) == select_cases(6, 0.5, 4)
    plain = run_noise(dataset, "mt", 0.5, 4)
    settings = json.loads((plain / "noise_report.json").read_text())["settings"]
    assert "trusted" not in settings and not (plain / "trusted.json").exists()


# ------------------------------------------------------------------ training with trusted cases


def test_training_with_trusted_cases_validates_on_them_only(dataset: Path, tmp_path: Path, capsys):
    _dot_set(dataset, trusted=["phantom_001", "phantom_004"])
    (dataset / "splits_final.json").unlink(missing_ok=True)  # the session's phantoms may have one already
    out = tmp_path / "run"
    argv = ["train", str(dataset), "--labels", "noisy/dot", "--out", str(out), *TRAIN_SETS]
    assert main(argv) == 0
    log = capsys.readouterr().err
    assert "4 training / 2 validation cases" in log
    assert "2 trusted cases (noisy/dot/trusted.json" in log and "validation and checkpoint selection" in log
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert rows and all(r["val_masks"] == "trusted" for r in rows)
    assert "val Dice (trusted)" in log
    assert not (dataset / "splits_final.json").exists()  # the fold split is not used

    trainer = _trainer(dataset, "noisy/dot", tmp_path / "t")
    assert trainer.val_ids == ["phantom_001", "phantom_004"]
    assert "phantom_001" not in trainer.train_ids and len(trainer.train_ids) == 4  # held out for selection
    assert all(v.sum() > 1 for v in trainer.val_labels)  # their trusted (clean) masks, not the dots


def test_checkpoint_best_is_chosen_on_the_trusted_masks(dataset: Path, tmp_path: Path):
    from scipy import ndimage

    from svldrl.runs import train

    noisy = run_noise(dataset, "mt", 0.5, 0, name="mt_t2", trusted=2)
    trusted = json.loads((noisy / "trusted.json").read_text())["cases"]
    # long enough (and fast enough) for the tiny model to segment something: Dice above 0
    fast = ["train.iterations=80", "train.steps_per_epoch=10", "train.lr=0.01", "train.scheduler=constant"]
    fast += ["data.pos_fraction=0.67"]
    run = train(dataset, "noisy/mt_t2", tmp_path / "run", _cfg("supervised", *fast))
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    dice = [float(r["val_dice"]) for r in rows]
    assert max(dice) > 0.2, dice
    best = load_checkpoint(run / "checkpoint_best.pt", method="supervised")
    assert best["best_val"] == pytest.approx(max(dice))
    assert best["epoch"] == dice.index(max(dice)) + 1
    # that Dice is the best checkpoint's Dice on the trusted cases and their clean masks, measured afresh
    judge = _trainer(dataset, "noisy/mt_t2", tmp_path / "judge", "supervised", *fast)
    assert judge.val_ids == trusted
    for cid, v in zip(judge.val_ids, judge.val_labels, strict=True):
        assert np.array_equal(v, _mask(dataset / "labelsTr" / f"{cid}.nii.gz") > 0)
    judge.network.load_state_dict(best["model"])
    assert judge.validate() == pytest.approx(best["best_val"], abs=1e-6)
    # ... a number that depends on those masks: against grown masks it is another
    judge.val_labels = [ndimage.binary_dilation(v, iterations=2).astype(np.uint8) for v in judge.val_labels]
    assert judge.validate() != pytest.approx(best["best_val"], abs=1e-3)


def test_expert_masks_replace_the_given_ones_whatever_labels_says(dataset: Path, tmp_path: Path):
    _dot_set(dataset)  # no record: every mask is a dot
    expert = dataset / "labelsTr_trusted"
    expert.mkdir()
    for cid in ("phantom_000", "phantom_003"):
        shutil.copyfile(dataset / "labelsTr" / f"{cid}.nii.gz", expert / f"{cid}.nii.gz")
    trainer = _trainer(dataset, "noisy/dot", tmp_path / "t", "supervised", "data.train_on=all")
    assert trainer.val_ids == ["phantom_000", "phantom_003"] and len(trainer.train_ids) == 6
    for cid, given in zip(trainer.train_ids, trainer.given, strict=True):
        assert (given.sum() > 1) == (cid in ("phantom_000", "phantom_003")), cid
    # --trusted none: as before trusted cases existed (the fold split, the given masks)
    plain = _trainer(dataset, "noisy/dot", tmp_path / "p", "supervised", "data.trusted=none")
    assert plain.trusted_ids == []
    assert all(g.sum() == 1 for g in plain.given) and all(v.sum() == 1 for v in plain.val_labels)


def test_trusted_file_names_the_cases_of_the_chosen_label_set(dataset: Path, tmp_path: Path):
    _dot_set(dataset)
    listing = tmp_path / "trusted.txt"
    listing.write_text("# reviewed by the radiologist\nphantom_005\n\nphantom_002\n")
    trainer = _trainer(dataset, "noisy/dot", tmp_path / "t", "supervised", f"data.trusted={listing}")
    assert trainer.val_ids == ["phantom_002", "phantom_005"]
    assert all(v.sum() == 1 for v in trainer.val_labels)  # their masks in the chosen set, as the list says


# ------------------------------------------------------------------ MTCL and train_on


def test_mtcl_clean_subset_is_the_trusted_cases(dataset: Path, tmp_path: Path, capsys):
    _dot_set(dataset, trusted=["phantom_003", "phantom_005"])
    trainer = _trainer(dataset, "noisy/dot", tmp_path / "t", "mtcl")
    assert trainer.train_ids == [f"phantom_00{i}" for i in range(6)]  # the clean subset trains too
    assert trainer.clean_positions() == [3, 5] and trainer.val_ids == ["phantom_003", "phantom_005"]
    assert [g.sum() > 1 for g in trainer.given] == [False, False, False, True, False, True]
    from svldrl.methods.kit.targets import cl_target_update

    for t in trainer.targets:
        t[...] = 0.5  # whatever the corrections write, the clean subset must be left alone
    cl_target_update(trainer, trainer.network, trainer.clean_positions())
    for i, (t, g) in enumerate(zip(trainer.targets, trainer.given, strict=True)):
        if i in (3, 5):
            assert np.all(t == 0.5)
        else:
            assert set(np.unique(t)) <= {0.0, 1.0} and t.shape == g.shape

    # the old way (the first K cases) is refused beside trusted cases, with what to do instead
    out = tmp_path / "run"
    argv = ["train", str(dataset), "--labels", "noisy/dot", "--method", "mtcl", "--out", str(out)]
    argv += TRAIN_SETS
    capsys.readouterr()
    assert main([*argv, "--set", "mtcl.clean_cases=2", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mtcl.clean_cases=2" in err[0] and "--trusted none" in err[0]
    assert not out.exists()
    # ... and still works without them
    old = _trainer(dataset, "noisy/dot", tmp_path / "o", "mtcl", "mtcl.clean_cases=2", "data.trusted=none")
    assert old.clean_positions() == [0, 1] and all(g.sum() > 1 for g in old.given[:2])


def test_train_on_trusted_trains_on_them_only(dataset: Path, tmp_path: Path):
    _dot_set(dataset, trusted=["phantom_000", "phantom_004"])
    trainer = _trainer(dataset, "noisy/dot", tmp_path / "t", "supervised", "data.train_on=trusted")
    assert trainer.train_ids == ["phantom_000", "phantom_004"] == trainer.val_ids
    assert all(g.sum() > 1 for g in trainer.given)
    torch.manual_seed(0)
    assert {trainer.sample_batch()["case"][0] for _ in range(6)} <= {0, 1}


def test_no_correction_changes_a_trusted_mask_that_trains(dataset: Path, tmp_path: Path, monkeypatch):
    """Under ``data.train_on=all`` the trusted cases train on their trusted masks, and stay so: whatever a
    method's correction writes (before training, after an epoch, or the agents' patches), the trainer gives
    them their masks back; the other cases keep what the correction wrote."""
    from svldrl.methods.supervised import SupervisedTrainer

    _dot_set(dataset, trusted=["phantom_001", "phantom_004"])

    def overwrite(trainer, epoch=None):
        for t in trainer.targets:
            t[...] = 1.0
        return {}

    monkeypatch.setattr(SupervisedTrainer, "build_method_state", overwrite)
    monkeypatch.setattr(SupervisedTrainer, "on_epoch_end", overwrite)
    trainer = _trainer(dataset, "noisy/dot", tmp_path / "t", "supervised", "data.train_on=all")
    assert sorted(trainer.trusted_positions) == [1, 4]

    def check() -> None:
        for i, (t, g) in enumerate(zip(trainer.targets, trainer.given, strict=True)):
            assert np.array_equal(t, g) if i in (1, 4) else np.all(t == 1.0), i

    check()  # after the method's state was built
    trainer.fit()
    check()  # after each epoch's update
    # SVL-DRL's label agents write refined patches into the targets during the steps
    agent = _trainer(dataset, "noisy/dot", tmp_path / "a", "svldrl", "data.train_on=all")
    box = (slice(0, 4),) * 3
    agent.write_targets(
        {"case": [1, 2], "box": [box, box], "flip": [(), ()]}, torch.full((2, 1, 4, 4, 4), 0.7)
    )
    assert np.array_equal(agent.targets[1], agent.given[1]) and np.all(
        agent.targets[2][box] == np.float32(0.7)
    )


def test_resume_refuses_trusted_cases_that_changed_since_the_run_started(
    dataset: Path, tmp_path: Path, capsys
):
    """The run's targets and sampling are per case: resumed with another trusted list it would pair them with
    other cases. Refused in one line (exit 2, nothing rewritten); the same list resumes."""
    folder = _dot_set(dataset, trusted=["phantom_001", "phantom_004"])
    run = tmp_path / "run"
    argv = ["train", str(dataset), "--labels", "noisy/dot", "--out", str(run), *TRAIN_SETS, "--quiet"]
    assert main([*argv, "--iterations", "4"]) == 0
    before = _files(run)
    (folder / "trusted.json").write_text(json.dumps({"cases": ["phantom_001", "phantom_005"]}))
    capsys.readouterr()
    assert main([*argv, "--iterations", "6", "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trusted cases changed" in err[0] and "'phantom_004'" in err[0], err
    assert _files(run) == before
    (folder / "trusted.json").write_text(json.dumps({"cases": ["phantom_001", "phantom_004"]}))
    assert main([*argv, "--iterations", "6", "--resume"]) == 0


# ------------------------------------------------------------------ the trusted threshold


def test_choose_threshold_adopts_only_a_clear_gain():
    """The Dice-best threshold replaces 0.5 only where it gains at least a point, beyond two standard errors."""
    from svldrl.rules import THRESHOLDS, choose_threshold

    half, high = THRESHOLDS.index(0.5), THRESHOLDS.index(0.5) + 4
    rng = np.random.default_rng(0)
    table = np.full((8, len(THRESHOLDS)), 0.6) + rng.normal(0, 0.002, (8, 1))
    table[:, high] = 0.8 + rng.normal(0, 0.01, 8)  # masks drawn too large: a higher threshold fits the truth
    c = choose_threshold(table)
    assert c.adopted and c.threshold == c.best == THRESHOLDS[high] and c.n == 8
    assert c.dice_best - c.dice_half == pytest.approx(0.2, abs=0.02)
    small = table.copy()
    small[:, high] = small[:, half] + 0.005  # consistent, but half a point: the model's own boundary stays
    assert not choose_threshold(small).adopted and choose_threshold(small).threshold == 0.5
    noisy = table.copy()
    noisy[:, high] = small[:, half] + rng.normal(0.02, 0.1, 8)  # a gain the cases do not agree on
    assert choose_threshold(noisy).threshold == 0.5
    one = choose_threshold(table[:1])  # one case is no evidence
    assert not one.adopted and one.n == 1
    table[0] = np.nan  # a case empty in both is left out
    assert choose_threshold(table).n == 7


def test_labels_of_thresholds_the_foreground_probability():
    from svldrl.engine.predict import labels_of

    logits = torch.zeros(2, 3)
    logits[1] = torch.tensor([-1.0, 0.5, 3.0])  # p = 0.27, 0.62, 0.95
    assert labels_of(logits).tolist() == [0, 1, 1]  # the argmax
    assert labels_of(logits, 0.8).tolist() == [0, 0, 1]
    assert labels_of(logits, 0.1).tolist() == [1, 1, 1]


def test_trusted_threshold_is_chosen_on_the_held_out_trusted_cases_and_predicts(
    dataset: Path, tmp_path: Path, capsys, monkeypatch
):
    """``data.trusted_threshold``: at the end of the run the threshold is chosen on the trusted cases (logged,
    ``trusted_threshold.json``, ``checkpoint_final.pt``), and ``svldrl predict`` segments with the one the
    checkpoint carries; skipped where the trusted cases trained."""
    from svldrl.engine.checkpoint import save_checkpoint

    _dot_set(dataset, trusted=["phantom_001", "phantom_004"])
    run = tmp_path / "run"
    argv = [
        "train",
        str(dataset),
        "--labels",
        "noisy/dot",
        *TRAIN_SETS,
        "--set",
        "data.trusted_threshold=true",
    ]
    assert main([*argv, "--out", str(run)]) == 0
    log = capsys.readouterr().err
    choice = json.loads((run / "trusted_threshold.json").read_text())
    assert choice["n"] == 2 and "on the 2 trusted cases the Dice-best foreground threshold" in log
    ckpt = load_checkpoint(run / "checkpoint_final.pt")
    assert ckpt.get("threshold", 0.5) == choice["threshold"]  # carried where adopted
    assert ("threshold" in ckpt) == choice["adopted"]
    from svldrl.runs.run import load_run

    assert load_run(run, "final", "cpu")[2].infer.threshold == choice["threshold"]
    # predictions follow the checkpoint's threshold: the lowest one marks more voxels than the highest
    images = dataset / "imagesTs"
    counts = []
    for t in (0.0025, 0.9975):
        save_checkpoint(run / "checkpoint_final.pt", {**ckpt, "threshold": t})
        out = tmp_path / f"pred_{t}"
        assert main(["predict", str(run), str(images), str(out), "--quiet"]) == 0
        counts.append(sum(int((_mask(f) > 0).sum()) for f in sorted(out.glob("*.nii.gz"))))
    assert counts[0] > counts[1]
    # an adopted threshold: the final checkpoint carries it, and the best one too where it is the same model
    import svldrl.engine.trainer as trainer_module
    from svldrl.rules import ThresholdChoice

    monkeypatch.setattr(
        trainer_module, "choose_threshold", lambda table: ThresholdChoice(0.9, 0.9, 0.8, 0.6, 0.01, 2, True)
    )
    adopted = tmp_path / "adopted"
    assert main([*argv, "--out", str(adopted), "--quiet"]) == 0
    assert load_checkpoint(adopted / "checkpoint_final.pt")["threshold"] == 0.9
    rows = list(csv.DictReader(open(adopted / "metrics.csv")))
    last_best = float(rows[-1]["val_dice"]) == max(
        float(r["val_dice"]) for r in rows if r["val_dice"] != "nan"
    )
    assert ("threshold" in load_checkpoint(adopted / "checkpoint_best.pt")) == last_best
    capsys.readouterr()
    monkeypatch.undo()
    # where the trusted cases train, a threshold chosen on them would fit them: skipped, said, none carried
    other = tmp_path / "all"
    assert main([*argv, "--out", str(other), "--set", "data.train_on=all"]) == 0
    assert (
        "trusted threshold (data.trusted_threshold) skipped: the trusted cases trained"
        in capsys.readouterr().err
    )
    assert not (other / "trusted_threshold.json").exists()
    assert "threshold" not in load_checkpoint(other / "checkpoint_final.pt")


def test_trusted_finish_ends_on_the_trusted_masks_alone(dataset: Path, tmp_path: Path, capsys, monkeypatch):
    """``data.trusted_finish``: the last share of the budget trains on the trusted cases' masks only (not the
    dots), with no method update and no validation, and checkpoint_best stays the best before it; the trusted
    shift's methods skip it where the shift found the masks right."""
    import svldrl.methods.shift as shift_method

    _dot_set(dataset, trusted=["phantom_000", "phantom_004"])
    # a tiny model finds no shift: here the shift's verdict is taken as "wrong masks" (its own test: below)
    monkeypatch.setattr(shift_method, "shift_found", lambda before: True)
    out = tmp_path / "run"
    sets = ["--set", "data.trusted_finish=0.34", "--set", "rl.shift_every=1"]
    argv = ["train", str(dataset), "--method", "supervised_shift", "--labels", "noisy/dot", "--out", str(out)]
    assert main([*argv, *TRAIN_SETS, *sets]) == 0
    log = capsys.readouterr().err
    assert (
        "trusted finish (data.trusted_finish=0.34): the last 2 iterations train on the 2 trusted cases" in log
    )
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [r.get("trusted_finish") or "" for r in rows] == ["", "", "1"]
    assert rows[1]["charts/shift_mm"] and not rows[2]["charts/shift_mm"]  # the method's update stops
    assert rows[1]["val_dice"] != "nan" and rows[2]["val_dice"] == "nan"
    assert load_checkpoint(out / "checkpoint_best.pt")["iteration"] <= 4
    assert load_checkpoint(out / "checkpoint_final.pt")["iteration"] == 6

    # where the trusted shift finds the masks right, its methods skip the finish (do no harm); plain training not
    monkeypatch.undo()
    for method, skipped in (("supervised_shift", True), ("supervised", False)):
        run = tmp_path / f"clean_{method}"
        (tmp_path / "t.json").write_text(json.dumps(["phantom_000", "phantom_004"]))
        clean = ["train", str(dataset), "--method", method, "--trusted", str(tmp_path / "t.json")]
        assert main([*clean, "--out", str(run), *TRAIN_SETS, *sets[:2]]) == 0
        log = capsys.readouterr().err
        assert (
            "trusted finish (data.trusted_finish=0.34) skipped: the trusted shift found no clear" in log
        ) == skipped
        rows = list(csv.DictReader(open(run / "metrics.csv")))
        assert any(r.get("trusted_finish") for r in rows) != skipped

    untrusted = _trainer(dataset, "clean", tmp_path / "u", "supervised", "data.trusted_finish=0.34")
    assert not untrusted.trusted_ids and untrusted.finish_from == untrusted.num_epochs  # nothing to finish on

    trainer = _trainer(dataset, "noisy/dot", tmp_path / "t", "supervised", "data.trusted_finish=0.34")
    assert trainer.finish_from == 2
    trainer.finishing = True
    images, masks, _ = trainer._trusted_pool()
    clean = [_mask(dataset / "labelsTr" / f"{c}.nii.gz") > 0 for c in ("phantom_000", "phantom_004")]
    for m, c in zip(masks, clean, strict=True):
        assert np.array_equal(m[tuple(slice(0, s) for s in c.shape)] >= 0.5, c)
    for _ in range(4):
        batch = trainer.sample_batch()
        assert set(batch["case"]) <= {0, 1}
        for k, (case, box, flip) in enumerate(zip(batch["case"], batch["box"], batch["flip"], strict=True)):
            want = masks[case][box]
            want = np.flip(want, flip) if flip else want
            assert np.array_equal(batch["target"][k, 0].numpy(), want)


def test_trusted_average_makes_the_finish_s_weight_average_the_final_model(
    dataset: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """``data.trusted_average`` and ``data.trusted_finish_lr``: in the finish the learning rate is the constant
    asked for, the final model is PyTorch's moving average of the finish's weights (not the last step's), and a run
    killed inside the finish resumes, average and all, to the same end."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from svldrl.runs import train
    from tests.conftest import Killed

    _dot_set(dataset, trusted=["phantom_000", "phantom_004"])
    sets = [
        *TINY,
        "train.iterations=8",
        "train.threads=1",
        "train.deterministic=true",
        "data.trusted_finish=0.5",
        "data.trusted_average=0.5",
        "data.trusted_finish_lr=0.25",
    ]
    cfg = C.load_config(overrides=sets)
    full = train(dataset, "noisy/dot", tmp_path / "full", cfg, reporter=Reporter(quiet=False))
    log = capsys.readouterr().err
    assert (
        "at a constant learning rate of 0.25 x train.lr; the final model the weights' moving average" in log
    )
    assert "the final model: the moving average of the weights over the trusted finish's 4 steps" in log
    rows = list(csv.DictReader(open(full / "metrics.csv")))
    assert [float(r["lr"]) for r in rows[2:]] == [0.25 * cfg.train.lr] * 2
    assert float(rows[1]["lr"]) != 0.25 * cfg.train.lr
    final, latest = (
        load_checkpoint(full / "checkpoint_final.pt"),
        load_checkpoint(full / "checkpoint_latest.pt"),
    )
    average = latest["finish_average"]
    assert int(average["n_averaged"]) == 4
    moved = [k for k in final["model"] if not torch.equal(final["model"][k], latest["model"][k])]
    assert moved  # the average, not the last step's weights
    for k in final["model"]:
        torch.testing.assert_close(final["model"][k], average[f"module.{k}"], msg=k)

    # the average is the EMA of the finish's steps' weights: replay them from each step's saved weights
    steps: list[dict[str, torch.Tensor]] = []
    original = AveragedModel.update_parameters

    def record(self, model):
        steps.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return original(self, model)

    monkeypatch.setattr(AveragedModel, "update_parameters", record)
    train(dataset, "noisy/dot", tmp_path / "again", cfg)
    monkeypatch.undo()
    want = {k: v.clone() for k, v in steps[0].items()}
    for w in steps[1:]:
        for k in want:
            if want[k].is_floating_point():
                want[k] = 0.5 * want[k] + 0.5 * w[k]
    for k, v in want.items():
        torch.testing.assert_close(final["model"][k], v, msg=k)
    assert get_ema_multi_avg_fn  # PyTorch's, not ours

    # killed after the finish's first epoch (its checkpoint holds the average so far), resumed to the same end
    killed, calls = tmp_path / "killed", {"n": 0}
    from svldrl.engine.trainer import Trainer

    save = Trainer._save

    def crash_after_third_latest(self, name):
        save(self, name)
        calls["n"] += name == "checkpoint_latest.pt"
        if calls["n"] == 3:
            raise Killed

    monkeypatch.setattr(Trainer, "_save", crash_after_third_latest)
    with pytest.raises(Killed):
        train(dataset, "noisy/dot", killed, cfg)
    monkeypatch.undo()
    assert int(load_checkpoint(killed / "checkpoint_latest.pt")["finish_average"]["n_averaged"]) == 2
    resumed = train(dataset, "noisy/dot", killed, cfg, resume=True)
    b = load_checkpoint(resumed / "checkpoint_final.pt")
    for k in final["model"]:
        torch.testing.assert_close(final["model"][k], b["model"][k], msg=k)


def test_trusted_join_trains_the_trusted_cases_where_the_finish_is_declined(
    dataset: Path, tmp_path: Path, capsys
) -> None:
    """``data.trusted_join``: where the trusted shift finds the masks right and its method declines the finish, the
    trusted cases join the training cases for that share, on their trusted masks (no update, no validation, no
    threshold chosen on them); without the key the share trains as before."""
    (tmp_path / "t.json").write_text(json.dumps(["phantom_000", "phantom_004"]))
    argv = ["train", str(dataset), "--method", "supervised_shift", "--trusted", str(tmp_path / "t.json")]
    sets = ["--set", "data.trusted_finish=0.34", "--set", "data.trusted_threshold=true"]
    out = tmp_path / "join"
    assert main([*argv, "--out", str(out), *TRAIN_SETS, *sets, "--set", "data.trusted_join=true"]) == 0
    log = capsys.readouterr().err
    assert "declined: the trusted shift found no clear" in log
    assert "instead (data.trusted_join) the last 2 iterations train on all" in log
    assert "trusted threshold (data.trusted_threshold) skipped: the trusted cases joined training" in log
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [r.get("trusted_join") or "" for r in rows] == ["", "", "1"]
    assert rows[1]["val_dice"] != "nan" and rows[2]["val_dice"] == "nan"
    # without the key: skipped, and the threshold is chosen on the held-out trusted cases
    plain = tmp_path / "plain"
    assert main([*argv, "--out", str(plain), *TRAIN_SETS, *sets]) == 0
    log = capsys.readouterr().err
    assert "skipped: the trusted shift found no clear" in log and "data.trusted_join" not in log
    assert (plain / "trusted_threshold.json").exists() and not (out / "trusted_threshold.json").exists()

    trainer = _trainer(
        dataset,
        "clean",
        tmp_path / "t",
        "supervised_shift",
        "data.trusted_finish=0.34",
        "data.trusted_join=true",
        f"data.trusted={tmp_path / 't.json'}",
    )
    n = len(trainer.train_ids)
    trainer._enter_finish(trainer.finish_from)  # no shift found in an empty history: declined, joined
    assert trainer.finishing and trainer.joined
    images, targets, _, _ = trainer._pool()
    assert len(images) == len(targets) == n + 2
    _, masks, _ = trainer._trusted_pool()
    seen = set()
    for _ in range(12):
        batch = trainer.sample_batch()
        for k, (case, box, flip) in enumerate(zip(batch["case"], batch["box"], batch["flip"], strict=True)):
            seen.add(case)
            want = (targets[case] if case < n else masks[case - n])[box]
            want = np.flip(want, flip) if flip else want
            assert np.array_equal(batch["target"][k, 0].numpy(), want)
    assert seen & {n, n + 1} and seen - {n, n + 1}  # the trusted cases and the others both train


def test_shift_side_reads_the_last_decision_of_the_trusted_shift() -> None:
    from svldrl.methods.kit.targets import shift_found, shift_side

    nan = float("nan")
    row = lambda applied, mm: {"charts/shift_applied": applied, "charts/shift_mm": mm}  # noqa: E731
    assert shift_side([]) == 0 and not shift_found([{"epoch": 0}])
    assert (
        shift_side([row(1.0, 1.5), {"charts/shift_applied": nan}]) == 1
    )  # the last decision, not the last row
    assert shift_side([row(1.0, 1.5), row(1.0, -0.8)]) == -1
    assert shift_side([row(1.0, 1.5), row(0.0, 1.4)]) == 0 and not shift_found([row(0.0, 1.4)])


@pytest.mark.parametrize("side", [1, -1], ids=["too_large", "too_small"])
def test_trusted_bound_keeps_the_other_cases_on_their_reliable_side(dataset: Path, tmp_path: Path, side: int):
    """``data.trusted_bound``: in the finish, where the shift found the masks drawn too large (small), the training
    cases stay, known only outside (inside) their masks; the trusted cases, repeated, are known everywhere; the
    loss of a crop with unknown voxels is the cross-entropy of its known voxels alone."""
    import torch
    import torch.nn.functional as F
    from scipy import ndimage

    from svldrl.engine.trainer import UNKNOWN

    (tmp_path / "t.json").write_text(json.dumps(["phantom_000", "phantom_004"]))
    sets = ["data.trusted_finish=0.34", "rl.shift_every=1", f"data.trusted={tmp_path / 't.json'}"]
    trainer = _trainer(dataset, "clean", tmp_path / "t", "supervised_shift", *sets, "data.trusted_bound=true")
    n = len(trainer.train_ids)
    trainer.history = [{"charts/shift_applied": 1.0, "charts/shift_mm": 1.5 * side}] * trainer.finish_from
    trainer._enter_finish(trainer.finish_from)
    assert trainer.finishing and not trainer.joined and trainer.bound is not None
    assert trainer._finish_mark == "trusted_bound"
    images, targets, _, _ = trainer._pool()
    repeat = round(n / 2)
    assert len(images) == len(targets) == n + 2 * repeat
    for t, g in zip(targets[:n], trainer.given, strict=True):
        inside = np.asarray(g) >= 0.5
        # a voxel-wide margin from the drawn boundary stays unknown on the known side
        near = ndimage.binary_dilation(inside) & ~ndimage.binary_erosion(inside)
        assert np.all(t[near & (inside if side > 0 else ~inside)] == UNKNOWN)
        known = (~inside if side > 0 else inside) & ~near
        assert known.any() and np.all(t[known] == (0.0 if side > 0 else 1.0))
        assert np.all(t[inside if side > 0 else ~inside] == UNKNOWN)
    _, masks, _ = trainer._trusted_pool()
    for k in range(2 * repeat):
        assert np.array_equal(targets[n + k], masks[k // repeat])
    # the loss: Dice + CE where every voxel is known, else the CE of the known voxels
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 4, 4, 4)
    target = torch.zeros(2, 1, 4, 4, 4)
    target[0, 0, :2] = 1.0  # a trusted crop
    target[1, 0, :, :2] = UNKNOWN  # a bounded crop: half unknown
    target[1, 0, 0, 2:] = 1.0
    seen = []
    trainer.network = lambda image, heads: {"seg": logits.clone().requires_grad_(True)}
    trainer.optimise = lambda loss: seen.append(loss.detach())
    trainer.finish_step({"image": torch.zeros(2, 1, 4, 4, 4), "target": target})
    known = target[1, 0] >= 0
    ce = F.cross_entropy(logits[1:], target[1:, 0].clamp(min=0).long(), reduction="none")[0][known].mean()
    want = trainer._plain_loss(logits[:1], torch.cat([1 - target[:1], target[:1]], 1)) + ce
    torch.testing.assert_close(seen[0], want)

    # off by default: the finish trains on the trusted cases alone; and without the shift's side, too
    plain = _trainer(dataset, "clean", tmp_path / "p", "supervised_shift", *sets)
    plain.history = trainer.history
    plain._enter_finish(plain.finish_from)
    assert plain.finishing and plain.bound is None and len(plain._pool()[0]) == 2
    unknown = _trainer(dataset, "clean", tmp_path / "u", "supervised", *sets, "data.trusted_bound=true")
    unknown._enter_finish(unknown.finish_from)
    assert unknown.finishing and unknown.bound is None and len(unknown._pool()[0]) == 2


def test_bound_band_knows_the_corrected_targets_core_and_surroundings(dataset: Path, tmp_path: Path) -> None:
    """``data.trusted_bound_band`` (experimental): beside the bound's reliable side, the unknown voxels more than
    that many voxels inside the corrected target become foreground, more than that many outside it background; the
    band around the target's boundary stays unknown, and the reliable side is untouched."""
    from scipy import ndimage

    from svldrl.engine.trainer import UNKNOWN

    (tmp_path / "t.json").write_text(json.dumps(["phantom_000", "phantom_004"]))
    sets = ["data.trusted_finish=0.34", "rl.shift_every=1", f"data.trusted={tmp_path / 't.json'}"]
    bound = ("data.trusted_bound=true", "data.trusted_bound_band=1")
    trainer = _trainer(dataset, "clean", tmp_path / "t", "supervised_shift", *sets, *bound)
    # the shift's correction: every mask eroded by two voxels
    trainer.targets = [
        ndimage.binary_erosion(np.asarray(g) >= 0.5, iterations=2).astype(np.float32) for g in trainer.given
    ]
    trainer.history = [{"charts/shift_applied": 1.0, "charts/shift_mm": 1.5}] * trainer.finish_from
    trainer._enter_finish(trainer.finish_from)
    n = len(trainer.train_ids)
    targets = trainer._pool()[1][:n]
    for t, g, c in zip(targets, trainer.given, trainer.targets, strict=True):
        inside, corrected = np.asarray(g) >= 0.5, c >= 0.5
        core = ndimage.binary_erosion(corrected)
        around = ndimage.binary_dilation(corrected)
        assert core.any() and np.all(t[core] == 1.0)
        assert np.all(t[~around] == 0.0)  # outside the given mask as before, and between it and the target
        assert np.all(t[around & ~core] == UNKNOWN)  # the band stays unknown
        assert np.any(inside & ~around)  # the test means something: known background inside the given mask
    # without trusted_bound it says it does nothing
    from svldrl.reporter import SvldrlWarning

    with pytest.warns(SvldrlWarning, match="data.trusted_bound_band acts only with data.trusted_bound"):
        _trainer(dataset, "clean", tmp_path / "w", "supervised_shift", *sets, "data.trusted_bound_band=1")


def test_under_the_band_the_bound_keeps_only_what_given_and_corrected_masks_agree_on(
    dataset: Path, tmp_path: Path
) -> None:
    """The band can overshoot: where the shift found the band-corrected masks too large, the bound's mask is the
    union of given and corrected ones (known background only where both say so); too small, their intersection."""
    (tmp_path / "t.json").write_text(json.dumps(["phantom_000", "phantom_004"]))
    sets = ["rl.trusted_shift=true", f"data.trusted={tmp_path / 't.json'}"]
    trainer = _trainer(dataset, "clean", tmp_path / "b", "supervised_band", *sets)
    trainer.band_targets = [
        np.roll(np.asarray(g), 2, axis=0) for g in trainer.given
    ]  # a band that moved them
    row = lambda mm: [{"charts/shift_applied": 1.0, "charts/shift_mm": mm}]  # noqa: E731
    for mm, agree in ((1.5, np.maximum), (-1.5, np.minimum)):
        side, masks = trainer.finish_side(row(mm))
        assert side == (1 if mm > 0 else -1)
        for m, g, b in zip(masks, trainer.given, trainer.band_targets, strict=True):
            assert np.array_equal(m, agree(np.asarray(g), b))
    assert trainer.finish_side([{"charts/shift_applied": 0.0, "charts/shift_mm": 1.5}])[0] == 0


def test_join_or_bound_without_the_finish_says_it_does_nothing(dataset: Path, tmp_path: Path) -> None:
    import warnings

    from svldrl.reporter import SvldrlWarning

    (tmp_path / "t.json").write_text(json.dumps(["phantom_000", "phantom_004"]))
    trusted = f"data.trusted={tmp_path / 't.json'}"
    said = "data.trusted_bound acts only in the trusted finish: without data.trusted_finish nothing changes"
    with pytest.warns(SvldrlWarning, match=said):
        _trainer(dataset, "clean", tmp_path / "a", "supervised_shift", trusted, "data.trusted_bound=true")
    both = ("data.trusted_finish=0.34", "data.trusted_bound=true", "data.trusted_join=true")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _trainer(dataset, "clean", tmp_path / "b", "supervised_shift", trusted, *both)
    assert not [w for w in caught if "trusted finish" in str(w.message)]


# ------------------------------------------------------------------ bad input: one line, exit 2, nothing written


def _bad_file(ds: Path, tmp: Path) -> list[str]:
    (tmp / "t.json").write_text(json.dumps(["phantom_001", "phantom_099"]))
    return ["train", str(ds), "--out", "{out}", "--trusted", str(tmp / "t.json"), *TRAIN_SETS]


def _test_case_expert(ds: Path, tmp: Path) -> list[str]:
    (ds / "labelsTr_trusted").mkdir()
    shutil.copyfile(ds / "labelsTs" / "phantom_006.nii.gz", ds / "labelsTr_trusted" / "phantom_006.nii.gz")
    return ["train", str(ds), "--out", "{out}", *TRAIN_SETS]


def _off_grid_expert(ds: Path, tmp: Path) -> list[str]:
    (ds / "labelsTr_trusted").mkdir()
    img = nib.load(str(ds / "labelsTr" / "phantom_002.nii.gz"))
    arr = np.asarray(img.dataobj)[:, :, :-2]
    nib.save(nib.Nifti1Image(arr, img.affine), str(ds / "labelsTr_trusted" / "phantom_002.nii.gz"))
    return ["train", str(ds), "--out", "{out}", *TRAIN_SETS]


def _all_trusted(ds: Path, tmp: Path) -> list[str]:
    (tmp / "all.txt").write_text("\n".join(f"phantom_00{i}" for i in range(6)))
    return ["train", str(ds), "--out", "{out}", "--trusted", str(tmp / "all.txt"), *TRAIN_SETS]


def _empty_list(ds: Path, tmp: Path) -> list[str]:
    (tmp / "none.json").write_text("[]")
    return ["train", str(ds), "--out", "{out}", "--trusted", str(tmp / "none.json"), *TRAIN_SETS]


def _auto_finds_none(ds: Path, tmp: Path) -> list[str]:
    return ["train", str(ds), "--out", "{out}", "--trusted", "auto", *TRAIN_SETS]


def _train_on_trusted_without_any(ds: Path, tmp: Path) -> list[str]:
    return ["train", str(ds), "--out", "{out}", "--set", "data.train_on=trusted", *TRAIN_SETS]


def _noise_every_case_trusted(ds: Path, tmp: Path) -> list[str]:
    return ["noise", str(ds), "--protocol", "mt", "--trusted", "6", "--name", "{out}"]


def _noise_zero_trusted(ds: Path, tmp: Path) -> list[str]:
    return ["noise", str(ds), "--protocol", "mt", "--trusted", "0", "--name", "{out}"]


BAD = {
    "trusted case not in the dataset": (_bad_file, "trusted case 'phantom_099' is not a training case"),
    "expert mask of a test case": (_test_case_expert, "'phantom_006', which is a test case"),
    "expert mask on another grid": (_off_grid_expert, "does not match mask grid"),
    "every training case trusted": (_all_trusted, "every training case (6) is trusted"),
    "a list naming no case": (_empty_list, "names no case"),
    "--trusted auto finding none": (_auto_finds_none, "--trusted auto: no trusted cases"),
    "train_on=trusted without trusted cases": (_train_on_trusted_without_any, "no training case is trusted"),
    "noise: every case trusted": (_noise_every_case_trusted, "at least one must stay noisy"),
    "noise: --trusted 0": (_noise_zero_trusted, "--trusted expects a number of training cases of at least 1"),
}


@pytest.mark.parametrize(("make", "problem"), BAD.values(), ids=BAD.keys())
def test_bad_trusted_input_is_one_line_exit_2_nothing_written(make, problem, dataset, tmp_path, capsys):
    argv = make(dataset, tmp_path)
    before = _files(dataset)
    out = tmp_path / "out"
    name = "never"
    argv = [a.replace("{out}", name if argv[0] == "noise" else str(out)) for a in argv]
    capsys.readouterr()
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("svldrl: error: ") and problem in lines[0], err
    assert "Traceback" not in err
    assert not out.exists() and _files(dataset) == before
    assert not (dataset / "labelsTr_noisy").exists()


# ------------------------------------------------------------------ benchmark: noise entries with trusted


def test_benchmark_noise_entry_takes_trusted(tmp_path: Path):
    from svldrl.bench.data import prepare_data
    from svldrl.bench.plan import plan_runs
    from svldrl.bench.runner import check_trusted_rows
    from svldrl.bench.spec import load_benchmark
    from svldrl.errors import UserError
    from svldrl.reporter import QUIET

    spec = {
        "dataset": {"synth": {"cases": 6, "size": 32, "seed": 3, "test_cases": 2}},
        "noise": [
            {"name": "dilate_t2", "protocol": "mt", "ratio": 1.0, "params": {"mode": "dilate"}, "trusted": 2},
            {"name": "mt0.5", "protocol": "mt", "ratio": 0.5},
        ],
        "methods": [
            {"name": "supervised", "method": "supervised"},
            {"name": "supervised_trusted_only", "method": "supervised", "set": ["data.train_on=trusted"]},
        ],
        "base": TINY,
        "seeds": [0],
    }
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(spec))
    bench = load_benchmark(path)
    assert [n.trusted for n in bench.noise] == [2, 0]
    out = tmp_path / "out"
    runs = plan_runs(bench, out)
    only = [r for r in runs if r.method.name == "supervised_trusted_only"]
    assert {r.cfg.data.train_on for r in only} == {"trusted"}
    # trusted-only training on a setting without trusted cases is refused before anything is written
    with pytest.raises(UserError, match="'supervised_trusted_only' on 'mt0.5'"):
        check_trusted_rows(bench, runs, out / "dataset")
    assert not out.exists()
    spec["noise"] = spec["noise"][:1]
    path.write_text(yaml.safe_dump(spec))
    bench = load_benchmark(path)
    check_trusted_rows(bench, plan_runs(bench, out), out / "dataset")

    data = prepare_data(bench, out, QUIET)
    folder = out / "dataset" / "labelsTr_noisy" / "dilate_t2"
    recorded = json.loads((folder / "trusted.json").read_text())["cases"]
    assert len(recorded) == 2 and data.trusted == {"dilate_t2": recorded}
    ds = load_dataset(out / "dataset", "noisy/dilate_t2", trusted="auto")
    assert ds.trusted_ids == recorded

    # a zero or a non-number is refused in the file itself
    spec["noise"][0]["trusted"] = 0
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(UserError, match="trusted must be a number of training cases of at least 1"):
        load_benchmark(path)


def test_benchmark_cv_folds_carry_their_trusted_cases(tmp_path: Path):
    from svldrl.bench.data import prepare_data
    from svldrl.bench.spec import load_benchmark
    from svldrl.reporter import QUIET

    spec = {
        "dataset": {"synth": {"cases": 6, "size": 32, "seed": 3, "test_cases": 0}, "cv": 2},
        "noise": [
            {"name": "dilate_t3", "protocol": "mt", "ratio": 1.0, "params": {"mode": "dilate"}, "trusted": 3}
        ],
        "methods": [{"name": "supervised", "method": "supervised"}],
        "base": TINY,
        "seeds": [0],
    }
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(spec))
    data = prepare_data(load_benchmark(path), tmp_path / "out", QUIET)
    recorded = set(data.trusted["dilate_t3"])
    seen: set[str] = set()
    for fold, root in data.folds.items():
        ds = load_dataset(root, "noisy/dilate_t3", trusted="auto")
        assert set(ds.trusted_ids) <= recorded & set(ds.case_ids), fold
        seen |= set(ds.trusted_ids)
    assert seen == recorded  # each trusted case is trusted in every fold that trains on it


def test_audit_knows_a_trusted_run_held_its_trusted_cases_out(dataset: Path, tmp_path: Path):
    from svldrl.audit.audit import load_judges

    _dot_set(dataset, trusted=["phantom_001", "phantom_002"])
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(C.dump_config(_cfg("supervised", "labels=noisy/dot")))
    (judge,) = load_judges([run], load_dataset(dataset, "noisy/dot"))
    assert judge.val_ids == {"phantom_001", "phantom_002"}
    assert judge.train_ids == {"phantom_000", "phantom_003", "phantom_004", "phantom_005"}
