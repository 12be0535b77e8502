"""``--fold all`` (nnU-Net's) and splits files that no longer cover the dataset."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import torch

from svldrl import config as C
from svldrl.cli import main
from svldrl.data.splits import SPLITS_FILE, make_splits
from svldrl.runs import train
from tests.conftest import TINY


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


def test_fold_all_trains_on_every_case_without_validation(dataset: Path, tmp_path: Path, capsys) -> None:
    torch.set_num_threads(1)
    sets = sum((["--set", s] for s in [*TINY, "train.iterations=2"]), [])
    code = main(["train", str(dataset), "--out", str(tmp_path / "run"), "--fold", "all", *sets])
    assert code == 0, capsys.readouterr().err
    run = tmp_path / "run"
    assert all(math.isnan(float(r["val_dice"])) for r in _rows(run))
    assert (run / "checkpoint_final.pt").is_file() and (run / "checkpoint_best.pt").is_file()
    assert not (dataset / SPLITS_FILE).exists()  # no splits needed, none written
    assert (
        code == 0
        and main(["predict", str(run), str(dataset / "imagesTs"), str(tmp_path / "p"), "--quiet"]) == 0
    )
    # The audit judges with a fold-all run (every case in-fold, so it says so).
    assert (
        main(["audit", str(run), str(dataset), "--out", str(tmp_path / "a"), "--disable-tta", "--quiet"]) == 0
    )
    assert "in_fold" in (tmp_path / "a" / "audit.csv").read_text()


def test_fold_all_refuses_selection_on_validation(dataset: Path, tmp_path: Path, capsys) -> None:
    sets = sum((["--set", s] for s in [*TINY, "train.checkpoint_select=val"]), [])
    code = main(["train", str(dataset), "--out", str(tmp_path / "run"), "--fold", "all", *sets, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "checkpoint_select=val" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
    code = main(["train", str(dataset), "--out", str(tmp_path / "run"), "--fold", "x", "--quiet"])
    assert code == 2 and "data.fold" in capsys.readouterr().err


def test_stale_splits_are_rebuilt_with_a_warning_or_refused(dataset: Path, tmp_path: Path, capsys) -> None:
    torch.set_num_threads(1)
    ids = [f"phantom_{i:03d}" for i in range(6)]
    (dataset / SPLITS_FILE).write_text(json.dumps(make_splits(ids[:5], 5)))  # made before phantom_005 came
    cfg = C.load_config(overrides=[*TINY, "train.iterations=2"])
    lines: list[str] = []

    class Rep:
        quiet = False

        def info(self, message: str) -> None:
            lines.append(message)

        def warn(self, message: str) -> None:
            lines.append(f"warning: {message}")

        def progress(self, *a, **k) -> None:
            pass

    train(dataset, "clean", tmp_path / "run", cfg, reporter=Rep())
    assert any("warning" in ln and "phantom_005" in ln for ln in lines), lines
    rebuilt = json.loads((dataset / SPLITS_FILE).read_text())
    assert rebuilt == make_splits(ids, 5)
    # A splits file the user wrote by hand is never replaced: it must name every case.
    hand = [{"train": ids[:3], "val": ids[3:5]}, {"train": ids[2:5], "val": ids[:2]}]
    (dataset / SPLITS_FILE).write_text(json.dumps(hand))
    sets = sum((["--set", s] for s in [*TINY, "train.iterations=2"]), [])
    code = main(["train", str(dataset), "--out", str(tmp_path / "run2"), *sets, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "in no fold: phantom_005" in err and SPLITS_FILE in err, err
    assert json.loads((dataset / SPLITS_FILE).read_text()) == hand
    shutil.rmtree(tmp_path / "run", ignore_errors=True)
