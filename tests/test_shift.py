"""The trusted-shift target update: masks drawn systematically too large (or too small), their shift learned from a
few trusted cases and undone (``rl.target_update=shift``, ``supervised_shift``, the recommended preset with
trusted cases).

What a user notices: with trusted cases, dilated masks are eroded back towards the truth, by each case's own amount;
clean masks, or no trusted cases, are left as given; the estimate and its standard error are in the run's log.
"""

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
from svldrl.data.dataset import load_dataset
from svldrl.methods import get_method
from svldrl.methods.kit.targets import trusted_shift_update
from svldrl.reporter import Reporter
from svldrl.rules import boundary_shift, estimate_shift, overlap, shift_boundary
from tests.conftest import TINY, kill_at_second_validation

TRUSTED = ["phantom_000", "phantom_001"]
SPACING = (1.0, 1.0, 1.5)  # the phantoms' voxels (mm)


def _ball(shape: tuple[int, ...], radius: float) -> np.ndarray:
    grid = np.indices(shape) - (np.asarray(shape)[:, None, None, None] - 1) / 2
    return np.linalg.norm(grid, axis=0) < radius


# ------------------------------------------------------------------ the rules


def test_boundary_shift_measures_dilation_and_erosion_in_mm():
    ball = _ball((40, 40, 40), 8)
    for k in (1, 2, 3):
        assert boundary_shift(_ball((40, 40, 40), 8 + k), ball, (1, 1, 1)) == pytest.approx(k, abs=0.2)
        assert boundary_shift(_ball((40, 40, 40), 8 - k), ball, (1, 1, 1)) == pytest.approx(-k, abs=0.2)
    assert boundary_shift(ball, ball, (1, 1, 1)) == pytest.approx(0, abs=0.05)
    assert boundary_shift(_ball((40, 40, 40), 9), ball, (2, 2, 2)) == pytest.approx(2.0, abs=0.4)  # in mm
    assert math.isnan(boundary_shift(ball, np.zeros_like(ball), (1, 1, 1)))


def test_shift_boundary_undoes_a_shift_and_grows_for_a_negative_one():
    ball = _ball((40, 40, 40), 10)
    for k in (1, 2, 3):
        grown = _ball((40, 40, 40), 10 + k)
        back = shift_boundary(grown, float(k), (1, 1, 1))
        assert overlap(back, ball)[0] > 0.96 > overlap(grown, ball)[0]
        shrunk = _ball((40, 40, 40), 10 - k)
        assert (
            overlap(shift_boundary(shrunk, -float(k), (1, 1, 1)), ball)[0] > 0.95 > overlap(shrunk, ball)[0]
        )
    assert (shift_boundary(ball, 0.0, (1, 1, 1)) == ball).all()


def test_estimate_shift_cancels_the_models_own_error():
    # a model 1 mm too large everywhere, trained on masks 2 mm too large: 3 against the truth, 1 against its masks
    est = estimate_shift([3.1, 2.9, 3.0], [1.0, 1.2, 0.8, 1.0])
    assert est.shift == pytest.approx(2.0)
    assert 0 < est.se < 0.2 and est.significant(2.0, 0.5)
    assert not estimate_shift([1.1, 0.9, 1.0], [1.0, 1.2, 0.8]).significant(2.0, 0.5)  # clean masks
    assert not estimate_shift([5.0, -3.0], [1.0, 1.2]).significant(2.0, 0.5)  # too uncertain
    nan = estimate_shift([3.0, math.nan], [1.0, math.nan, 1.0])
    assert nan.shift == pytest.approx(2.0) and len(nan.given) == 3  # one value per case, NaN kept in place


# ------------------------------------------------------------------ the update on a trainer


def _noisy_set(dataset: Path, name: str, grow: dict[str, float]) -> None:
    """Masks grown by ``grow[case]`` mm (0: untouched); the TRUSTED cases untouched and recorded."""
    folder = dataset / "labelsTr_noisy" / name
    folder.mkdir(parents=True)
    for f in sorted((dataset / "labelsTr").glob("*.nii.gz")):
        img = nib.load(str(f))
        mask = np.asarray(img.dataobj) > 0
        k = grow.get(f.name[: -len(".nii.gz")], 0)
        out = shift_boundary(mask, -k, SPACING) if k else mask
        nib.save(nib.Nifti1Image(out.astype(np.uint8), img.affine), str(folder / f.name))
    (folder / "trusted.json").write_text(json.dumps({"cases": TRUSTED}))


def _trainer(dataset: Path, labels: str, out: Path, *extra: str):
    cfg = C.load_config(overrides=[*TINY, "method=supervised_shift", "train.threads=1", *extra])
    ds = load_dataset(dataset, labels, trusted="auto")
    return get_method("supervised_shift")(cfg, ds, out, reporter=Reporter(quiet=False))


def _clean(dataset: Path, cid: str) -> np.ndarray:
    return np.asarray(nib.load(str(dataset / "labelsTr" / f"{cid}.nii.gz")).dataobj) > 0


def _model(trainer, dataset: Path, grow: float) -> None:
    """Replace the trainer's model by one whose boundary lies ``grow`` mm outside every case's truth."""
    ids = {id(img): cid for img, cid in zip(trainer.images, trainer.train_ids, strict=True)}
    ids.update({id(img): cid for img, cid in zip(trainer.val_images, trainer.val_ids, strict=True)})

    def predict_probs(image, network=None):
        return shift_boundary(_clean(dataset, ids[id(image)]), -grow, SPACING).astype(np.float32)

    trainer.predict_probs = predict_probs


def _label_dice(trainer, dataset: Path) -> float:
    return float(
        np.mean(
            [
                overlap(t >= 0.5, _clean(dataset, cid))[0]
                for t, cid in zip(trainer.targets, trainer.train_ids, strict=True)
            ]
        )
    )


@pytest.mark.parametrize("per_case", [True, False])
def test_dilated_masks_are_eroded_back_to_the_truth(dataset: Path, tmp_path: Path, per_case: bool):
    others = ["phantom_002", "phantom_003", "phantom_004", "phantom_005"]
    _noisy_set(dataset, "grown", {cid: 2 for cid in others})
    trainer = _trainer(dataset, "noisy/grown", tmp_path / "run", f"rl.shift_per_case={str(per_case).lower()}")
    assert trainer.val_ids == TRUSTED and trainer.train_ids == others
    _model(trainer, dataset, grow=3)  # trained on masks 2 mm too large, and 1 mm too large of its own
    before = _label_dice(trainer, dataset)
    logs = trusted_shift_update(trainer)
    assert logs["charts/shift_applied"] == 1.0 and 1.5 < logs["charts/shift_mm"] < 3.5
    assert _label_dice(trainer, dataset) > max(before + 0.05, 0.9)
    given = [g.copy() for g in trainer.given]
    trusted_shift_update(trainer)  # redone from the given masks: no drift
    assert all((g == t).all() for g, t in zip(given, trainer.given, strict=True))


def test_each_case_loses_its_own_shift(dataset: Path, tmp_path: Path):
    grow = {"phantom_002": 1, "phantom_003": 3, "phantom_004": 1, "phantom_005": 3}
    _noisy_set(dataset, "mixed", grow)
    runs = {}
    for per_case in (True, False):
        trainer = _trainer(
            dataset, "noisy/mixed", tmp_path / f"run{per_case}", f"rl.shift_per_case={str(per_case).lower()}"
        )
        _model(trainer, dataset, grow=2)  # the model draws the masks' average
        trusted_shift_update(trainer)
        runs[per_case] = _label_dice(trainer, dataset)
        notes = [trainer.target_notes[cid]["shift_mm"] for cid in trainer.train_ids]
        assert (notes[0] < notes[1]) == per_case
    assert runs[True] > runs[False] + 0.02 and runs[True] > 0.85


def test_clean_masks_and_missing_trusted_cases_are_left_as_given(dataset: Path, tmp_path: Path, capsys):
    _noisy_set(dataset, "same", {})
    trainer = _trainer(dataset, "noisy/same", tmp_path / "run")
    _model(trainer, dataset, grow=1)  # a model with an error of its own, masks without one
    logs = trusted_shift_update(trainer)
    assert logs["charts/shift_applied"] == 0.0 and abs(logs["charts/shift_mm"]) < 0.5
    assert all((t == g).all() for t, g in zip(trainer.targets, trainer.given, strict=True))
    assert "kept as given" in capsys.readouterr().err

    trainer = _trainer(dataset, "clean", tmp_path / "run2")  # no trusted cases
    logs = trusted_shift_update(trainer)
    assert logs["charts/shift_applied"] == 0.0 and math.isnan(logs["charts/shift_mm"])
    assert "no trusted validation cases" in capsys.readouterr().err


GROWN = {
    cid: 2 for cid in ["phantom_002", "phantom_003", "phantom_004", "phantom_005"]
}  # mm; 000-001 trusted


def _train_grown(dataset: Path, run: Path, *argv: str) -> list[dict[str, str]]:
    """Train on the GROWN masks from the command line (``argv``: the method or preset); the metrics.csv rows."""
    _noisy_set(dataset, "grown", GROWN)
    sets = sum((["--set", s] for s in [*TINY, "train.threads=1", "rl.shift_every=1"]), [])
    cmd = ["train", str(dataset), *argv, "--labels", "noisy/grown", "--out", str(run), *sets, "--quiet"]
    assert main(cmd) == 0
    return list(csv.DictReader((run / "metrics.csv").open()))


@pytest.mark.parametrize(
    "argv",
    [["--method", "supervised_shift"], ["--method", "svldrl", "--set", "rl.target_update=shift"]],
    ids=["supervised_shift", "svldrl"],
)
def test_the_shift_update_logs_its_estimate(dataset: Path, tmp_path: Path, argv: list[str]):
    rows = _train_grown(dataset, tmp_path / "run", *argv)
    logged = [r for r in rows if r.get("charts/shift_mm")]
    assert logged and all(
        r["charts/shift_se_mm"] and float(r["charts/shift_applied"]) in (0, 1) for r in logged
    )


@pytest.mark.parametrize("trusted", [True, False])
def test_recommended_preset_undoes_the_shift_only_with_trusted_cases(
    dataset: Path, tmp_path: Path, trusted: bool
):
    argv = ["--preset", "recommended", *([] if trusted else ["--trusted", "none"])]
    rows = _train_grown(dataset, tmp_path / "run", *argv)
    assert any(r.get("charts/shift_mm") for r in rows) == trusted
    # the band update ran either way, in every epoch before the finish's share (there the method's updates stop: the
    # preset's finish, its bound, or, where the shift found the masks right, its join)
    marks = ("trusted_finish", "trusted_bound", "trusted_join")
    before = [r for r in rows if not any(r.get(k) for k in marks)]
    assert before and all(r.get("charts/band_abstained") for r in before)
    assert len(before) < len(rows) if trusted else len(before) == len(rows)


def test_targets_from_a_run_writes_the_masks_it_ended_with(dataset: Path, tmp_path: Path, capsys):
    run = tmp_path / "run"
    _train_grown(dataset, run, "--method", "supervised_shift")
    sets = sum((["--set", s] for s in [*TINY, "train.threads=1"]), [])
    out = tmp_path / "targets"
    assert main(["targets", str(dataset), "--from", str(run), "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "targets.json").read_text())
    assert report["method"] == "supervised_shift" and report["labels"] == "noisy/grown"
    assert [r["case"] for r in report["cases"]] == [
        "phantom_002",
        "phantom_003",
        "phantom_004",
        "phantom_005",
    ]
    assert all("shift_mm" in r for r in report["cases"])  # the run's notes, kept in its checkpoint
    from svldrl.engine.checkpoint import load_checkpoint

    saved = load_checkpoint(run / "checkpoint_final.pt")["extra"]["targets"]
    for n, row in enumerate(report["cases"]):
        written = np.asarray(nib.load(str(out / f"{row['case']}.nii.gz")).dataobj)
        assert (
            written == (saved[n].numpy()[: written.shape[0], : written.shape[1], : written.shape[2]] >= 0.5)
        ).all()

    # settings beside --from, a method without corrected targets, another dataset: one line, exit 2
    capsys.readouterr()
    assert (
        main(
            ["targets", str(dataset), "--from", str(run), "--out", str(tmp_path / "t2"), "--labels", "clean"]
        )
        == 2
    )
    assert "--from takes the run's own settings; leave out --labels" in capsys.readouterr().err
    plain = tmp_path / "plain"
    assert main(["train", str(dataset), "--out", str(plain), *sets, "--quiet"]) == 0
    capsys.readouterr()
    assert (
        main(["targets", str(dataset), "--from", str(plain), "--out", str(tmp_path / "t3"), "--quiet"]) == 2
    )
    err = capsys.readouterr().err
    assert "keeps no corrected targets" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "t3").exists()


def test_trusted_measure_trains_as_the_bound_until_the_next_update_then_keeps_it(
    dataset: Path, tmp_path: Path, monkeypatch
) -> None:
    """``data.trusted_measure``: after the shift's first decision that the masks are wrong, the epochs until its next
    update train the training cases on their reliable side only (unknown voxels inside their masks) beside the
    trusted cases, without validation; that update is the last (its correction stays)."""
    import svldrl.methods.shift as shift_method
    from svldrl.engine.trainer import UNKNOWN

    _noisy_set(dataset, "grown", GROWN)
    # the tiny model finds no shift: here the shift's first decision is taken as "drawn too large"
    decided = lambda before: int(any("charts/shift_applied" in r for r in before))  # noqa: E731
    monkeypatch.setattr(shift_method, "shift_side", decided)
    sets = [*TINY, "method=supervised_shift", "train.threads=1", "rl.shift_every=2", "train.iterations=16"]
    seen: list[bool] = []
    from svldrl.engine.trainer import Trainer

    original = Trainer.finish_step

    def spy(self, batch):
        seen.append(bool((batch["target"] == UNKNOWN).any()))
        return original(self, batch)

    monkeypatch.setattr(Trainer, "finish_step", spy)
    from svldrl.runs import train

    run = train(
        dataset, "noisy/grown", tmp_path / "m", C.load_config(overrides=[*sets, "data.trusted_measure=true"])
    )
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    updates = [k for k, r in enumerate(rows) if r.get("charts/shift_applied")]
    measuring = [k for k, r in enumerate(rows) if r.get("trusted_measure")]
    # warm-up to epoch 1, updates every 2 epochs: the first at epoch 3's end, measured over epochs 4-5, then none
    assert updates == [3, 5] and measuring == [4, 5]
    assert all(rows[k]["val_dice"] == "nan" for k in measuring)
    assert seen and any(seen)  # bounded crops: voxels of unknown class inside the grown masks
    plain = train(dataset, "noisy/grown", tmp_path / "p", C.load_config(overrides=sets))
    rows = list(csv.DictReader((plain / "metrics.csv").open()))
    assert [k for k, r in enumerate(rows) if r.get("charts/shift_applied")] == [3, 5, 7]
    assert not any(r.get("trusted_measure") for r in rows)


def test_trusted_measure_says_when_it_never_started(dataset: Path, tmp_path: Path, capsys) -> None:
    """A method without the trusted shift never finds the masks wrong: the run says the measure did nothing."""
    from svldrl.reporter import Reporter
    from svldrl.runs import train

    _noisy_set(dataset, "grown", GROWN)
    sets = [*TINY, "method=supervised", "train.threads=1", "train.iterations=4", "data.trusted_measure=true"]
    cfg = C.load_config(overrides=sets)
    train(dataset, "noisy/grown", tmp_path / "m", cfg, reporter=Reporter(quiet=False))
    assert "trusted measure (data.trusted_measure) never started" in capsys.readouterr().err


@pytest.mark.parametrize(
    "method",
    [
        "supervised_shift",
        "supervised_agents",
        "supervised_shift+finish",
        "supervised_shift+join",
        "supervised_shift+bound",
        "supervised_shift+measure",
    ],
    ids=lambda m: m,
)
def test_a_killed_shift_run_resumes_to_the_same_end(dataset: Path, tmp_path: Path, monkeypatch, method: str):
    """The corrected targets and their notes (and the mask agents with their optimiser) are in the checkpoint: a
    killed and resumed run ends where an uninterrupted one does (+finish: the kill falls before the trusted
    finish, whose pass over the trusted cases then starts afresh in both)."""
    method, finish, join, bound, measure = (
        method.split("+")[0],
        *(f"+{k}" in method for k in ("finish", "join", "bound", "measure")),
    )
    from svldrl.engine.checkpoint import load_checkpoint
    from svldrl.runs import train

    _noisy_set(dataset, "grown", GROWN)
    sets = [
        *TINY,
        f"method={method}",
        "train.threads=1",
        "rl.shift_every=1",
        "rl.agent_episodes=2",
        "train.deterministic=true",
        *(["data.trusted_finish=0.34"] if finish or join or bound else []),
        *(["data.trusted_join=true"] if join else []),
        *(["data.trusted_bound=true"] if bound else []),
        *(["data.trusted_measure=true", "train.iterations=10"] if measure else []),
    ]
    if bound or measure:  # the tiny model finds no shift: here the masks are taken as drawn too large
        import svldrl.methods.shift as shift_method

        monkeypatch.setattr(shift_method, "shift_found", lambda before: True)
        monkeypatch.setattr(shift_method, "shift_side", lambda before: 1)
    full = train(dataset, "noisy/grown", tmp_path / "full", C.load_config(overrides=sets))
    killed = tmp_path / "killed"
    kill_at_second_validation(
        monkeypatch,
        get_method(method),
        lambda: train(dataset, "noisy/grown", killed, C.load_config(overrides=sets)),
    )
    resumed = train(dataset, "noisy/grown", tmp_path / "killed", C.load_config(overrides=sets), resume=True)
    a, b = load_checkpoint(full / "checkpoint_final.pt"), load_checkpoint(resumed / "checkpoint_final.pt")
    if (
        join
    ):  # the tiny model finds no shift in the grown masks: the finish is declined, the trusted cases join
        assert [r.get("trusted_join") for r in a["history"]][-1] == 1.0
    if bound:
        assert [r.get("trusted_bound") for r in a["history"]][-1] == 1.0
    if measure:
        assert any(r.get("trusted_measure") for r in a["history"])
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], msg=k)
    for ta, tb in zip(a["extra"]["targets"], b["extra"]["targets"], strict=True):
        torch.testing.assert_close(ta, tb)
    assert a["extra"]["target_notes"] == b["extra"]["target_notes"] and a["extra"]["target_notes"]
    if method == "supervised_agents":
        for k in a["extra"]["agents"]:
            torch.testing.assert_close(a["extra"]["agents"][k], b["extra"]["agents"][k], msg=k)
