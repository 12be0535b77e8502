"""``svldrl targets``: the masks a configuration starts training from, written before anything trains.

Methods that correct masks before the first step (the band update of ``--preset recommended``,
``supervised_band``, ``tloss_band``) change what a model learns from; a user looks at those masks first, and so
do we. The method's own trainer is built on the dataset exactly as ``svldrl train`` builds it (every case a
training case: ``data.fold=all``), its corrections run, and its targets are written, one NIfTI per case with
the input mask's affine, beside a report of the voxels changed per case and the label Dice against the clean
masks wherever the dataset has them. A configuration that corrects nothing before training writes the given
masks unchanged.

Corrections that need a model (the trusted shift of ``supervised_shift`` and of ``--preset recommended`` with
trusted cases, MTCL's, the confident update) happen during training; ``--from RUN`` writes the targets a run
ended with (its last checkpoint's), with the same report, and needs no settings: they are the run's.
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from svldrl import config as C
from svldrl.data.dataset import Case, load_case, load_dataset
from svldrl.data.io import NIFTI_ENDINGS, file_ending, read_volume, write_nifti, write_text
from svldrl.data.outputs import check_output_dir, output_dir_for_first_write
from svldrl.engine.checkpoint import LATEST, load_checkpoint
from svldrl.errors import UserError
from svldrl.methods import get_method, section_owners
from svldrl.reporter import QUIET, Reporter, fmt_number
from svldrl.rules import overlap
from svldrl.settings import Config

#: The kind of output folder ``targets`` writes (data/outputs.py's marker).
KIND = "targets"
REPORT = ("targets.json", "targets.md")


def write_targets(
    dataset: str | Path,
    labels: str,
    cfg: Config,
    out: str | Path,
    reporter: Reporter = QUIET,
    overwrite: bool = False,
    run: str | Path | None = None,
) -> dict[str, Any]:
    """Write the training targets of ``cfg`` on ``dataset``'s ``labels`` masks to ``out``; returns the report.
    With ``run`` (``cfg`` and ``labels`` its own: :func:`run_config`), the targets that run ended with.

    Raises:
        UserError: a missing dataset or label set, an output folder inside the dataset or holding files this
            command did not write (unless ``overwrite``); nothing is written then.
    """
    ds = load_dataset(dataset, labels=labels, trusted=cfg.data.trusted)
    out = Path(out)
    _refuse_inside(out, ds.root)
    names = [f"{c.case_id}.nii.gz" for c in ds.train]
    check_output_dir(out, KIND, [*names, *REPORT], overwrite, "--out")
    cfg = copy.deepcopy(cfg)  # the caller's stays as given
    cfg.labels = labels
    if run is None:
        cfg.data.fold = "all"  # every case is a training case: all of them get their target
        cfg.train.checkpoint_select = "final"
    with tempfile.TemporaryDirectory(prefix="svldrl_targets_") as tmp:
        trainer = get_method(cfg.method)(cfg, ds, Path(tmp) / "run", reporter=reporter)
    if run is not None:
        _restore_targets(trainer, Path(run))
    cases = {c.case_id: c for c in ds.train}
    clean = load_dataset(ds.root, "clean") if labels != "clean" else ds
    clean_cases = {c.case_id: c for c in clean.train}
    rows = []
    t0 = time.monotonic()
    for n, cid in enumerate(trainer.train_ids):
        case = cases[cid]
        vol = read_volume(case.label, key=case.label_key)
        shape = vol.array.shape
        given = np.asarray(trainer.given[n])[tuple(slice(0, s) for s in shape)] >= 0.5
        target = np.asarray(trainer.targets[n])[tuple(slice(0, s) for s in shape)] >= 0.5
        header = vol.header if file_ending(case.label) in NIFTI_ENDINGS else None
        with output_dir_for_first_write(out, KIND, "--out") if n == 0 else nullcontext():
            write_nifti(out / f"{cid}.nii.gz", target.astype(np.uint8), vol.affine, header)
        rows.append(_row(cid, given, target, _clean_mask(clean_cases.get(cid), trainer, shape), trainer))
        reporter.progress("targets", n + 1, len(trainer.train_ids), t0, extra=cid)
    report = _report(ds, labels, trainer.cfg, rows)  # the settings resolved from the data included
    write_text(out / "targets.json", json.dumps(report, indent=2) + "\n")
    write_text(out / "targets.md", _markdown(report))
    return report


def run_config(run: str | Path) -> Config:
    """The settings a run folder was trained with.

    Raises:
        UserError: not a run folder.
    """
    path = Path(run) / "config.yaml"
    if not path.is_file():
        raise UserError("--from: not a run folder (no config.yaml)", run)
    return C.load_config([path], owners=section_owners(), saved=True)


def _restore_targets(trainer: Any, run: Path) -> None:
    """Replace the trainer's targets (and notes) by those of ``run``'s last checkpoint."""
    path = run / "checkpoint_final.pt" if (run / "checkpoint_final.pt").is_file() else run / LATEST
    ckpt = load_checkpoint(path, trainer.name, trainer.cfg.nets.backbone, trainer.cfg.nets.heads)
    saved = ckpt.get("extra", {}).get("targets")
    if saved is None:
        raise UserError(
            f"--from: method {trainer.name} keeps no corrected targets (it trains on the given masks, or corrects "
            "them inside its loss); svldrl targets without --from writes the masks it starts from",
            run,
        )
    if len(saved) != len(trainer.targets) or any(
        tuple(t.shape) != g.shape for t, g in zip(saved, trainer.targets, strict=False)
    ):
        raise UserError(
            f"--from: the run's checkpoint holds {len(saved)} training targets that do not fit this dataset's "
            f"{len(trainer.targets)} training cases: not the dataset (or label set) the run trained on",
            run,
        )
    trainer.load_method_state(ckpt["extra"])


def _refuse_inside(out: Path, root: Path) -> None:
    """The corrected masks look like the dataset's own; written inside it, they would be taken for them."""
    o, r = Path(os.path.abspath(out)), Path(os.path.abspath(root))
    if o == r or r in o.parents:
        raise UserError(
            f"--out lies inside the dataset {r.name}; svldrl writes corrected masks beside your data, never among "
            "it (choose a folder outside the dataset)",
            out,
        )


def _clean_mask(case: Case | None, trainer: Any, shape: tuple[int, ...]) -> np.ndarray | None:
    """The case's clean mask as the trainer's data settings read it (foreground labels), or None."""
    if case is None or case.label is None:
        return None
    _, lab, _ = load_case(case, trainer.cfg.data, allow_empty=True)
    return np.asarray(lab)[tuple(slice(0, s) for s in shape)] >= 0.5


def _row(
    cid: str, given: np.ndarray, target: np.ndarray, clean: np.ndarray | None, trainer: Any
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "case": cid,
        "voxels_changed": int(np.count_nonzero(given != target)),
        "added": int(np.count_nonzero(target & ~given)),
        "removed": int(np.count_nonzero(given & ~target)),
        "volume_given": int(np.count_nonzero(given)),
        "volume_target": int(np.count_nonzero(target)),
    }
    if clean is not None:
        row["label_dice_given"] = overlap(given, clean, empty=1.0)[0]
        row["label_dice_target"] = overlap(target, clean, empty=1.0)[0]
    row.update(getattr(trainer, "target_notes", {}).get(cid, {}))
    return row


def _mean(rows: list[dict[str, Any]], key: str) -> float:
    values = [r[key] for r in rows if key in r and not (isinstance(r[key], float) and math.isnan(r[key]))]
    return float(np.mean(values)) if values else math.nan


def _report(ds: Any, labels: str, cfg: Config, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "dataset": str(ds.root),
        "labels": labels,
        "method": cfg.method,
        "config": cfg.as_dict(),
        "n_cases": len(rows),
        "n_changed": sum(r["voxels_changed"] > 0 for r in rows),
        "mean_label_dice_given": _mean(rows, "label_dice_given"),
        "mean_label_dice_target": _mean(rows, "label_dice_target"),
        "cases": rows,
    }


def _markdown(report: dict[str, Any]) -> str:
    rows = report["cases"]
    cols = [k for k in rows[0] if k != "case"] if rows else []
    lines = [
        f"# Training targets: {report['method']} on {report['labels']} masks",
        "",
        f"- Dataset: {report['dataset']}",
        f"- Cases changed before training: {report['n_changed']} of {report['n_cases']}",
    ]
    if not math.isnan(report["mean_label_dice_target"]):
        lines.append(
            f"- Mean label Dice against the clean masks: given {report['mean_label_dice_given']:.4f}, "
            f"targets {report['mean_label_dice_target']:.4f}"
        )
    lines += ["", "| case | " + " | ".join(cols) + " |", "| --- |" + " --- |" * len(cols)]
    for r in rows:
        lines.append(f"| {r['case']} | " + " | ".join(fmt_number(r.get(c, ""), 4) for c in cols) + " |")
    return "\n".join(lines) + "\n"
