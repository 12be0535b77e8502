"""The learning curve of plain training on clean masks, from a benchmark folder of budget variants.

Reads ``DIR/results.csv`` (rows of the ``clean`` setting whose methods train ``supervised`` at different
``iterations``, e.g. ``benchmarks/phantom_converged_curve.yaml``) and writes ``OUT/learning_curve.csv``,
``learning_curve.md`` (mean ± std of test Dice over seeds per budget, the gain of each doubling, and whether
the budget is on the plateau of docs/method.md section 11: doubling it gains < 1.5 Dice points) and
``learning_curve.png``.

    python benchmarks/learning_curve.py benchmarks/results/phantom_converged_curve \
        --out benchmarks/results/phantom_converged [--budget 2000]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from svldrl.data.io import write_text
from svldrl.reporter import fmt_mean_std

PLATEAU_GAIN = 1.5  # Dice points a doubling of the budget may still add on the plateau


def read_curve(folder: Path) -> dict[int, list[float]]:
    """iterations -> test Dice (%) of each seed, from the ``clean`` rows of ``supervised`` runs."""
    rows = list(csv.DictReader(open(folder / "results.csv")))
    curve: dict[int, list[float]] = defaultdict(list)
    for r in rows:
        if r["noise"] == "clean" and r["base_method"] == "supervised" and r["dice"] not in ("", "nan"):
            curve[int(r["iterations"])].append(100.0 * float(r["dice"]))
    if not curve:
        sys.exit(f"{folder}/results.csv has no clean supervised rows")
    return dict(sorted(curve.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", help="benchmark folder with results.csv")
    ap.add_argument("--out", required=True, help="folder for learning_curve.*")
    ap.add_argument("--budget", type=int, default=None, help="the budget chosen (marked in the table)")
    a = ap.parse_args()
    folder, out = Path(a.folder), Path(a.out)
    curve = read_curve(folder)
    budgets = list(curve)
    means = {b: float(np.mean(v)) for b, v in curve.items()}
    stds = {b: float(np.std(v, ddof=1)) if len(v) > 1 else math.nan for b, v in curve.items()}
    rows = []
    for b in budgets:
        double = 2 * b
        gain = means[double] - means[b] if double in means else math.nan
        rows.append(
            {
                "iterations": b,
                "seeds": len(curve[b]),
                "dice_mean": means[b],
                "dice_std": stds[b],
                "gain_of_doubling": gain,
                "plateau": "" if math.isnan(gain) else ("yes" if gain < PLATEAU_GAIN else "no"),
            }
        )
    lines = ["iterations,seeds,dice_mean,dice_std,gain_of_doubling,plateau"]
    lines += [
        f"{r['iterations']},{r['seeds']},{r['dice_mean']:.4f},{r['dice_std']:.4f},{r['gain_of_doubling']:.4f},"
        f"{r['plateau']}"
        for r in rows
    ]
    write_text(out / "learning_curve.csv", "\n".join(lines) + "\n")
    cmd = "python benchmarks/learning_curve.py " + " ".join(sys.argv[1:])
    md = [
        f"Plain training (`supervised`) on the clean masks, test Dice (%) on the clean test cases, mean ± std "
        f"over seeds; read from `{folder}/results.csv` ({datetime.date.today().isoformat()}). A budget is on the "
        f"plateau when doubling it gains < {PLATEAU_GAIN} Dice points (docs/method.md section 11). "
        f"Command: `{cmd}`",
        "",
        "| iterations | seeds | test Dice | gain of doubling | on the plateau |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        mark = " (chosen)" if a.budget == r["iterations"] else ""
        gain = "" if math.isnan(r["gain_of_doubling"]) else f"{r['gain_of_doubling']:+.2f}"
        std = None if math.isnan(r["dice_std"]) else r["dice_std"]
        md.append(
            f"| {r['iterations']}{mark} | {r['seeds']} | {fmt_mean_std(r['dice_mean'], std, 2)} | {gain} | "
            f"{r['plateau'] or 'n/a'} |"
        )
    md += ["", "![learning curve](learning_curve.png)"]
    write_text(out / "learning_curve.md", "\n".join(md) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=110)
    for b in budgets:
        ax.scatter([b] * len(curve[b]), curve[b], color="tab:gray", s=12, zorder=2)
    ax.errorbar(budgets, [means[b] for b in budgets], yerr=[stds[b] for b in budgets], marker="o", capsize=3)
    if a.budget:
        ax.axvline(a.budget, color="tab:red", ls="--", lw=1, label=f"budget {a.budget}")
        ax.legend(loc="lower right")
    ax.set_xscale("log", base=2)
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.set_xlabel("iterations")
    ax.set_ylabel("test Dice (%), clean masks")
    ax.set_title("Plain training on clean masks", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "learning_curve.png")
    print("\n".join(md))


if __name__ == "__main__":
    main()
