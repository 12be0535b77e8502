"""The report of a benchmark folder: ``results.csv`` (one row per run), ``results.md`` (mean ± std over seeds,
the gap each noise setting opens, all metrics, the settings, peer rows) and ``plots/``."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from svldrl import __version__
from svldrl import config as C
from svldrl.bench.data import Data
from svldrl.bench.plan import Run, non_default_settings
from svldrl.bench.run import now, num
from svldrl.bench.spec import CLEAN, Benchmark
from svldrl.data.io import read_json, write_text
from svldrl.reporter import fmt_mean_std, fmt_number, fmt_seconds
from svldrl.settings import Config

ERROR_NAME = "error.txt"
#: One row per run; ``fold`` is empty without cross-validation. Dice/IoU are fractions, HD95/ASD mm.
CSV_COLUMNS = (
    "method",
    "noise",
    "seed",
    "fold",
    "base_method",
    "labels",
    "dice",
    "iou",
    "hd95",
    "asd",
    "label_dice",
    "n_test",
    "dice_val_selected",
    "iou_val_selected",
    "hd95_val_selected",
    "asd_val_selected",
    "best_epoch",
    "epochs",
    "iterations",
    "train_seconds",
    "predict_seconds",
)
#: Beside ``results.csv``: run label -> the settings of that row's run that are not at their default.
SETTINGS_NAME = "results_settings.json"
METRICS = (
    "dice",
    "iou",
    "hd95",
    "asd",
    "dice_val_selected",
    "iou_val_selected",
    "hd95_val_selected",
    "asd_val_selected",
    "train_seconds",
    "predict_seconds",
)


def aggregate(results: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(setting, method) -> ``n`` and per metric ``(mean, std)`` over seeds; folds averaged within a seed."""
    per_seed: dict[tuple[str, str, int], list[dict]] = defaultdict(list)
    for r in results:
        per_seed[(r["noise"], r["method"], r["seed"])].append(r)
    grouped: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)
    for (noise, method, _seed), rows in per_seed.items():
        grouped[(noise, method)].append(
            {m: _nanmean([num(r.get(m), math.nan) for r in rows]) for m in METRICS}
        )
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for key, seeds in grouped.items():
        stats: dict[str, Any] = {"n": len(seeds)}
        for m in METRICS:
            vals = [s[m] for s in seeds if not math.isnan(s[m])]
            mean = float(np.mean(vals)) if vals else math.nan
            std = float(np.std(vals, ddof=1)) if len(vals) > 1 else (0.0 if vals else math.nan)
            stats[m] = (mean, std)
        out[key] = stats
    return out


def _nanmean(values: list[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def result_label(r: dict[str, Any]) -> str:
    """A result's run label, ``<setting>/<method>/seed<k>[/fold<f>]`` (:attr:`svldrl.bench.plan.Run.label`)."""
    fold = "" if r.get("fold") in (None, "") else f"/fold{r['fold']}"
    return f"{r['noise']}/{r['method']}/seed{r['seed']}{fold}"


def write_csv(path: Path, results: list[dict[str, Any]]) -> Path:
    """``results.csv``: one row per completed run; beside it :data:`SETTINGS_NAME`, each row's settings that
    are not at their default (a run's ``config``, or those a row kept from an earlier table carries)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    settings = {}
    for r in results:
        writer.writerow(["" if r.get(c) is None else fmt_number(r.get(c)) for c in CSV_COLUMNS])
        kept = non_default_settings(r["config"]) if isinstance(r.get("config"), dict) else r.get("settings")
        if isinstance(kept, dict):
            settings[result_label(r)] = kept
    # one run per line: a table of 100+ runs stays readable and its diffs small
    lines = [f"  {json.dumps(k)}: {json.dumps(v, sort_keys=True)}" for k, v in sorted(settings.items())]
    write_text(path.with_name(SETTINGS_NAME), "{\n" + ",\n".join(lines) + ("\n}\n" if lines else "}\n"))
    return write_text(path, buf.getvalue())


def _pct(stat: tuple[float, float] | None, n: int = 1) -> str:
    """A Dice / IoU fraction as ``mean ± std`` in %, the mean alone for one seed."""
    return "n/a" if stat is None else fmt_mean_std(stat[0], stat[1] if n > 1 else None, 2, scale=100.0)


def _mm(stat: tuple[float, float] | None, n: int = 1) -> str:
    """A distance in mm as ``mean ± std``, the mean alone for one seed."""
    return "n/a" if stat is None else fmt_mean_std(stat[0], stat[1] if n > 1 else None, 2)


def machine_description() -> str:
    """One line naming the platform, CPUs, torch threads, versions and device (for reports)."""
    import torch

    device = "CPU"
    if torch.cuda.is_available():
        device = f"GPU {torch.cuda.get_device_name(0)}"
    return (
        f"{platform.platform()}, {os.cpu_count()} CPUs ({torch.get_num_threads()} torch threads), "
        f"Python {platform.python_version()}, torch {torch.__version__}, svldrl {__version__}, {device}"
    )


def write_report(
    bench: Benchmark,
    out: Path,
    data: Data,
    runs: list[Run],
    results: list[dict[str, Any]],
    started: float,
    trained: int,
    command: str | None,
    failed: list[tuple[Run, str]] | None = None,
    carried: int = 0,
) -> Path:
    """Write ``results.csv``, ``results.md`` and ``plots/``; returns the path of ``results.md``.

    ``carried``: how many of ``results`` are rows kept from an earlier ``results.csv`` (no run folder here).
    """
    from svldrl.bench import plots

    write_csv(out / "results.csv", results)
    agg = aggregate(results)
    settings = [CLEAN, *(n.name for n in bench.noise)]
    methods = list(dict.fromkeys([*(m.name for m in bench.methods), *bench.methods_on_clean]))
    plot_files = plots.write_plots(out / "plots", bench, agg, settings, methods, data.label_dice)
    cmd = command or f"svldrl.bench.run_benchmark({str(bench.path)!r}, {str(out)!r})"
    cfg = runs[0].cfg if runs else C.load_config()
    lines = _header(bench, data, cfg, cmd, _this_call(runs, results, started, trained, carried))
    lines += _score_sections(bench, data, agg, settings, methods)
    lines += _methods_section(bench, results)
    lines += _peer_section(out, agg)
    lines += _closing_sections(runs, results, failed, plot_files)
    return write_text(out / "results.md", "\n".join(lines))


Aggregate = dict[tuple[str, str], dict[str, Any]]


def _stat(agg: Aggregate, setting: str, method: str, metric: str) -> tuple[float, float] | None:
    s = agg.get((setting, method))
    return None if s is None else s[metric]


def _n(agg: Aggregate, setting: str, method: str) -> int:
    s = agg.get((setting, method))
    return 0 if s is None else s["n"]


def _this_call(
    runs: list[Run], results: list[dict[str, Any]], started: float, trained: int, carried: int
) -> str:
    """When, how long this call took and what it trained; how long all runs took."""
    run_time = sum(num(r.get("train_seconds")) + num(r.get("predict_seconds")) for r in results)
    wall = time.monotonic() - started
    return (
        f"{now()}; wall time of this call {fmt_seconds(wall)} ({trained} run(s) trained now, "
        f"{len(results)}/{len(runs)} complete"
        + (
            f", {carried} of them kept from the earlier results.csv without their run folders"
            if carried
            else ""
        )
        + "); summed training + prediction time of all runs "
        f"{fmt_seconds(run_time)}"
    )


def _header(bench: Benchmark, data: Data, cfg: Config, cmd: str, this_call: str) -> list[str]:
    """Title, how the table was made (command, date, machine, data, budget, seeds) and how to read it."""
    lines = [f"# Benchmark: {bench.name}", ""]
    if bench.description:
        lines += [bench.description, ""]
    return lines + [
        f"- Command: `{cmd}`",
        f"- Config: `{bench.path}`",
        f"- Date: {this_call}",
        f"- Machine: {machine_description()}",
        f"- Dataset: {data.description}",
        f"- Budget: {_budget(cfg)}",
        f"- Seeds: {', '.join(map(str, bench.seeds))} (training); noise seed {bench.noise_seed} "
        "(every method sees the same noisy masks)",
        "",
        "Scores are on the clean test masks: Dice and IoU in %, HD95 and ASD in mm, mean ± sample std over "
        "seeds of each seed's mean over test cases"
        + (" (folds averaged within a seed)" if bench.cv else "")
        + ". The primary columns use the final checkpoint, as nnU-Net reports; *val-selected* uses the "
        "checkpoint with the best Dice on the validation split carved from the training cases, scored "
        "against their noisy masks as a user would have them (never the test set)"
        + (
            "; on a setting with trusted cases (params trusted=N), on those cases and their clean masks instead "
            "(they are held out from training, except for MTCL, whose clean subset they are)"
            if any(n.trusted for n in bench.noise)
            else ""
        )
        + ".",
        "",
    ]


def _budget(cfg: Config) -> str:
    """The training budget every method gets, in one line."""
    tc, nc = cfg.train, cfg.nets
    return (
        f"{tc.iterations} iterations per run for every method "
        f"(batch {tc.batch}, patch {tc.patch}^3, "
        f"{tc.steps_per_epoch} steps per epoch, validation every {tc.val_every} epoch(s)); "
        f"backbone {nc.backbone}"
        + (f" features {nc.features}" if nc.backbone == "unet" else f" feature_size {nc.feature_size}")
    )


def _score_sections(
    bench: Benchmark, data: Data, agg: Aggregate, settings: list[str], methods: list[str]
) -> list[str]:
    """Where noise hurts (with noise settings), Dice by method and setting, all metrics, the noise settings."""
    from svldrl.eval.summary import markdown_table

    lines: list[str] = []
    if bench.noise:  # a benchmark without noise settings (e.g. a normalisation check) has no gap to show
        gap_rows = _gap_rows(bench, data, agg, methods)
        lines += [
            "## Where noise hurts",
            "",
            "The gap is supervised training on clean masks minus supervised training on the noisy masks "
            "(Dice points): a method can only recover what this gap leaves.",
            "",
            markdown_table(gap_rows, list(gap_rows[0]) if gap_rows else ["setting"]),
            "",
        ]
    long_rows = _long_rows(agg, settings, methods)
    noise_rows = _noise_rows(bench, data)
    return lines + [
        "## Dice by method and setting (final checkpoint)",
        "",
        "The `clean` column is the oracle (trained on the clean masks)."
        if bench.noise
        else "Every method here trains on the clean masks.",
        "",
        markdown_table(_wide_rows(data, agg, settings, methods), ["method", *settings]),
        "",
        "## All metrics",
        "",
        markdown_table(long_rows, list(long_rows[0]) if long_rows else ["setting", "method"]),
        "",
        "## Noise settings",
        "",
        "Label Dice: mean Dice (%) of the noisy training masks against the clean ones, from each set's "
        "noise report; a noise level is only comparable between papers through this number.",
        "",
        markdown_table(noise_rows, list(noise_rows[0])),
        "",
    ]


def _gap_rows(bench: Benchmark, data: Data, agg: Aggregate, methods: list[str]) -> list[dict[str, str]]:
    """Per noise setting: supervised on clean minus on noisy masks, and the best other method's gain."""
    sup = "supervised"
    rows = []
    for s in bench.noise:
        clean, noisy = _stat(agg, CLEAN, sup, "dice"), _stat(agg, s.name, sup, "dice")
        gap = None if clean is None or noisy is None else clean[0] - noisy[0]
        best = max(
            (
                (m, _stat(agg, s.name, m, "dice"))
                for m in methods
                if m != sup and _stat(agg, s.name, m, "dice") is not None
            ),
            key=lambda t: t[1][0] if not math.isnan(t[1][0]) else -1.0,
            default=(None, None),
        )
        rows.append(
            {
                "setting": s.name,
                "label Dice": f"{100 * data.label_dice[s.name]:.2f}",
                "supervised on clean": _pct(clean, _n(agg, CLEAN, sup)),
                "supervised on noisy": _pct(noisy, _n(agg, s.name, sup)),
                "gap (clean − noisy)": "n/a" if gap is None else f"{100 * gap:+.2f}",
                "best other method": best[0] or "n/a",
                "its Dice": _pct(best[1], _n(agg, s.name, best[0]) if best[0] else 0),
                "gain over supervised": "n/a"
                if best[1] is None or noisy is None
                else f"{100 * (best[1][0] - noisy[0]):+.2f}",
            }
        )
    return rows


def _noise_rows(bench: Benchmark, data: Data) -> list[dict[str, str]]:
    """The oracle and each noise setting: protocol, ratio, parameters, label Dice, voxel error rate."""
    return [
        {
            "setting": f"{CLEAN} (oracle)",
            "protocol": "-",
            "ratio": "0",
            "params": "-",
            "label Dice": "100.00",
            "voxel error rate": "0",
        }
    ] + [
        {
            "setting": s.name,
            "protocol": s.protocol,
            "ratio": f"{s.ratio:g}",
            "params": ", ".join(
                [f"{k}={v}" for k, v in s.params.items()] + ([f"trusted={s.trusted}"] if s.trusted else [])
            )
            or "-",
            "label Dice": f"{100 * data.label_dice[s.name]:.2f}",
            "voxel error rate": f"{data.voxel_error[s.name]:.4f}",
        }
        for s in bench.noise
    ]


def _wide_rows(data: Data, agg: Aggregate, settings: list[str], methods: list[str]) -> list[dict[str, str]]:
    """Dice of each method (rows) in each setting (columns), and the training masks' label Dice."""
    rows = []
    for m in methods:
        row = {"method": m}
        for s in settings:
            row[s] = _pct(_stat(agg, s, m, "dice"), _n(agg, s, m)) if (s, m) in agg else ""
        rows.append(row)
    label_row = {"method": "*label Dice of the training masks*"}
    label_row.update({s: f"{100 * data.label_dice[s]:.2f}" for s in settings})
    return rows + [label_row]


def _long_rows(agg: Aggregate, settings: list[str], methods: list[str]) -> list[dict[str, str]]:
    """Every metric of every (setting, method) with results."""
    rows = []
    for s in settings:
        for m in methods:
            if (s, m) not in agg:
                continue
            n = _n(agg, s, m)
            rows.append(
                {
                    "setting": f"{s} (oracle)" if s == CLEAN else s,
                    "method": m,
                    "Dice": _pct(_stat(agg, s, m, "dice"), n),
                    "IoU": _pct(_stat(agg, s, m, "iou"), n),
                    "HD95 (mm)": _mm(_stat(agg, s, m, "hd95"), n),
                    "ASD (mm)": _mm(_stat(agg, s, m, "asd"), n),
                    "Dice, val-selected": _pct(_stat(agg, s, m, "dice_val_selected"), n),
                    "IoU, val-selected": _pct(_stat(agg, s, m, "iou_val_selected"), n),
                    "seeds": str(n),
                    "train s/run": f"{_stat(agg, s, m, 'train_seconds')[0]:.0f}",
                }
            )
    return rows


def _methods_section(bench: Benchmark, results: list[dict[str, Any]]) -> list[str]:
    """Each method's overrides and cost against plain training, and the shared overrides."""
    from svldrl.eval.summary import markdown_table

    overrides = [
        {
            "method": m.name,
            "registered method": m.method,
            "overrides": " ".join(m.overrides) or "-",
            **_cost(results, m.name),
        }
        for m in bench.methods
    ]
    return [
        "## Methods",
        "",
        markdown_table(overrides, ["method", "registered method", "overrides", "train s/run", "x plain"]),
        "",
        "Cost: mean training seconds per run over the completed runs (the machine's load included), and its "
        "ratio to plain training's (`supervised`) over the runs of the same settings and seeds.",
        "",
        f"Shared overrides (`base`): `{' '.join(bench.base) or '-'}`",
        "",
    ]


def _closing_sections(
    runs: list[Run],
    results: list[dict[str, Any]],
    failed: list[tuple[Run, str]] | None,
    plot_files: list[Path],
) -> list[str]:
    """Failed and missing runs, the plots, and where the per-run numbers are."""
    have = {(r["noise"], r["method"], r["seed"], r.get("fold")) for r in results}
    missing = [r for r in runs if (r.noise, r.method.name, r.seed, r.fold) not in have]
    lines: list[str] = []
    if failed:
        lines += ["## Failed runs", ""] + [
            f"- {r.label}: {msg} (`{r.dir / ERROR_NAME}`)" for r, msg in failed
        ]
        lines += [""]
    if missing:
        shown = ", ".join(r.label for r in missing[:10])
        lines += [
            "## Missing runs",
            "",
            f"{len(missing)} run(s) have no result yet: {shown}" + (" ..." if len(missing) > 10 else ""),
            "",
        ]
    if plot_files:
        lines += ["## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in plot_files] + [""]
    return lines + [
        "Per-run numbers: `results.csv`; each run's folder holds its training logs, predictions and "
        "`summary.json` files.",
        "",
    ]


def cost(results: list[dict[str, Any]], method: str, reference: str = "supervised") -> tuple[float, float]:
    """Mean training seconds per run of ``method`` over its completed runs, and the mean ratio of its runs' seconds
    to ``reference``'s on the same settings and seeds (so both are measured under the same conditions as far as
    the matrix allows); NaN where there is nothing to average."""
    mine = {
        (r["noise"], r["seed"], r.get("fold")): num(r.get("train_seconds"), math.nan)
        for r in results
        if r["method"] == method
    }
    plain = {
        (r["noise"], r["seed"], r.get("fold")): num(r.get("train_seconds"), math.nan)
        for r in results
        if r["method"] == reference
    }
    if not mine:
        return math.nan, math.nan
    both = [k for k in mine if k in plain and plain[k] > 0]
    ratio = float(np.mean([mine[k] / plain[k] for k in both])) if both else math.nan
    return float(np.nanmean(list(mine.values()))), ratio


def _cost(results: list[dict[str, Any]], method: str) -> dict[str, str]:
    """The Methods table's cost cells of ``method`` (:func:`cost` against plain training, ``supervised``)."""
    if not any(r["method"] == method for r in results):
        return {"train s/run": "", "x plain": ""}
    seconds, ratio = cost(results, method)
    return {
        "train s/run": f"{seconds:.0f}",
        "x plain": "" if math.isnan(ratio) else f"{ratio:.2f}",
    }


def _peer_section(out: Path, agg: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """External reference rows: ``OUT/peers/<peer>/<setting>/seed<k>/*_row.json`` (e.g. written by
    ``scripts/pymic_peer.py``), mean ± std over seeds beside our method of the same name's suffix."""
    from svldrl.eval.summary import markdown_table

    rows: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    commands = []
    for path in sorted((out / "peers").glob("*/*/seed*/*_row.json")):
        row = read_json(path, None)
        if isinstance(row, dict) and {"method", "noise", "dice"} <= set(row):
            rows[(row["noise"], row["method"])].append(row)
            commands.append(row.get("command"))
    if not rows:
        return []
    table = []
    for (noise, method), rs in sorted(rows.items()):
        n = len(rs)

        def ms(key: str, rs: list[dict[str, Any]] = rs) -> tuple[float, float]:
            v = [num(r.get(key), math.nan) for r in rs]
            return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0

        ours = method.split("_", 1)[-1]  # pymic_coteaching -> coteaching
        table.append(
            {
                "setting": noise,
                "peer": method,
                "Dice": _pct(ms("dice"), n),
                "IoU": _pct(ms("iou"), n),
                "HD95 (mm)": _mm(ms("hd95"), n),
                "Dice, val-selected": _pct(ms("dice_val_selected"), n),
                "seeds": str(n),
                f"ours ({ours})": _pct(agg[(noise, ours)]["dice"], agg[(noise, ours)]["n"])
                if (noise, ours) in agg
                else "n/a",
                "details": rs[0].get("peer", ""),
            }
        )
    example = next((c for c in commands if c), None)
    return [
        "## External reference (peer implementations)",
        "",
        "Not part of the matrix: another library's implementation run on the same split (fold 0 of the "
        "dataset's splits), the same noisy masks and the same clean test cases, scored by the same evaluator"
        + (f"; e.g. `{example}`" if example else "")
        + ".",
        "",
        markdown_table(table, list(table[0])),
        "",
    ]
