"""Evaluate a folder of predictions against a folder of references, nnU-Net v2 style.

Writes ``summary.json`` in nnU-Net v2's schema (``metric_per_case``, ``mean``, ``foreground_mean``)
with HD95 and ASD (mm) added to each label's metrics, and a per-case ``summary.csv`` beside it.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from svldrl.data.io import file_ending, read_json, read_volume, write_text
from svldrl.data.normalize import ForegroundCheck
from svldrl.data.outputs import check_writable_file, refuse_dataset_folder
from svldrl.errors import UserError
from svldrl.eval.metrics import METRIC_KEYS, case_metrics, empty_metrics
from svldrl.reporter import fmt_mean_std, fmt_number, report_warning

#: Files paired by case id; anything else in the folders (summary.json, plans.json, .npz) is ignored.
VOLUME_ENDINGS = (".nii.gz", ".nii", ".nrrd")
#: Affine entries may differ by this much (mm) between a prediction and its reference.
AFFINE_TOLERANCE = 1e-3
CSV_COLUMNS = ("case", "label", "Dice", "IoU", "HD95", "ASD", "n_pred", "n_ref")
_LIST_FIRST = 5
#: More distinct values than this in a reference means it is an image, not a label map.
MAX_LABELS = 255
# (metric, decimals) shown by format_table.
_TABLE_METRICS = (("Dice", 4), ("IoU", 4), ("HD95", 2), ("ASD", 2))


def evaluate_folders(
    pred_dir: str | Path,
    ref_dir: str | Path,
    out: str | Path | None = None,
    labels: Sequence[int] | None = None,
    foreground: Sequence[int] | None = None,
    reporter: Any = None,
    overwrite: bool = False,
) -> dict:
    """Score every prediction against the reference with the same case id and write the summary.

    Files are paired by case id, the file name without its ending (``.nii.gz``, ``.nii``, ``.nrrd``),
    so an nnU-Net ``labelsTs`` folder works as ``ref_dir``. Distances use the reference's spacing.

    Args:
        pred_dir: folder of predicted label maps.
        ref_dir: folder of reference label maps.
        out: where to write ``summary.json`` (default ``pred_dir/summary.json``); the CSV goes beside
            it with the ending ``.csv``.
        labels: label values to report; default the sorted non-zero values found in the references.
        foreground: reference label values merged into one foreground label 1 (binary evaluation of
            a multi-label reference); only label 1 is then reported. A prediction holding only 0/1 is
            used as is; one with other values is merged with the same list.
        reporter: anything with ``info(str)``; receives one line per case (and warnings through ``warn(str)``,
            Python warnings where it has none).
        overwrite: replace an existing ``out`` (or its CSV) that is not a summary svldrl wrote.

    Returns:
        The summary dict as written: ``metric_per_case`` (``case``, ``prediction_file``,
        ``reference_file``, ``metrics`` keyed by label string), ``mean`` per label and
        ``foreground_mean`` (NaN-ignoring means; Dice/IoU skip cases where the label is empty in
        both maps, HD95/ASD also skip cases where exactly one side is empty), plus ``case_counts``
        per label: ``n_cases``, ``both_empty`` and ``one_side_empty`` (the cases left out of the
        HD95/ASD means).

    Raises:
        UserError: a folder is missing or holds no volumes, a case lacks its partner, grids differ,
            a map is not an integer label map (or a reference looks like an image), a ``foreground`` label
            is absent from every reference, or most references holding labels hold none of ``foreground``'s
            (:class:`~svldrl.data.normalize.ForegroundCheck`; a few are warned about through ``reporter``),
            or ``out`` is a folder, lies in a dataset's image or mask folder, or would replace a file svldrl
            did not write.
    """
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    out = pred_dir / "summary.json" if out is None else Path(out)
    if foreground is not None:
        if labels is not None:
            raise UserError("give either labels or foreground, not both")
        foreground = [int(v) for v in foreground]
        if not foreground or 0 in foreground:
            raise UserError(f"foreground must list non-zero reference labels, got {foreground}")
    preds = _case_files(pred_dir, "prediction")
    refs = _case_files(ref_dir, "reference")
    _check_out(out, overwrite)
    _check_pairs(preds, refs, pred_dir, ref_dir)

    fixed_labels = [1] if foreground is not None else None if labels is None else [int(v) for v in labels]
    per_case: list[dict] = []
    found: set[int] = set()
    labels = ForegroundCheck(foreground)  # references holding labels but none of foreground's
    n_voxels: dict[str, int] = {}
    cases = sorted(refs)
    for i, case in enumerate(cases, 1):
        pred_vol, ref_vol = read_volume(preds[case]), read_volume(refs[case])
        _check_grid(pred_vol, ref_vol, preds[case], refs[case])
        pred = _label_map(pred_vol.array, preds[case])
        ref = _label_map(ref_vol.array, refs[case], reference=True)
        if foreground is not None:
            held = _present_labels(ref)
            found.update(v for v in foreground if v in held)
            labels.add_labels(case, held)
            ref = np.isin(ref, foreground).astype(np.uint8)
            if pred.min() < 0 or pred.max() > 1:
                pred = np.isin(pred, foreground).astype(np.uint8)
        if fixed_labels is not None:
            case_labels = fixed_labels
        else:
            # One pass over the data: score what this case holds; labels absent from both maps are
            # filled in afterwards without reading the volumes again.
            ref_labels = _present_labels(ref)
            found.update(ref_labels)
            case_labels = sorted(ref_labels | _present_labels(pred))
        metrics = case_metrics(pred, ref, ref_vol.spacing, case_labels)
        n_voxels[case] = int(ref.size)
        per_case.append(
            {
                "case": case,
                "prediction_file": str(preds[case]),
                "reference_file": str(refs[case]),
                "metrics": metrics,
            }
        )
        if reporter is not None:
            dice = ", ".join(f"{k}: {v['Dice']:.4f}" for k, v in metrics.items())
            reporter.info(f"evaluate {i}/{len(cases)} {case}  Dice {dice}")

    final_labels = fixed_labels if fixed_labels is not None else sorted(found)
    lacking = labels.check("references", "they would be scored as empty references", ref_dir)
    if lacking:
        report_warning(
            reporter,
            f"{len(lacking)} reference(s) hold other labels ({labels.held()}) but none of --foreground "
            f"{','.join(map(str, foreground))}: scored as empty references (structure absent): {_first(lacking)}",
        )
    if foreground is not None and not found:
        raise UserError(
            f"no reference holds any of the --foreground labels {foreground}; "
            "check the label values of the references",
            ref_dir,
        )
    if not final_labels:
        raise UserError("the references hold no non-zero label; pass labels to evaluate", ref_dir)
    for entry in per_case:
        metrics = entry["metrics"]
        entry["metrics"] = {
            str(k): metrics.get(k) or empty_metrics(n_voxels[entry["case"]]) for k in final_labels
        }

    summary = _summarise(per_case, [str(k) for k in final_labels])
    # json.dumps writes NaN as the bare token NaN, as nnU-Net's summary.json does.
    write_text(out, json.dumps(summary, indent=2) + "\n")
    csv_path = out.with_suffix(".csv")
    write_text(csv_path, _csv_text(per_case))
    if reporter is not None:
        reporter.info(f"wrote {out} and {csv_path}")
    return summary


def _case_files(folder: Path, role: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise UserError(f"{role} folder not found", folder)
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        # Hidden names include the temporary files of an atomic write still in progress.
        if path.name.startswith(".") or not path.is_file():
            continue
        ending = file_ending(path)
        if ending not in VOLUME_ENDINGS or not path.name.lower().endswith(ending):
            continue
        case = path.name[: -len(ending)]
        if case in files:
            raise UserError(f"two {role} files for case '{case}': {files[case].name} and {path.name}", folder)
        files[case] = path
    if not files:
        raise UserError(f"no {role} volumes ({', '.join(VOLUME_ENDINGS)}) in folder", folder)
    return files


def _check_pairs(preds: dict[str, Path], refs: dict[str, Path], pred_dir: Path, ref_dir: Path) -> None:
    missing = sorted(set(refs) - set(preds))
    if missing:
        raise UserError(
            f"{len(missing)} reference case(s) have no prediction in {pred_dir}: {_first(missing)}", ref_dir
        )
    extra = sorted(set(preds) - set(refs))
    if extra:
        raise UserError(
            f"{len(extra)} prediction(s) have no reference in {ref_dir}: {_first(extra)}", pred_dir
        )


def _first(names: list[str]) -> str:
    more = f", ... ({len(names) - _LIST_FIRST} more)" if len(names) > _LIST_FIRST else ""
    return ", ".join(names[:_LIST_FIRST]) + more


def _check_grid(pred_vol: Any, ref_vol: Any, pred_path: Path, ref_path: Path) -> None:
    if pred_vol.array.shape != ref_vol.array.shape:
        raise UserError(
            f"shape {tuple(pred_vol.array.shape)} does not match reference {ref_path} "
            f"shape {tuple(ref_vol.array.shape)}",
            pred_path,
        )
    if not np.allclose(pred_vol.affine, ref_vol.affine, rtol=0.0, atol=AFFINE_TOLERANCE):
        diff = float(np.abs(pred_vol.affine - ref_vol.affine).max())
        raise UserError(
            f"affine differs from reference {ref_path} by up to {diff:.4g} (tolerance {AFFINE_TOLERANCE}); "
            "resample the prediction onto the reference grid",
            pred_path,
        )


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse an output path that is a folder, lies in a dataset's image / mask folder, or would replace a
    file that is not an svldrl summary (``summary.json`` and the CSV beside it), unless ``overwrite``."""
    refuse_dataset_folder(out.parent, "--out")
    check_writable_file(out, "--out")
    if overwrite:
        return
    for path, ours in ((out, _is_summary_json), (out.with_suffix(".csv"), _is_summary_csv)):
        if path.is_dir():
            raise UserError("a folder is in the way of the per-case CSV; choose another --out", path)
        if path.exists() and not ours(path):
            raise UserError(
                "exists and was not written by svldrl evaluate; choose another --out or pass --overwrite",
                path,
            )


def _is_summary_json(path: Path) -> bool:
    data = read_json(path, None)
    return isinstance(data, dict) and {"metric_per_case", "foreground_mean"} <= set(data)


def _is_summary_csv(path: Path) -> bool:
    try:
        with open(path) as fh:
            return fh.readline().strip() == ",".join(CSV_COLUMNS)
    except (OSError, UnicodeDecodeError):
        return False


def _label_map(arr: np.ndarray, path: Path, reference: bool = False) -> np.ndarray:
    """Integer view of a label map; float maps are accepted only when every value is whole.

    A reference must also look like a label map: no negative values and at most :data:`MAX_LABELS` distinct
    values (an image given as the reference folder would otherwise be scored as thousands of labels).
    """
    if arr.dtype.kind in "iub":
        out = arr
    elif arr.dtype.kind == "f" and np.array_equal(arr, np.round(arr)):
        out = arr.astype(np.int32)
    else:
        raise UserError(f"not an integer label map (dtype {arr.dtype}, non-integer values)", path)
    if reference and out.size:
        if out.dtype.kind == "i" and out.min() < 0:
            raise UserError("not a label map: it holds negative values (is this an image?)", path)
        n = len(_present_labels(out))
        if n > MAX_LABELS:
            raise UserError(f"not a label map: it holds {n} distinct values (is this an image?)", path)
    return out


def _present_labels(arr: np.ndarray) -> set[int]:
    """Non-zero values of a label map; bincount is linear time, unique would sort the whole volume."""
    if arr.size == 0:
        return set()
    if arr.dtype.kind in "ub" or arr.min() >= 0:
        values = np.flatnonzero(np.bincount(arr.ravel().astype(np.int64, copy=False)))
    else:
        values = np.unique(arr)
    return {int(v) for v in values if v != 0}


def _nanmean(values: Sequence[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def _nanstd(values: Sequence[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.std(vals)) if vals else math.nan


def _summarise(per_case: list[dict], labels: list[str]) -> dict:
    mean: dict[str, dict[str, float]] = {}
    counts: dict[str, dict[str, int]] = {}
    for label in labels:
        rows = [entry["metrics"][label] for entry in per_case]
        mean[label] = {key: _nanmean([float(r[key]) for r in rows]) for key in METRIC_KEYS}
        both = sum(1 for r in rows if r["n_pred"] == 0 and r["n_ref"] == 0)
        one = sum(1 for r in rows if (r["n_pred"] == 0) != (r["n_ref"] == 0))
        counts[label] = {"n_cases": len(rows), "both_empty": both, "one_side_empty": one}
    # nnU-Net averages the per-label means over the labels other than background.
    fg = [label for label in labels if label != "0"]
    foreground_mean = {key: _nanmean([mean[label][key] for label in fg]) for key in METRIC_KEYS}
    return {
        "metric_per_case": per_case,
        "mean": mean,
        "foreground_mean": foreground_mean,
        "case_counts": counts,
    }


def _csv_text(per_case: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for entry in per_case:
        for label, m in entry["metrics"].items():
            writer.writerow([entry["case"], label, *(fmt_number(m[k]) for k in CSV_COLUMNS[2:])])
    return buf.getvalue()


def format_table(summary: Mapping[str, Any]) -> str:
    """A plain-text table of a summary: per label Dice, IoU, HD95 and ASD as mean ± std over cases.

    Args:
        summary: the dict returned by :func:`evaluate_folders` (or read back from ``summary.json``).

    Returns:
        Aligned text lines; a foreground-mean row when there are several labels, and a note for each
        label whose distances are undefined in some cases (empty prediction or reference).
    """
    per_case = summary["metric_per_case"]
    header = ["label", "Dice", "IoU", "HD95 (mm)", "ASD (mm)", "cases"]
    rows, notes = [], []
    for label in summary["mean"]:
        row = [label]
        for key, digits in _TABLE_METRICS:
            values = [float(entry["metrics"][label][key]) for entry in per_case]
            row.append(fmt_mean_std(_nanmean(values), _nanstd(values), digits, nan="nan"))
        rows.append([*row, str(len(per_case))])
        one = summary.get("case_counts", {}).get(label, {}).get("one_side_empty", 0)
        if one:
            notes.append(
                f"label {label}: HD95/ASD undefined in {one} case(s) with an empty prediction or reference"
            )
    if len(rows) > 1:
        fg = summary["foreground_mean"]
        rows.append(["foreground", *(fmt_number(fg[key], digits) for key, digits in _TABLE_METRICS), ""])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + notes)


def markdown_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | Mapping[str, str],
    floatfmt: str = ".4f",
) -> str:
    """A GitHub-flavoured Markdown table of ``rows``.

    Args:
        rows: one mapping per table row.
        columns: keys to show, in order; a mapping gives ``{key: header}`` to rename them.
        floatfmt: format spec for float cells; NaN shows as ``nan``, a missing key as an empty cell.

    Returns:
        The table text, header and separator line included, without a trailing newline.
    """
    headers = dict(columns) if isinstance(columns, Mapping) else {c: c for c in columns}

    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, float | np.floating):
            text = "nan" if math.isnan(value) else format(float(value), floatfmt)
        else:
            text = str(value)
        # A bare pipe would split the cell.
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [
        "| " + " | ".join(cell(h) for h in headers.values()) + " |",
        "|" + "|".join(" --- " for _ in headers) + "|",
    ]
    lines += ["| " + " | ".join(cell(row.get(k)) for k in headers) + " |" for row in rows]
    return "\n".join(lines)
