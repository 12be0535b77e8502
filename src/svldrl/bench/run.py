"""One run of a benchmark: train (or resume), predict the clean test cases with the final and the
best-on-validation checkpoint, score them, and write ``result.json`` last."""

from __future__ import annotations

import copy
import csv
import datetime
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

from svldrl import __version__
from svldrl import config as C
from svldrl.bench.data import Data
from svldrl.bench.plan import RESULT_NAME, Run
from svldrl.data.io import json_default, write_text
from svldrl.methods import section_owners
from svldrl.reporter import Reporter


def execute_run(run: Run, data: Data, reporter: Reporter, train_reporter: Reporter) -> dict[str, Any]:
    """Train (or resume), predict the clean test cases with both checkpoints, score, write ``result.json``."""
    from svldrl.eval.summary import evaluate_folders
    from svldrl.runs import predict_folder, train

    root = data.folds[run.fold]
    if not (run.dir / "checkpoint_final.pt").is_file():
        resume = (run.dir / "checkpoint_latest.pt").is_file()
        if resume:
            reporter.info(f"{run.label}: resuming the interrupted training")
        elif run.dir.exists():
            shutil.rmtree(run.dir)  # a run killed before its first checkpoint: nothing worth keeping
        train(root, run.labels, run.dir, copy.deepcopy(run.cfg), resume=resume, reporter=train_reporter)
    history = read_history(run.dir / "metrics.csv")
    best_epoch = best_epoch_of(history)
    foreground = run.cfg.data.foreground
    t0 = time.monotonic()
    scores: dict[str, dict[str, float]] = {}
    for tag, checkpoint in (("final", "final"), ("val", "best")):
        pred = run.dir / f"pred_{tag}"
        shutil.rmtree(pred, ignore_errors=True)  # left by a kill during prediction
        if tag == "val" and best_epoch is not None and best_epoch == len(history) - 1:
            # The best validation was the last epoch: the same weights as the final checkpoint.
            shutil.copytree(run.dir / "pred_final", pred)
            scores[tag] = scores["final"]
            continue
        predict_folder(run.dir, root / "imagesTs", pred, checkpoint=checkpoint)
        summary = evaluate_folders(pred, root / "labelsTs", out=pred / "summary.json", foreground=foreground)
        fg = summary["foreground_mean"]
        scores[tag] = {"dice": fg["Dice"], "iou": fg["IoU"], "hd95": fg["HD95"], "asd": fg["ASD"]}
        n_test = len(summary["metric_per_case"])
    predict_seconds = time.monotonic() - t0
    saved = C.load_config(
        [run.dir / "config.yaml"], owners=section_owners(), saved=True
    ).as_dict()  # as written: resolved from the data
    result = {
        "method": run.method.name,
        "noise": run.noise,
        "seed": run.seed,
        "fold": run.fold,
        "base_method": run.method.method,
        "labels": run.labels,
        **scores["final"],
        "label_dice": data.label_dice[run.noise],
        "n_test": n_test,
        **{f"{k}_val_selected": v for k, v in scores["val"].items()},
        "best_epoch": best_epoch,
        "epochs": len(history),
        "iterations": run.cfg.train.iterations,
        "train_seconds": sum(num(r.get("epoch_time")) for r in history),
        "predict_seconds": predict_seconds,
        "overrides": run.method.overrides,
        "finished": now(),
        "svldrl_version": __version__,
        "config": saved,
    }
    # Written last and atomically: a run counts as done only once this file exists.
    write_text(run.dir / RESULT_NAME, json.dumps(result, indent=2, default=json_default) + "\n")
    return result


def read_history(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def best_epoch_of(history: list[dict[str, str]]) -> int | None:
    """Index of the epoch whose validation Dice the trainer kept as best (first strict maximum)."""
    best, idx = -1.0, None
    for i, row in enumerate(history):
        v = num(row.get("val_dice"), math.nan)
        if not math.isnan(v) and v > best:
            best, idx = v, i
    return idx


def num(value: Any, default: float = 0.0) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def now() -> str:
    """The local time, ISO 8601, to the second (for result files and reports)."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")
