"""How well does the band target update correct the training masks? No training: the rule alone, per variant.

The band update (``rules.band_correct``; ``rl.target_update=band``, ``supervised_band``, ``tloss_band``) turns
each given training mask into a corrected target before the first step. Its settings (``rl.band_width``,
``rl.band_margin``, ``rl.band_passes``) are judged here on the training masks of a benchmark's phantoms: the
label Dice of the corrected masks against the clean ones (mean over the training cases) and the corrected
volume as a share of the clean organ's, for the clean masks (what the rule costs where nothing is wrong) and
each noise setting of the benchmark. The test cases are not read.

    python benchmarks/band_rule.py                  # phantom_converged's data, ~2 min on one CPU core
    python benchmarks/band_rule.py --config benchmarks/phantom_cpu.yaml --out benchmarks/results/band_rule_standard
    python benchmarks/band_rule.py --cases 6        # a check of the pipeline

Writes ``results.csv``, ``results.json`` and ``results.md`` (machine, date, command) to ``--out``
(default ``benchmarks/results/band_rule``); the phantoms and noisy masks go to ``--work`` (not committed).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from svldrl import config as C
from svldrl.bench.data import prepare_data
from svldrl.bench.script import made_with, run_script, write_rows
from svldrl.bench.spec import load_benchmark
from svldrl.data.dataset import load_case, load_dataset
from svldrl.data.io import write_text
from svldrl.reporter import Reporter
from svldrl.rules import band_correct, band_correct_select, overlap

LN9 = math.log(9)
# (name, width, margin, passes, connected[, widest]): today's default and the widths tried with it, repeating it
# as it is, the margin alone, the fixed point at several widths (and once without the connectivity rule), and
# the fixed point at a width chosen per case from width..widest by the image's likelihood (rl.band_width_max)
VARIANTS: list[tuple] = [
    ("w1", 1, 0.0, 1, False),
    ("w2 (default)", 2, 0.0, 1, False),
    ("w3", 3, 0.0, 1, False),
    ("w2, 10 passes, no margin", 2, 0.0, 10, False),
    ("w2, margin ln 9", 2, LN9, 1, False),
    ("w4, margin ln 9", 4, LN9, 1, False),
    ("w2, margin ln 9, fixed point", 2, LN9, 10, True),
    ("w3, margin ln 9, fixed point", 3, LN9, 10, True),
    ("w4, margin ln 9, fixed point", 4, LN9, 10, True),
    ("w5, margin ln 9, fixed point", 5, LN9, 10, True),
    ("w6, margin ln 9, fixed point", 6, LN9, 10, True),
    ("w4, margin ln 9, 10 passes, not connected", 4, LN9, 10, False),
    ("w2-6 per case by likelihood, margin ln 9, fixed point", 2, LN9, 10, True, 6),
]


def run(args: argparse.Namespace) -> dict[str, Any]:
    bench = load_benchmark(args.config)
    if args.cases:
        bench.dataset["synth"] = {**bench.dataset["synth"], "cases": args.cases, "test_cases": 1}
    data = prepare_data(bench, Path(args.work), Reporter(quiet=args.quiet))
    dcfg = C.load_config().data
    settings = ["clean", *(n.name for n in bench.noise)]
    cases = {s: load_dataset(data.source, "clean" if s == "clean" else f"noisy/{s}").train for s in settings}
    clean = {c.case_id: load_case(c, dcfg)[:2] for c in cases["clean"]}
    rows = []
    for name, width, margin, passes, connected, *widest in VARIANTS:
        for s in settings:
            t0 = time.monotonic()
            dice, volume = [], []
            for c in cases[s]:
                image, truth = clean[c.case_id]
                given = load_case(c, dcfg)[1]
                if widest:
                    mask, _ = band_correct_select(image, given, range(width, widest[0] + 1), margin, passes)
                else:
                    mask = band_correct(image, given, width, margin, passes, connected)
                dice.append(overlap(mask, truth)[0])
                volume.append(np.count_nonzero(mask) / max(np.count_nonzero(truth), 1))
            given_dice = float(
                np.mean([overlap(load_case(c, dcfg)[1], clean[c.case_id][1])[0] for c in cases[s]])
            )
            rows.append(
                {
                    "variant": name,
                    "band_width": width,
                    "band_width_max": widest[0] if widest else 0,
                    "band_margin": round(margin, 3),
                    "band_passes": passes,
                    "connected": connected,
                    "setting": s,
                    "n_cases": len(dice),
                    "label_dice_given": round(given_dice, 4),
                    "label_dice_corrected": round(float(np.mean(dice)), 4),
                    "volume_ratio": round(float(np.mean(volume)), 3),
                    "seconds_per_case": round((time.monotonic() - t0) / max(len(dice), 1), 3),
                }
            )
            if not args.quiet:
                print(f"{name} / {s}: label Dice {rows[-1]['label_dice_corrected']:.3f}", flush=True)
    return {"rows": rows, "settings": settings, "data": data.description}


def write_results(out: Path, payload: dict[str, Any]) -> None:
    write_rows(out, payload)
    settings = payload["settings"]
    by = {(r["variant"], r["setting"]): r for r in payload["rows"]}
    given = {s: by[(VARIANTS[0][0], s)]["label_dice_given"] for s in settings}
    lines = [
        "# The band target update on the training masks",
        "",
        *made_with(payload),
        f"- Data: {payload['data']} (training cases only; noise seed of the config)",
        "",
        "Label Dice of the corrected training masks against the clean ones (mean over cases), the corrected "
        "volume / the clean organ's volume in brackets. Width in voxels (Euclidean); margin: the log-likelihood "
        "ratio a voxel needs to change label; fixed point: repeated until nothing changes (at most 10 passes), "
        "only changes connected to the side they join.",
        "",
        "| variant | " + " | ".join(settings) + " |",
        "| --- | " + " | ".join("---" for _ in settings) + " |",
        "| *given masks* | " + " | ".join(f"{given[s]:.3f}" for s in settings) + " |",
    ]
    for name, *_ in VARIANTS:
        cells = [
            f"{by[(name, s)]['label_dice_corrected']:.3f} ({by[(name, s)]['volume_ratio']:.2f})"
            for s in settings
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    write_text(out / "results.md", "\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--config", default="benchmarks/phantom_converged.yaml", help="benchmark whose data is used"
    )
    p.add_argument("--out", default="benchmarks/results/band_rule")
    p.add_argument("--work", default="/tmp/svldrl_band_rule", help="where the phantoms and noisy masks go")
    p.add_argument("--cases", type=int, default=0, help="fewer training cases (a check of the pipeline)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    payload = run_script(lambda: run(args))
    write_results(Path(args.out), payload)
    print(f"results: {Path(args.out) / 'results.md'}")


if __name__ == "__main__":
    main()
