"""The label audit: which training masks does a trained model disagree with, where, and how much.

Every training case is segmented by a model that, where possible, did not train on it (cross-validated
judging, as cleanlab does with out-of-sample probabilities): with one run per fold, a case is judged by the
run whose fold's validation split holds it (``judged_by = out_of_fold``). A case that only a model trained
on it can judge is marked ``in_fold``; such judgements under-detect errors, because the model has partly
memorised the very masks it judges.

Two detectors turn the model's foreground probability ``p`` into a map of suspected label errors:

- ``threshold`` (default): a confident disagreement, ``p < 1 - T`` on a labelled foreground voxel
  (type 1, the model rejects it) or ``p > T`` on a labelled background voxel (type 2, missed foreground).
- ``cl``: confident learning (Northcutt et al., JAIR 2021) with per-class thresholds pooled over all
  cases; the rules are MTCL's, from :mod:`svldrl.rules`.

The corrected mask is the given (binary) mask with the suspected errors flipped, so the Dice between the
given and the corrected mask estimates the given mask's quality; cases are ranked by it, worst first.
Outputs go to ``OUT/{errors,confidence,corrected}/{case}.nii.gz`` on the mask's grid, affine and header,
``OUT/audit.csv``, ``OUT/audit.md``, ``OUT/audit.html`` and ``OUT/figures/``; the user's masks are only read.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from svldrl import config as C
from svldrl.audit import report
from svldrl.data.dataset import Case, Dataset, apply_trusted, check_grid, check_mask, load_case, load_dataset
from svldrl.data.io import Volume, read_volume, write_nifti
from svldrl.data.outputs import check_output_dir, mark_output_dir
from svldrl.data.splits import ALL, fold_cases, load_or_create_splits, parse_fold, trusted_split
from svldrl.engine.predict import predict_probability
from svldrl.errors import UserError
from svldrl.methods import get_method, section_owners
from svldrl.reporter import QUIET, Reporter
from svldrl.rules import (
    cl_thresholds,
    class_confidence_sums,
    confident_flags,
    confident_learning_flags,
    dice_from_counts,
    relabel,
)
from svldrl.runs import load_run
from svldrl.settings import Config, Data

DETECTORS = ("threshold", "cl")
#: Values of the suspected-error map.
REJECTED_FG = 1  # labelled foreground the model rejects (over-segmentation in the given mask)
MISSED_FG = 2  # labelled background the model calls foreground (under-segmentation)
OUTPUT_DIRS = ("errors", "confidence", "corrected", "figures")
IN_FOLD_NOTE = (
    "in_fold: the judging model trained on this mask and has partly memorised it, so its errors are "
    "under-detected; train the other folds (svldrl train --fold K) and pass them with --runs."
)


# ----------------------------------------------------------------------------------------------------------
# The detectors and per-case measures (pure functions on arrays)


def suspect_errors(given: np.ndarray, probs: np.ndarray, threshold: float = 0.8) -> np.ndarray:
    """Voxels where the model confidently disagrees with the given mask.

    Args:
        given: binary given mask (non-zero is foreground).
        probs: the model's foreground probability, same shape.
        threshold: confidence ``T`` in (0.5, 1): foreground voxels with ``p < 1 - T`` and background
            voxels with ``p > T`` are suspected.

    Returns:
        uint8 map: 0 agreed, :data:`REJECTED_FG` (1), :data:`MISSED_FG` (2).
    """
    _check_threshold(threshold)
    g = np.asarray(given) != 0
    p = np.asarray(probs)
    if g.shape != p.shape:
        raise ValueError(f"mask shape {g.shape} != probability shape {p.shape}")
    fg, bg = confident_flags(p, threshold)
    errors = np.zeros(g.shape, dtype=np.uint8)
    errors[g & bg] = REJECTED_FG
    errors[~g & fg] = MISSED_FG
    return errors


def cl_suspect_errors(
    given: np.ndarray, probs: np.ndarray, thresholds: np.ndarray | None = None
) -> np.ndarray:
    """Suspected errors by confident learning (the off-diagonal of the confident joint).

    Args:
        given: binary given mask.
        probs: foreground probability, same shape.
        thresholds: (2,) per-class thresholds (background, foreground), e.g. pooled over a dataset with
            :func:`cl_thresholds`; None: from this case alone.

    Returns:
        uint8 map with the values of :func:`suspect_errors`.
    """
    g = (np.asarray(given) != 0).astype(np.int64)
    p = np.asarray(probs, dtype=np.float32)
    flags = confident_learning_flags(np.stack([1.0 - p, p]), g, thresholds)
    errors = np.zeros(g.shape, dtype=np.uint8)
    errors[flags & (g == 1)] = REJECTED_FG
    errors[flags & (g == 0)] = MISSED_FG
    return errors


def restrict_to_band(errors: np.ndarray, given: np.ndarray, band: float) -> np.ndarray:
    """Keep suspected errors within ``band`` voxels of the given mask's boundary (``band`` <= 0: keep all).

    Annotation errors are boundary errors (a contour drawn too wide or too tight, shifted, or a model's
    over- or under-segmentation); a judging model's own mistakes far from the given mask (a look-alike
    structure elsewhere) are not, and flipping them would make the corrected mask worse.
    """
    if band <= 0:
        return errors
    g = np.asarray(given) != 0
    if not g.any():
        return errors
    # distance of every voxel to the given boundary: inside, to the nearest background; outside, to the mask
    dist = np.where(g, ndimage.distance_transform_edt(g), ndimage.distance_transform_edt(~g))
    out = np.array(errors, copy=True)
    out[dist > band] = 0
    return out


def correct_mask(given: np.ndarray, errors: np.ndarray) -> np.ndarray:
    """The binary given mask with every suspected error flipped (uint8 {0, 1})."""
    e = np.asarray(errors)
    return relabel(np.asarray(given) != 0, e == MISSED_FG, e == REJECTED_FG).astype(np.uint8)


def inner_boundary(mask: np.ndarray) -> np.ndarray:
    """Foreground voxels face-adjacent to background (the volume's edge does not count as background)."""
    m = np.asarray(mask) != 0
    return m & ~ndimage.binary_erosion(m, ndimage.generate_binary_structure(3, 1), border_value=1)


def voxel_ml(affine: np.ndarray) -> float:
    """Volume of one voxel in ml, from the voxel-to-world affine (mm)."""
    return abs(float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0


def case_measures(given: np.ndarray, errors: np.ndarray, affine: np.ndarray) -> dict[str, Any]:
    """Label-quality measures of one case.

    Args:
        given: binary given mask.
        errors: suspected-error map (:func:`suspect_errors`).
        affine: the mask's voxel-to-world affine, for volumes in ml.

    Returns:
        ``dice`` (given vs corrected; 1.0 when both are empty: the model agrees with an empty mask),
        ``error_voxels``, ``error_ml``, ``over_ml`` (type 1), ``under_ml`` (type 2), ``boundary_share``
        (share of the given mask's boundary voxels within one voxel of a suspected error; NaN for an empty
        mask) and ``direction`` (``over-segmentation`` / ``under-segmentation`` / ``mixed`` / ``none``).
    """
    g = np.asarray(given) != 0
    e = np.asarray(errors)
    n_over, n_under = int(np.count_nonzero(e == REJECTED_FG)), int(np.count_nonzero(e == MISSED_FG))
    n_given = int(np.count_nonzero(g))
    # Corrected = given minus rejected plus missed: the overlap is the given mask minus the rejected part, the
    # corrected mask's extra voxels are the missed ones. Both empty: the model agrees with an empty mask.
    dice = dice_from_counts(n_given - n_over, n_under, n_over, empty=1.0)[0]
    edge = inner_boundary(g)
    n_edge = int(np.count_nonzero(edge))
    near = ndimage.binary_dilation(e != 0, ndimage.generate_binary_structure(3, 3))
    boundary_share = math.nan if n_edge == 0 else int(np.count_nonzero(edge & near)) / n_edge
    if n_over == n_under:
        direction = "none" if n_over == 0 else "mixed"
    else:
        direction = "over-segmentation" if n_over > n_under else "under-segmentation"
    ml = voxel_ml(affine)
    return {
        "dice": dice,
        "error_voxels": n_over + n_under,
        "error_ml": (n_over + n_under) * ml,
        "over_ml": n_over * ml,
        "under_ml": n_under * ml,
        "boundary_share": boundary_share,
        "direction": direction,
    }


def worst_slice(errors: np.ndarray, given: np.ndarray, axis: int = 2) -> int:
    """Index along ``axis`` of the slice with most suspected errors (most foreground if there are none)."""
    other = tuple(a for a in range(3) if a != axis)
    counts = np.count_nonzero(np.asarray(errors), axis=other)
    if not counts.any():
        counts = np.count_nonzero(np.asarray(given), axis=other)
    return int(np.argmax(counts)) if counts.any() else errors.shape[axis] // 2


def _check_threshold(threshold: float) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.5 < threshold < 1.0:
        raise UserError(f"--threshold must be a number between 0.5 and 1 (exclusive), got {threshold!r}")


# ----------------------------------------------------------------------------------------------------------
# Runs and who judges which case


@dataclass
class Judge:
    """A trained run and the cases it trained on (its fold's train split)."""

    path: Path
    cfg: Config
    fold: int | str  # a fold number, or "all" (trained on every case)
    train_ids: set[str] = field(default_factory=set)
    val_ids: set[str] = field(default_factory=set)

    @property
    def name(self) -> str:
        return self.path.name


def find_runs(run: str | Path, runs: list[str | Path] | None = None) -> list[Path]:
    """Run folders from ``run`` (a run, or a folder of fold runs) and the extra ``runs``, without repeats.

    Raises:
        UserError: a path that is neither a run folder (``config.yaml``) nor holds run folders.
    """
    found: list[Path] = []
    for item in [run, *(runs or [])]:
        path = Path(item)
        if not path.exists():
            raise UserError("run folder not found", path)
        if (path / "config.yaml").is_file():
            candidates = [path]
        elif path.is_dir():
            candidates = sorted(p for p in path.iterdir() if p.is_dir() and (p / "config.yaml").is_file())
            if not candidates:
                raise UserError("not a run folder (no config.yaml) and holds no run folders", path)
        else:
            raise UserError("not a run folder (no config.yaml)", path)
        for c in candidates:
            if c.resolve() not in [f.resolve() for f in found]:
                found.append(c)
    return found


def load_judges(run_dirs: list[Path], ds: Dataset) -> list[Judge]:
    """Each run with its fold's split of this dataset (``splits_final.json``, else the trainer's default).

    Raises:
        UserError: an unreadable config, a fold the splits lack, or two runs of the same fold.
    """
    ids = sorted(ds.case_ids)
    judges: list[Judge] = []
    owners = section_owners()
    for path in run_dirs:
        cfg = C.load_config([path / "config.yaml"], owners=owners, saved=True)
        fold, num_folds = parse_fold(cfg.data.fold), int(cfg.data.num_folds)
        # A run with trusted cases validated on them and did not use the splits (trusted_split).
        trusted = apply_trusted(ds, cfg.data.trusted).trusted_ids if not ds.trusted_ids else ds.trusted_ids
        if trusted:
            train_on = get_method(cfg.method).resolve_train_on(cfg)
            train_ids, val_ids = trusted_split(ids, trusted, fold, train_on)
        else:
            # Read the splits the trainer used, but never write splits_final.json into the user's dataset: the
            # trainer's default splits are reproducible from the fixed seed.
            splits = None if fold == ALL else load_or_create_splits(ds.root, ids, num_folds, write=False)
            try:
                train_ids, val_ids = fold_cases(splits, fold, ids)
            except UserError:
                raise UserError(
                    f"run trained fold {fold}, but the dataset's splits have {len(splits or [])} folds", path
                ) from None
        for other in judges:
            if other.fold == fold:
                raise UserError(f"two runs of fold {fold}: {other.path} and {path}; pass one run per fold")
        judges.append(Judge(path, cfg, fold, set(train_ids), set(val_ids)))
    return judges


def assign_judges(judges: list[Judge], case_ids: list[str]) -> dict[str, tuple[int, str]]:
    """Case id -> (index of the judging run, ``out_of_fold`` | ``in_fold``).

    A case is judged out-of-fold by the first run that did not train on it (its fold's validation case, or
    a case the splits do not name); only when every run trained on it is it judged in-fold (first run).
    """
    plan = {}
    for cid in case_ids:
        outside = [i for i, j in enumerate(judges) if cid not in j.train_ids]
        plan[cid] = (outside[0], "out_of_fold") if outside else (0, "in_fold")
    return plan


# ----------------------------------------------------------------------------------------------------------
# The given masks (the model's probabilities: svldrl.engine.predict.predict_probability)


def read_given(case: Case, data: Data, image_vol: Volume | None = None) -> tuple[np.ndarray, Volume]:
    """The given mask as binary uint8 and its volume (affine, header); an empty mask is allowed here.

    Raises:
        UserError: unreadable mask, a grid other than the image's, non-binary without ``foreground``.
    """
    if case.label is None:
        raise UserError(f"training case '{case.case_id}' has no mask", case.image)
    mask_vol = read_volume(case.label, key=case.label_key)
    if image_vol is not None:
        check_grid(image_vol, mask_vol, case.image, case.label)
    # An empty given mask may itself be the label error (a missed annotation), so it is judged, not refused.
    return check_mask(mask_vol.array, case.label, data.foreground, allow_empty=True), mask_vol


def _nifti_header(vol: Volume) -> Any:
    return vol.header if isinstance(vol.header, nib.Nifti1Header) else None


# ----------------------------------------------------------------------------------------------------------
# The audit


@dataclass
class AuditResult:
    """What an audit wrote: the output folder, the ranked rows (worst first) and the report files."""

    out: Path
    rows: list[dict[str, Any]]
    csv: Path
    markdown: Path
    html: Path
    figures: list[Path]


def check_out(out: Path, ds: Dataset, overwrite: bool = False) -> None:
    """Refuse an output folder that is, or lies inside, a folder of the user's images or masks, or that holds
    files the audit would replace (unless svldrl wrote them as an audit, or ``overwrite``).

    Raises:
        UserError: OUT is the dataset folder, lies in ``labelsTr*/``, ``imagesTr*/``, ``labelsTs``,
            ``imagesTs``, one of its output folders is a folder holding images or masks, or OUT holds
            other files the audit would replace.
    """
    ids = [c.case_id for c in ds.train]
    will_write = ["audit.csv", "audit.md", "audit.html"] + [
        f"{sub}/{cid}.{'png' if sub == 'figures' else 'nii.gz'}" for sub in OUTPUT_DIRS for cid in ids
    ]
    check_output_dir(out, "audit", will_write, overwrite, "--out")
    res = Path(os.path.abspath(out)).resolve()
    if res.exists() and not res.is_dir():
        raise UserError("--out must be a folder, but a file is there", out)
    root = Path(ds.root).resolve()
    if res == root:
        raise UserError("--out is the dataset folder; choose a separate folder for the audit", out)
    for part in res.parts:
        if part.startswith(("labelsTr", "imagesTr", "labelsTs", "imagesTs")):
            raise UserError(
                f"--out lies inside the dataset's '{part}' folder; choose a folder outside it", out
            )
    inputs = {
        Path(p).resolve().parent for c in ds.train + ds.test for p in (c.image, c.label) if p is not None
    }
    for sub in ("", *OUTPUT_DIRS):
        if (res / sub if sub else res) in inputs:
            raise UserError("--out (or its errors/, confidence/, corrected/ folder) holds dataset files", out)


def audit(
    run: str | Path,
    dataset: str | Path,
    out: str | Path,
    labels: str = "clean",
    runs: list[str | Path] | None = None,
    top: int = 10,
    threshold: float = 0.8,
    detector: str = "threshold",
    band: float = 3.0,
    device: str = "auto",
    checkpoint: str = "auto",
    batch: int | None = None,
    tta: bool = True,
    reporter: Reporter = QUIET,
    overwrite: bool = False,
) -> AuditResult:
    """Judge every training mask of ``dataset`` with trained runs and write the audit to ``out``.

    Args:
        run: a run folder, or a folder of fold runs (one per fold: cases are judged out-of-fold).
        dataset: the dataset (any layout :func:`~svldrl.data.dataset.load_dataset` reads).
        out: output folder (not inside the dataset's image or mask folders).
        labels: the masks to audit, ``"clean"`` (labelsTr) or ``"noisy/NAME"``.
        runs: more run folders (other folds).
        top: number of worst cases shown with figures in the reports.
        threshold: confidence ``T`` of the ``threshold`` detector.
        band: suspected errors are kept within this many voxels of the given mask's boundary (default 3;
            0 keeps all): see :func:`restrict_to_band`.
        detector: ``"threshold"`` or ``"cl"`` (confident learning).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        checkpoint: ``auto``, ``final``, ``best`` or ``latest``.
        batch: sliding-window batch (default: the run's ``infer.sw_batch``).
        tta: judge with the mean over the 8 mirrorings (nnU-Net's test-time augmentation, 8x the
            prediction time); a single pass when False.
        reporter: progress output.
        overwrite: replace files in ``out`` that svldrl did not write as an audit.

    Returns:
        An :class:`AuditResult`.

    Raises:
        UserError: a missing run or dataset, an unknown label set, a bad option or output folder.
    """
    _check_options(detector, threshold, top)
    ds = load_dataset(dataset, labels=labels)
    out = Path(out)
    check_out(out, ds, overwrite)
    judges = load_judges(find_runs(run, runs), ds)
    cases = sorted(ds.train, key=lambda c: c.case_id)
    plan = assign_judges(judges, [c.case_id for c in cases])
    n_in = sum(1 for _, how in plan.values() if how == "in_fold")
    reporter.info(
        f"audit: {len(cases)} cases ({labels} masks) with {len(judges)} run(s); "
        f"{len(cases) - n_in} judged out-of-fold, {n_in} in-fold; detector {detector}"
    )

    mark_output_dir(out, "audit", "--out")
    rows, sums, counts = _predict(
        out, cases, judges, plan, detector, threshold, band, device, checkpoint, batch, tta, reporter
    )
    t_cl = None
    if detector == "cl":
        t_cl = cl_thresholds(sums, counts)
        rows = _confident_learning(out, cases, judges, plan, t_cl, band, reporter)
    _rank(rows, judges, plan)
    figures = _figures(out, rows[:top], cases, judges, plan)
    meta = {
        "dataset": str(ds.root),
        "labels": labels,
        "detector": detector,
        "threshold": threshold if detector == "threshold" else None,
        "cl_thresholds": None if t_cl is None else [float(t) for t in t_cl],
        "runs": [_run_meta(j) for j in judges],
        "n_in_fold": n_in,
        "top": top,
        "tta": tta,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    csv_path = report.write_csv(out / "audit.csv", rows)
    md_path = report.write_markdown(out / "audit.md", rows, meta)
    html_path = report.write_html(out / "audit.html", rows, meta)
    reporter.info(f"audit: wrote {csv_path}, {md_path.name}, {html_path.name} and {len(figures)} figures")
    return AuditResult(out, rows, csv_path, md_path, html_path, figures)


def _run_meta(judge: Judge) -> dict[str, Any]:
    return {
        "run": str(judge.path),
        "fold": judge.fold,
        "method": judge.cfg.method,
        "trained_on": judge.cfg.labels,
    }


def _check_options(detector: str, threshold: float, top: int) -> None:
    if detector not in DETECTORS:
        raise UserError(f"--detector must be one of {', '.join(DETECTORS)}, got '{detector}'")
    _check_threshold(threshold)
    if isinstance(top, bool) or not isinstance(top, int) or top < 0:
        raise UserError(f"--top must be a non-negative integer, got {top!r}")


def _predict(
    out: Path,
    cases: list[Case],
    judges: list[Judge],
    plan: dict[str, tuple[int, str]],
    detector: str,
    threshold: float,
    band: float,
    device: str,
    checkpoint: str,
    batch: int | None,
    tta: bool,
    reporter: Reporter,
) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray]:
    """Each case's probability from its judge, written to ``OUT/confidence``; the ``threshold`` detector judges
    each case at once (its rows), ``cl`` sums the per-class confidences for its pooled thresholds."""
    rows: list[dict[str, Any]] = []
    sums, counts = np.zeros(2), np.zeros(2)
    t0, done = time.monotonic(), 0
    for ji, judge in enumerate(judges):
        mine = [c for c in cases if plan[c.case_id][0] == ji]
        if not mine:
            continue
        method, net, cfg = load_run(judge.path, checkpoint, device)
        for case in mine:
            image, _, image_vol = load_case(case, cfg.data, need_label=False)
            given, mask_vol = read_given(case, cfg.data, image_vol)
            p = predict_probability(method, net, cfg, image, batch, tta)
            write_nifti(
                out / "confidence" / f"{case.case_id}.nii.gz", p, mask_vol.affine, _nifti_header(mask_vol)
            )
            if detector == "threshold":
                errors = restrict_to_band(suspect_errors(given, p, threshold), given, band)
                rows.append(_judge_case(out, case, given, mask_vol, errors))
            else:
                s, c = class_confidence_sums(np.stack([1.0 - p, p]), given.astype(np.int64))
                sums, counts = sums + s, counts + c
            done += 1
            reporter.progress("audit: predict", done, len(cases), t0, extra=case.case_id)
        del net
    return rows, sums, counts


def _confident_learning(
    out: Path,
    cases: list[Case],
    judges: list[Judge],
    plan: dict[str, tuple[int, str]],
    t_cl: np.ndarray,
    band: float,
    reporter: Reporter,
) -> list[dict[str, Any]]:
    """The ``cl`` detector's rows with thresholds pooled over all cases (cleanlab's per-class mean
    self-confidence); the probabilities are read back from ``OUT/confidence``, so memory holds one case."""
    rows = []
    t0 = time.monotonic()
    for n, case in enumerate(cases, 1):
        given, mask_vol = read_given(case, judges[plan[case.case_id][0]].cfg.data)
        p = np.asarray(read_volume(out / "confidence" / f"{case.case_id}.nii.gz").array, dtype=np.float32)
        errors = restrict_to_band(cl_suspect_errors(given, p, t_cl), given, band)
        rows.append(_judge_case(out, case, given, mask_vol, errors))
        reporter.progress("audit: confident learning", n, len(cases), t0, extra=case.case_id)
    return rows


def _rank(rows: list[dict[str, Any]], judges: list[Judge], plan: dict[str, tuple[int, str]]) -> None:
    """Who judged each row, and the rows ranked in place, worst first (lowest Dice, then most error voxels)."""
    for row in rows:
        ji, how = plan[row["case"]]
        row.update(judged_by=how, fold=judges[ji].fold, run=judges[ji].name)
    rows.sort(key=lambda r: (r["dice"], -r["error_voxels"], r["case"]))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank


def _figures(
    out: Path,
    rows: list[dict[str, Any]],
    cases: list[Case],
    judges: list[Judge],
    plan: dict[str, tuple[int, str]],
) -> list[Path]:
    """An overlay figure for each of ``rows`` (the worst cases), named in its row."""
    figures = []
    by_id = {c.case_id: c for c in cases}
    for row in rows:
        case, judge = by_id[row["case"]], judges[plan[row["case"]][0]]
        image, _, _ = load_case(case, judge.cfg.data, need_label=False)
        given, _ = read_given(case, judge.cfg.data)
        errors = np.asarray(read_volume(out / "errors" / f"{case.case_id}.nii.gz").array)
        path = out / "figures" / f"{case.case_id}.png"
        report.save_overlay(path, image, given, errors, row)
        row["figure"] = f"figures/{case.case_id}.png"
        figures.append(path)
    return figures


def _judge_case(
    out: Path, case: Case, given: np.ndarray, mask_vol: Volume, errors: np.ndarray
) -> dict[str, Any]:
    """Write the error map and the corrected mask of one case; return its measures."""
    header = _nifti_header(mask_vol)
    write_nifti(out / "errors" / f"{case.case_id}.nii.gz", errors, mask_vol.affine, header)
    write_nifti(
        out / "corrected" / f"{case.case_id}.nii.gz", correct_mask(given, errors), mask_vol.affine, header
    )
    row = {"case": case.case_id, **case_measures(given, errors, mask_vol.affine)}
    # Kept for the figure: the slice to show and the voxel size for its aspect ratio.
    row["slice"] = worst_slice(errors, given)
    row["spacing"] = mask_vol.spacing
    return row
