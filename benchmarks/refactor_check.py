"""Does a change of structure leave every result as it was? Two benchmark folders of the same config, made by
two versions of the code, compared run by run.

For every run in both folders (benchmark folders, or two ``svldrl demo --out`` folders): the scores of
``result.json`` (Dice, IoU, HD95, ASD, the validation-selected scores, best epoch, epochs, label Dice, number of
test cases; for a demo, its report row) and every logged value of ``metrics.csv`` per epoch (losses, validation
Dice, learning rate, method charts; not the epoch's wall time) must be identical, bit for bit (the runs are
deterministic on one CPU thread). Two audit_bench.py ``--out`` folders are compared row by row (every audit
figure).

    git worktree add /tmp/before COMMIT_BEFORE; git worktree add /tmp/after COMMIT_AFTER
    PYTHONPATH=/tmp/before/src svldrl benchmark CONFIG --out /tmp/A     # and /tmp/after -> /tmp/B
    python benchmarks/refactor_check.py /tmp/A /tmp/B --out benchmarks/results/refactor_check \\
        --label "phantom_cpu seed 0 (29 runs)" --before COMMIT_BEFORE --after COMMIT_AFTER
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import sys
from pathlib import Path

SCORES = ("dice", "iou", "hd95", "asd", "dice_val_selected", "iou_val_selected", "best_epoch", "epochs")
SCORES += ("label_dice", "n_test")
DEMO_SCORES = ("label Dice", "Dice", "IoU", "HD95 (mm)", "ASD (mm)")


def runs(folder: Path) -> dict[str, Path]:
    """Run label (setting/method/seed[/fold], or the demo's run name) -> run folder, for every finished run."""
    marker = "checkpoint_final.pt" if is_demo(folder) else "result.json"
    return {str(p.parent.relative_to(folder / "runs")): p.parent for p in (folder / "runs").rglob(marker)}


def is_demo(folder: Path) -> bool:
    """A ``svldrl demo --out`` folder: scores in report/results.json, one row per run."""
    return (folder / "report" / "results.json").exists()


def scores(folder: Path, label: str, run: Path) -> dict:
    if is_demo(folder):
        rows = json.loads((folder / "report" / "results.json").read_text())
        return next((r for r in rows if r["run"] == label), {})
    return json.loads((run / "result.json").read_text())


def history(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv") as fh:
        return [{k: v for k, v in row.items() if k != "epoch_time"} for row in csv.DictReader(fh)]


def is_audit(folder: Path) -> bool:
    """A ``benchmarks/audit_bench.py --out`` folder: one results.csv row per setting and detector."""
    return (folder / "results.csv").exists() and not (folder / "runs").exists()


def compare_audit(a: Path, b: Path) -> tuple[list[str], list[str]]:
    """Audit figures row by row (AUROC, voxel precision / recall / F1, Dice columns); times are not in the CSV."""
    with open(a / "results.csv") as fa, open(b / "results.csv") as fb:
        ra, rb = list(csv.DictReader(fa)), list(csv.DictReader(fb))
    same, diffs = [], []
    for x, y in zip(ra, rb, strict=False):
        label = f"{x.get('setting')}/{x.get('detector')}"
        if x == y:
            same.append(label)
        else:
            diffs.append(f"{label}: figures differ")
    if len(ra) != len(rb):
        diffs.append(f"{len(ra)} rows against {len(rb)}")
    return same, diffs


def compare(a: Path, b: Path) -> tuple[list[str], list[str]]:
    """(labels identical in both, one line per difference)."""
    if is_audit(a) and is_audit(b):
        return compare_audit(a, b)
    ra, rb = runs(a), runs(b)
    same, diffs = [], []
    for label in sorted(set(ra) & set(rb)):
        x, y = scores(a, label, ra[label]), scores(b, label, rb[label])
        keys = DEMO_SCORES if is_demo(a) else SCORES
        d = {k: (x.get(k), y.get(k)) for k in keys if x.get(k) != y.get(k) or k not in x}
        if d:
            diffs.append(f"{label}: scores differ {d}")
        elif history(ra[label]) != history(rb[label]):
            diffs.append(f"{label}: metrics.csv differs")
        else:
            same.append(label)
    for label in sorted(set(ra) ^ set(rb)):
        diffs.append(f"{label}: only in {'the first' if label in ra else 'the second'} folder")
    return same, diffs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="append the verdict to OUT/results.md")
    ap.add_argument("--label", default="", help="what was compared, for the report")
    ap.add_argument("--before-commit", default="", help="the commit that made the first folder")
    ap.add_argument("--after-commit", default="", help="the commit that made the second folder")
    a = ap.parse_args()
    same, diffs = compare(a.before, a.after)
    what = (
        "setting x detector rows identical (every audit figure)"
        if is_audit(a.before)
        else "runs identical (scores and every logged value per epoch)"
    )
    verdict = (
        f"- {a.label or a.before}: {len(same)} of {len(same) + len(diffs)} {what} "
        f"between `{a.before_commit or a.before}` and `{a.after_commit or a.after}`"
        + ("" if not diffs else "; differences: " + "; ".join(diffs[:10]))
        + f" ({datetime.date.today().isoformat()})"
    )
    print(verdict)
    if a.out is not None:
        md = a.out / "results.md"
        head = (
            "Behaviour unchanged by the restructuring (layers, trainer lifecycle, rules module, typed config, "
            "split benchmark runner): the same benchmark made by the code before and after it, compared run by "
            "run with `python benchmarks/refactor_check.py BEFORE AFTER` (deterministic runs on one CPU thread).\n\n"
        )
        text = md.read_text() if md.exists() else head
        a.out.mkdir(parents=True, exist_ok=True)
        md.write_text(text.rstrip("\n") + "\n" + verdict + "\n")
    sys.exit(1 if diffs else 0)


if __name__ == "__main__":
    main()
