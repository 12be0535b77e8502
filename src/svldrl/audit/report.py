"""Audit reports: ``audit.csv`` (the ranking), ``audit.md``, a self-contained ``audit.html`` (inline CSS,
no scripts, figures as relative PNG files) and the per-case overlay figures."""

from __future__ import annotations

import csv
import html
import io
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from svldrl.data.io import atomic_write, write_text
from svldrl.reporter import fmt_number

#: CSV column -> key of an audit row.
COLUMNS: dict[str, str] = {
    "rank": "rank",
    "case": "case",
    "dice_given_vs_corrected": "dice",
    "suspected_error_ml": "error_ml",
    "over_ml": "over_ml",
    "under_ml": "under_ml",
    "suspected_error_voxels": "error_voxels",
    "boundary_share": "boundary_share",
    "direction": "direction",
    "judged_by": "judged_by",
    "fold": "fold",
    "run": "run",
}
LEGEND = (
    "Suspected errors: red = labelled foreground the model rejects (type 1, over-segmentation), "
    "blue = foreground the mask misses (type 2, under-segmentation)."
)
COLUMN_HELP = (
    "dice_given_vs_corrected: Dice between the given mask and the corrected one (1 = the model agrees); "
    "suspected_error_ml: volume of the suspected errors (over_ml type 1 + under_ml type 2); boundary_share: "
    "share of the given mask's boundary voxels within one voxel of a suspected error; judged_by: "
    "out_of_fold (a model that never saw this mask) or in_fold (the model trained on it)."
)
IN_FOLD = (
    "{n} case(s) were judged in-fold: the judging model trained on these masks and has partly memorised "
    "them, so their errors are under-detected. Train the other folds (svldrl train --fold K) and pass the "
    "runs with --runs (or a folder of fold runs) to judge every case out-of-fold."
)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    """The ranking, worst case first, one row per case (columns :data:`COLUMNS`)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([fmt_number(row[k], 4, nan="") for k in COLUMNS.values()])
    return write_text(path, buf.getvalue())


def _settings_lines(meta: dict[str, Any]) -> list[str]:
    det = meta["detector"]
    if det == "threshold":
        det = f"threshold (T = {meta['threshold']}: p > T on background, p < 1 - T on foreground)"
    else:
        bg, fg = meta["cl_thresholds"]
        det = f"confident learning (pooled class thresholds: background {bg:.4f}, foreground {fg:.4f})"
    runs = "; ".join(
        f"{r['run']} (fold {r['fold']}, {r['method']}, trained on {r['trained_on']})" for r in meta["runs"]
    )
    return [
        f"Dataset: {meta['dataset']}",
        f"Masks audited: {meta['labels']}",
        f"Detector: {det}",
        f"Runs: {runs}",
        f"Date: {meta['date']}",
    ]


def write_markdown(path: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> Path:
    """``audit.md``: settings, the ranking table and the figures of the worst cases."""
    lines = ["# Label audit", ""]
    lines += [f"- {s}" for s in _settings_lines(meta)]
    lines.append("")
    if meta["n_in_fold"]:
        lines += [f"> {IN_FOLD.format(n=meta['n_in_fold'])}", ""]
    lines += [COLUMN_HELP, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = (fmt_number(row[k], 4, nan="").replace("|", "\\|") for k in COLUMNS.values())
        lines.append("| " + " | ".join(cells) + " |")
    shown = [r for r in rows if r.get("figure")]
    if shown:
        lines += [
            "",
            f"## The {len(shown)} worst cases",
            "",
            "Panels: image, given mask, suspected errors, "
            "corrected mask, on the slice with most suspected errors. " + LEGEND,
            "",
        ]
        for row in shown:
            lines += [
                f"### {row['rank']}. {row['case']} (Dice {row['dice']:.3f}, {row['direction']})",
                "",
                f"![{row['case']}]({quote(row['figure'])})",
                "",
            ]
    return write_text(path, "\n".join(lines).rstrip() + "\n")


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto;
       max-width: 1200px; color: #1d2330; background: #fff; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
ul.settings { color: #444; padding-left: 1.2em; }
.note { background: #fff6d6; border-left: 4px solid #e0a800; padding: 0.6em 1em; margin: 1em 0; }
.help { color: #555; font-size: 0.9em; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-size: 0.85em; margin: 1em 0; }
th, td { border-bottom: 1px solid #dde1e8; padding: 0.3em 0.5em; text-align: right; white-space: nowrap; }
th { background: #eef1f6; white-space: normal; vertical-align: bottom; }
td.text, th.text { text-align: left; }
tr.in_fold td { color: #7a6200; }
td.bad { background: #fbe0e0; }
figure { margin: 1.5em 0; border: 1px solid #dde1e8; padding: 0.6em; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { font-size: 0.9em; color: #333; margin-top: 0.4em; }
.legend span { display: inline-block; width: 0.9em; height: 0.9em; vertical-align: middle; margin: 0 0.3em; }
"""


def write_html(path: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> Path:
    """``audit.html``: inline CSS, no scripts; the figures are the relative PNGs in ``figures/``."""
    e = html.escape
    text_cols = {"case", "direction", "judged_by", "run"}
    # <wbr> lets the long CSV column names break at their underscores instead of widening the table.
    head = "".join(
        f'<th class="{"text" if c in text_cols else ""}">{e(c).replace("_", "_<wbr>")}</th>' for c in COLUMNS
    )
    body = []
    for row in rows:
        cells = []
        for col, key in COLUMNS.items():
            cls = "text" if col in text_cols else ""
            if key == "dice" and row["dice"] < 0.9:
                cls = "bad"
            value = fmt_number(row[key], 4, nan="")
            if key == "case" and row.get("figure"):
                value = f'<a href="#{e(quote(row["case"]))}">{e(value)}</a>'
            else:
                value = e(value)
            cells.append(f'<td class="{cls}">{value}</td>')
        body.append(f'<tr class="{e(row["judged_by"])}">{"".join(cells)}</tr>')
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Label audit: {e(meta['labels'])}</title><style>{CSS}</style></head><body>",
        "<h1>Label audit</h1>",
        '<ul class="settings">' + "".join(f"<li>{e(s)}</li>" for s in _settings_lines(meta)) + "</ul>",
    ]
    if meta["n_in_fold"]:
        parts.append(f'<p class="note">{e(IN_FOLD.format(n=meta["n_in_fold"]))}</p>')
    parts += [
        f'<p class="help">{e(COLUMN_HELP)}</p>',
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>',
        f"<tbody>{''.join(body)}</tbody></table></div>",
    ]
    shown = [r for r in rows if r.get("figure")]
    if shown:
        parts += [
            f"<h2>The {len(shown)} worst cases</h2>",
            '<p class="legend">Panels: image, given mask, suspected errors, corrected mask, on the slice '
            'with most suspected errors. <span style="background:#e8262b"></span>labelled foreground the '
            'model rejects (type 1) <span style="background:#2b6fe8"></span>foreground the mask misses '
            "(type 2)</p>",
        ]
        for row in shown:
            cid = e(row["case"])
            parts.append(
                f'<figure id="{e(quote(row["case"]))}"><img src="{e(quote(row["figure"]))}" '
                f'alt="{cid}: image, given mask, suspected errors, corrected mask" width="1200">'
                f"<figcaption><b>{row['rank']}. {cid}</b>: Dice given vs corrected {row['dice']:.3f}, "
                f"suspected errors {row['error_ml']:.3f} ml ({e(row['direction'])}), "
                f"judged {e(row['judged_by'].replace('_', '-'))} (fold {row['fold']}), "
                f"slice k = {row['slice']}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return write_text(path, "\n".join(parts) + "\n")


def save_overlay(
    path: Path, image: np.ndarray, given: np.ndarray, errors: np.ndarray, row: dict[str, Any]
) -> Path:
    """PNG of four panels on slice ``row["slice"]`` (third axis): image, given, suspected errors, corrected.

    Args:
        path: the PNG to write.
        image: normalised image (values in [0, 1]).
        given: binary given mask.
        errors: suspected-error map (0, 1 rejected foreground, 2 missed foreground).
        row: the case's audit row (``slice``, ``spacing``, ``case``, ``dice``).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    k = int(row["slice"])
    # Arrays are (i, j, k); transposed so i runs left-right and j bottom-up, as viewers show axial slices.
    img, giv, err = (np.asarray(a)[:, :, k].T for a in (image, given, errors))
    corrected = (giv != 0) ^ (err != 0)
    sx, sy = row["spacing"][0], row["spacing"][1]
    green = ListedColormap(["#00000000", "#2fd05a"])
    error_cmap = ListedColormap(["#00000000", "#e8262b", "#2b6fe8"])
    fig = Figure(figsize=(12, 3.4), dpi=100)
    FigureCanvasAgg(fig)
    aspect = sy / sx

    def show(ax: Any, arr: np.ndarray, cmap: Any, alpha: float, vmax: float) -> None:
        # Zero is masked out, so an overlay shows only its labelled voxels over the image.
        data = np.ma.masked_equal(arr.astype(np.uint8), 0)
        ax.imshow(
            data,
            cmap=cmap,
            origin="lower",
            aspect=aspect,
            alpha=alpha,
            vmin=0,
            vmax=vmax,
            interpolation="nearest",
        )

    for n, title in enumerate(("image", "given mask", "suspected errors", "corrected mask")):
        ax = fig.add_subplot(1, 4, n + 1)
        ax.imshow(
            img, cmap="gray", origin="lower", aspect=aspect, vmin=0.0, vmax=1.0, interpolation="nearest"
        )
        if n == 1:
            show(ax, giv, green, 0.45, 1)
        elif n == 2:
            if giv.any():
                ax.contour(giv.astype(float), levels=[0.5], colors="#ffd400", linewidths=0.8, origin="lower")
            show(ax, err, error_cmap, 0.8, 2)
        elif n == 3:
            show(ax, corrected, green, 0.45, 1)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        f"{row['case']}  (slice k = {k}, Dice given vs corrected {row['dice']:.3f}; yellow line: given mask)",
        fontsize=10,
    )
    fig.tight_layout()

    def _write(tmp: str) -> None:
        fig.savefig(tmp, format="png")

    return atomic_write(path, _write)
