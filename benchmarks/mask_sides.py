"""Is the error of noisy masks one-sided? What ``data.trusted_bound`` assumes, read on the development sets' masks.

``data.trusted_bound`` (docs/method.md section 19) trains the non-trusted cases in the trusted finish only on the
side of their masks that masks drawn too large leave right: outside them, from ``BOUND_MARGIN`` voxels beyond the
drawn boundary, as background. That holds where no true foreground lies there. This script measures it on the
development sets' training masks against their clean versions (nothing trains): the share of the true foreground
that lies outside each mask, and beyond 1 and 2 voxels of it, and the share of voxels the bound then knows; for the
given masks, the recommended preset's band-corrected ones, and what the two agree on (their union: the masks the
bound uses under the preset). Cases recorded as trusted are left out (their masks are clean).

    python scripts/fetch_real_anatomy.py       # once
    svldrl benchmark benchmarks/real_anatomy_trusted_dev.yaml --only supervised --seeds 0   # writes the noisy sets
    svldrl benchmark benchmarks/phantom_trusted_dev.yaml --only recommended                   # (or any row)
    python benchmarks/mask_sides.py

Writes ``results.csv``, ``results.json`` and ``results.md`` (machine, date, command) to ``--out`` (default
``benchmarks/results/mask_sides``).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from svldrl import config as C
from svldrl.bench.script import made_with, run_script, write_rows
from svldrl.data.dataset import load_dataset
from svldrl.data.io import read_volume, write_text
from svldrl.errors import UserError
from svldrl.methods import get_method

ROOT = Path(__file__).resolve().parent
PRESET = ROOT.parent / "src" / "svldrl" / "presets" / "recommended.yaml"
#: (set, dataset folder) of the development sets with trusted cases.
SETS = [
    ("thalamus", Path.home() / ".cache" / "svldrl" / "real_anatomy" / "Dataset803_ColinThalamus"),
    ("phantoms, seed 101", ROOT / "results" / "phantom_trusted_dev" / "dataset"),
]
SETTINGS = ("dilate_t8", "markov_t8")
MARGINS = (0, 1, 2)


def _masks(root: Path, setting: str) -> list[tuple[np.ndarray, ...]]:
    """(truth, given, band-corrected, their union) of each non-trusted training case, cropped to the case's grid."""
    cfg = C.load_config(files=[PRESET], overrides=["train.threads=1", "train.patch=32"])
    ds = load_dataset(root, f"noisy/{setting}", trusted=cfg.data.trusted)
    clean = load_dataset(root, "clean", trusted="none")
    with tempfile.TemporaryDirectory() as tmp:
        trainer = get_method(cfg.method)(cfg, ds, Path(tmp) / "run")  # builds the band-corrected targets
    truth = {c.case_id: c for c in clean.train}
    out = []
    for i, cid in enumerate(trainer.train_ids):
        case = truth[cid]
        t = np.asarray(read_volume(case.label, case.label_key).array) >= 0.5
        crop = tuple(slice(0, s) for s in t.shape)
        given = np.asarray(trainer.given[i])[crop] >= 0.5
        band = np.asarray(trainer.band_targets[i])[crop] >= 0.5
        out.append((t, given, band, given | band))
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    for name, root in SETS:
        for setting in SETTINGS:
            if not (root / "labelsTr_noisy" / setting).is_dir():
                raise UserError(
                    f"no noisy set {setting} (run its benchmark first: see the module docstring)", root
                )
            cases = _masks(root, setting)
            for which, k in (("given", 1), ("band", 2), ("given or band", 3)):
                for margin in MARGINS:
                    fg = outside = known = total = 0
                    for case in cases:
                        truth, mask = case[0], case[k]
                        grown = ndimage.binary_dilation(mask, iterations=margin) if margin else mask
                        fg += int(truth.sum())
                        outside += int((truth & ~grown).sum())
                        known += int((~grown).sum())
                        total += grown.size
                    rows.append(
                        {
                            "set": name,
                            "setting": setting,
                            "masks": which,
                            "margin": margin,
                            "cases": len(cases),
                            "fg_outside": outside / fg,
                            "known": known / total,
                        }
                    )
    return {"rows": rows}


def write_results(out: Path, payload: dict[str, Any]) -> None:
    write_rows(out, payload)
    lines = [
        "# Is the error of noisy masks one-sided? (development sets' training masks; nothing trains)",
        "",
        *made_with(payload),
        "- Share of the true foreground outside the masks, and beyond 1 and 2 voxels of them (in brackets: the share "
        "of voxels there, which `data.trusted_bound` would train as background); the cases recorded as trusted are "
        "left out.",
        "",
        "| set | masks | which | " + " | ".join(f"beyond {m} voxel(s)" for m in MARGINS) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in MARGINS) + " |",
    ]
    by = {(r["set"], r["setting"], r["masks"], r["margin"]): r for r in payload["rows"]}
    for name, setting, which in dict.fromkeys((r["set"], r["setting"], r["masks"]) for r in payload["rows"]):
        cells = [by[(name, setting, which, m)] for m in MARGINS]
        lines.append(
            f"| {name} | {setting} | {which} | "
            + " | ".join(f"{100 * c['fg_outside']:.2f}% ({100 * c['known']:.1f}%)" for c in cells)
            + " |"
        )
    write_text(out / "results.md", "\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(ROOT / "results" / "mask_sides"))
    args = p.parse_args()
    write_results(Path(args.out), run_script(lambda: run(args)))
    print(f"results: {Path(args.out) / 'results.md'}")


if __name__ == "__main__":
    main()
