"""What SVL-DRL's agents did in a benchmark: per-epoch curves of every RL run, mean over seeds.

Reads ``OUT/runs/<noise>/<method>/seed<k>/metrics.csv`` of a finished (or running) benchmark folder and
writes ``OUT/rl_diagnostics.csv`` (one row per noise x method x epoch) and ``OUT/rl_diagnostics.md``:
stage, validation Dice on the (noisy) validation masks, the loss terms, the policy's entropy and action
shares, and the reward with its terms (method.md sections 4-6). The run folders are not committed; this
summary is. Rows of an earlier ``rl_diagnostics.csv`` for a noise x method with no run folder here (a fresh
clone, a search step run elsewhere) are kept, so that a search can be extended step by step.

    python benchmarks/rl_diagnostics.py benchmarks/results/svldrl_search_cpu
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

# metrics.csv column -> short header; the order is the table's
COLUMNS = {
    "stage": "stage",
    "val_dice": "val Dice",
    "losses/dice": "L_Dice",
    "losses/value": "L_value",
    "losses/policy": "L_policy",
    "charts/entropy": "entropy",
    "charts/action_frac/keep": "keep",
    "charts/action_frac/enhance": "enhance",
    "charts/action_frac/weaken": "weaken",
    "charts/reward": "reward",
    "charts/reward_terms/dice": "r_dice",
    "charts/reward_terms/voxel": "r_vox",
    "charts/reward_terms/continuity": "r_cont",
    "charts/reward_terms/teacher": "r_teacher",
    "charts/reward_terms/prior": "r_prior",
    "charts/target_changed": "target changed",
}


def _float(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def collect(out: Path) -> list[dict[str, object]]:
    """Rows (noise, method, epoch, iteration, seeds, columns...) averaged over the seeds of each run."""
    curves: dict[tuple[str, str, int], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(out.glob("runs/*/*/seed*/metrics.csv")):
        noise, method = path.parts[-4], path.parts[-3]
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or not any(k in rows[0] for k in ("charts/entropy", "losses/value")):
            continue  # not an RL run
        for row in rows:
            cell = curves[(noise, method, int(row["epoch"]))]
            cell["iteration"].append(_float(row.get("iteration")))
            for key in COLUMNS:
                cell[key].append(_float(row.get(key)))
    table = []
    for (noise, method, epoch), cell in sorted(curves.items()):
        entry: dict[str, object] = {
            "noise": noise,
            "method": method,
            "epoch": epoch,
            "iteration": int(np.nanmax(cell["iteration"])),
            "seeds": len(cell["iteration"]),
        }
        for key in COLUMNS:
            values = np.asarray(cell[key], dtype=float)
            entry[key] = float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
        table.append(entry)
    return table


def carried(out: Path, table: list[dict[str, object]]) -> list[dict[str, object]]:
    """``table`` plus the rows of an earlier ``rl_diagnostics.csv`` whose noise x method it does not have."""
    path = out / "rl_diagnostics.csv"
    if not path.is_file():
        return table
    have = {(row["noise"], row["method"]) for row in table}
    with path.open(newline="") as f:
        old = [row for row in csv.DictReader(f) if (row["noise"], row["method"]) not in have]
    kept = [
        {
            "noise": row["noise"],
            "method": row["method"],
            "epoch": int(row["epoch"]),
            "iteration": int(row["iteration"]),
            "seeds": int(row["seeds"]),
            **{key: _float(row.get(key)) for key in COLUMNS},
        }
        for row in old
    ]
    return sorted(table + kept, key=lambda row: (row["noise"], row["method"], row["epoch"]))


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.3g}"
    return str(value)


def _shown_path(out: Path) -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        return out.resolve().relative_to(root).as_posix()
    except ValueError:
        return out.name  # outside the repository: the folder name, never a machine's path


def write(out: Path, table: list[dict[str, object]]) -> None:
    """rl_diagnostics.csv and rl_diagnostics.md, each written atomically."""
    keys = ["noise", "method", "epoch", "iteration", "seeds", *COLUMNS]
    tmp = out / "rl_diagnostics.csv.tmp"
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(table)
    os.replace(tmp, out / "rl_diagnostics.csv")
    shown = [k for k in COLUMNS if any(not math.isnan(row[k]) for row in table)]  # type: ignore[arg-type]
    lines = [
        f"# RL diagnostics: {out.name}",
        "",
        "Mean over seeds per epoch (50 iterations each); `val Dice` is measured on the noisy validation masks. "
        "Actions: keep / enhance / weaken for intensity agents, keep / raise / lower for label agents. "
        "Rewards are before normalisation. Command: "
        f"`python benchmarks/rl_diagnostics.py {_shown_path(out)}`.",
        "",
    ]
    header = ["noise", "method", "epoch", "iteration", "seeds", *(COLUMNS[k] for k in shown)]
    lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in table:
        lines.append(
            "| "
            + " | ".join(_cell(row[k]) for k in ["noise", "method", "epoch", "iteration", "seeds", *shown])
            + " |"
        )
    tmp = out / "rl_diagnostics.md.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, out / "rl_diagnostics.md")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="benchmark folder (with runs/)")
    args = parser.parse_args(argv)
    if not (args.out / "runs").is_dir():
        print(f"error: {args.out} has no runs/ folder (run `svldrl benchmark` first)", file=sys.stderr)
        return 2
    table = collect(args.out)
    if not table:
        print(
            f"error: no RL runs (metrics.csv with policy or value losses) under {args.out / 'runs'}",
            file=sys.stderr,
        )
        return 2
    write(args.out, carried(args.out, table))
    print(f"{len(table)} rows -> {args.out / 'rl_diagnostics.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
