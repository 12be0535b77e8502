"""What the trusted corrections cost (the trusted shift's update, the mask agents' update), as a ratio to the same
run without them, measured inside each run.

The update runs every ``rl.shift_every`` (4) epochs after the warm-up, on the epochs that also validate (every 4th
with ``train.val_every`` 4). Each run's validating epochs before the warm-up (validation only) and after it
(validation and the update) give the update's extra seconds per call; the ratio is the run's total epoch time
over that total less the extra. Both kinds of epoch run in the same process minutes apart, so the ratio holds on a
shared machine where wall times do not.

    python benchmarks/shift_cost.py benchmarks/results/phantom_trusted benchmarks/results/real_anatomy_trusted \\
        --out benchmarks/results/shift_cost
"""

from __future__ import annotations

import argparse
import csv
import datetime
import platform
import statistics
import sys
from pathlib import Path

#: The column each update logs on the epochs it runs: the trusted shift's, the mask agents'.
UPDATE_COLUMNS = ("charts/shift_mm", "charts/agents_keep")


def run_ratio(metrics: Path) -> float | None:
    """Total epoch time over the same without the update's calls; None for a run that never called it."""
    rows = list(csv.DictReader(metrics.open()))
    val = [r for r in rows if r.get("val_dice") not in ("", "nan", None)]
    updated = [any(r.get(c) for c in UPDATE_COLUMNS) for r in val]
    shift = [float(r["epoch_time"]) for r, u in zip(val, updated, strict=True) if u]
    plain = [float(r["epoch_time"]) for r, u in zip(val, updated, strict=True) if not u]
    if not shift or not plain:
        return None
    total = sum(float(r["epoch_time"]) for r in rows)
    extra = len(shift) * (statistics.mean(shift) - statistics.mean(plain))
    return total / (total - extra)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "folders", nargs="+", type=Path, help="benchmark folders with runs/<setting>/<row>/seed<k>/"
    )
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    rows = []
    for folder in a.folders:
        for metrics in sorted(folder.glob("runs/*/*/seed*/metrics.csv")):
            ratio = run_ratio(metrics)
            if ratio is not None:
                setting, row, seed = metrics.parent.parts[-3:]
                rows.append(
                    {"benchmark": folder.name, "setting": setting, "row": row, "seed": seed, "ratio": ratio}
                )
    if not rows:
        print("no run with the shift or the agents' update found", file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    with (a.out / "results.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({**r, "ratio": f"{r['ratio']:.3f}"} for r in rows)
    groups: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        groups.setdefault((r["benchmark"], r["row"]), []).append(r["ratio"])
    lines = [
        "# The trusted corrections' cost (the shift's and the mask agents' updates), inside each run",
        "",
        f"- Command: `python benchmarks/shift_cost.py {' '.join(str(f) for f in a.folders)} --out {a.out}`",
        f"- Date: {datetime.date.today().isoformat()}; machine: {platform.machine()}, {platform.system()}",
        "- Ratio: a run's training time over the same without the update's calls (module docstring); seeds and "
        "settings as the benchmarks ran them.",
        "",
        "| benchmark | row | runs | median ratio | range |",
        "| --- | --- | --- | --- | --- |",
    ]
    for (bench, row), values in sorted(groups.items()):
        lines.append(
            f"| {bench} | {row} | {len(values)} | {statistics.median(values):.2f} | "
            f"{min(values):.2f}-{max(values):.2f} |"
        )
    (a.out / "results.md").write_text("\n".join(lines) + "\n")
    print(a.out / "results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
