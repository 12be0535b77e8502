"""Does the recommended preset's mask correction do harm? Its training targets on real anatomy and phantoms.

The recommended preset corrects the given masks before training (the band update, docs/method.md sections 12-13);
``svldrl targets`` writes what training then starts from. This benchmark runs it, with and without the band's
guard, on every set of real volumes that can be had here and on the phantoms, for clean masks and four kinds of
noise, and reports the label Dice of the targets against the clean masks (mean over cases), the cases changed and
the cases the guard kept as given. Nothing trains. The sets are split into:

- development sets, on which the guard's thresholds were chosen (rules.BandGuard): phantom draws with their own
  seed (101), easy and standard; the left hemisphere's brain structures (Colin27 + AAL: the six deep structures
  un-augmented, and augmented crops of four); the chest CT's lungs and spine segments (slicerio);
- test sets, never looked at while choosing: the training masks of phantom_converged (easy) and
  phantom_standard_converged (standard); the right hemisphere's structures (un-augmented and augmented crops); the
  six lung tumour CTs.

    python scripts/fetch_real_anatomy.py && python scripts/fetch_lung_data.py     # once, ~2 min
    python benchmarks/band_safety.py                 # ~40 min on one core
    python benchmarks/band_safety.py --sets "chest CT" --settings clean   # a part

Writes ``results.csv``, ``results.json`` and ``results.md`` (machine, date, command) to ``--out`` (default
``benchmarks/results/band_safety``); working copies of the data go to ``--work`` (not committed).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from svldrl import config as C
from svldrl.bench.script import made_with, run_script, write_rows
from svldrl.data.io import read_json, write_text
from svldrl.errors import UserError
from svldrl.runs import run_noise
from svldrl.runs.targets import write_targets

CACHE = Path.home() / ".cache" / "svldrl"
REAL = CACHE / "real_anatomy"
#: (name, params) of the noise settings: phantom_converged's three and one-sided erosion
NOISE: list[tuple[str, str, float, dict[str, Any]]] = [
    ("mt0.5", "mt", 0.5, {}),
    ("mt_dilate1.0", "mt", 1.0, {"mode": "dilate"}),
    ("mt_erode1.0", "mt", 1.0, {"mode": "erode"}),
    ("markov", "markov", 1.0, {"T": 28, "theta1": 0.8, "theta2": 0.05, "theta3": 0.0}),
]
#: The configurations whose targets are compared: the preset as shipped, and its band without the guard.
VARIANTS: list[tuple[str, list[str]]] = [
    ("recommended", []),
    ("recommended, unguarded", ["rl.band_guard=false"]),
]
#: Settings shared by every targets call: the benchmarks' patch and network (the trainer pads to the patch).
BASE = ["train.patch=32", "nets.features=[8,16,32,64]"]


def _synth(difficulty: str, seed: int, cases: int, test_cases: int) -> Callable[[Path], None]:
    def build(root: Path) -> None:
        from svldrl.data.synth import synthesize

        synthesize(root, cases=cases, size=40, seed=seed, test_cases=test_cases, difficulty=difficulty)

    return build


def _copy_cases(
    source: Path, part: str, cases: list[str] | None, per_source: int = 0
) -> Callable[[Path], None]:
    """A dataset of the chosen cases of ``source`` (``part`` Tr or Ts), as training cases."""

    def build(root: Path) -> None:
        spec = read_json(source / "dataset.json", {})
        names = sorted(p.name[: -len(".nii.gz")] for p in (source / f"labels{part}").glob("*.nii.gz"))
        chosen = [n for n in names if cases is None or n in cases][: per_source or None]
        for sub in ("imagesTr", "labelsTr"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        for n in chosen:
            prefix = f"{source.name.split('_', 1)[-1]}_" if per_source else ""
            shutil.copyfile(
                source / f"labels{part}" / f"{n}.nii.gz", root / "labelsTr" / f"{prefix}{n}.nii.gz"
            )
            shutil.copyfile(
                source / f"images{part}" / f"{n}_0000.nii.gz", root / "imagesTr" / f"{prefix}{n}_0000.nii.gz"
            )
        meta = read_json(root / "dataset.json", None) or {
            k: spec[k] for k in ("channel_names", "labels", "file_ending")
        }
        meta["numTraining"] = len(list((root / "labelsTr").glob("*.nii.gz")))
        write_text(root / "dataset.json", json.dumps(meta, indent=2) + "\n")

    return build


def _several(*builders: Callable[[Path], None]) -> Callable[[Path], None]:
    def build(root: Path) -> None:
        for b in builders:
            b(root)

    return build


def _aal_split(part: str) -> list[str]:
    return read_json(REAL / "Dataset810_ColinAAL" / "dataset.json", {}).get("svldrl_split", {}).get(part, [])


CROPS = [
    REAL / f"Dataset80{i}_Colin{s}"
    for i, s in ((1, "Putamen"), (2, "Caudate"), (3, "Thalamus"), (4, "Hippocampus"))
]
#: (name, role, how to build it, extra config overrides)
SETS: list[tuple[str, str, Callable[[Path], None], list[str]]] = [
    ("easy phantoms, seed 101", "dev", _synth("easy", 101, 24, 1), []),
    ("standard phantoms, seed 101", "dev", _synth("standard", 101, 24, 1), []),
    (
        "Colin27 AAL left",
        "dev",
        lambda r: _copy_cases(REAL / "Dataset810_ColinAAL", "Tr", _aal_split("dev"))(r),
        [],
    ),
    ("Colin27 crops left", "dev", _several(*(_copy_cases(d, "Tr", None, 12) for d in CROPS)), []),
    ("chest CT", "dev", _copy_cases(REAL / "Dataset811_ChestCTSegments", "Tr", None), []),
    ("phantom_converged (easy)", "test", _synth("easy", 0, 48, 40), []),
    ("phantom_standard_converged", "test", _synth("standard", 0, 48, 40), []),
    (
        "Colin27 AAL right",
        "test",
        lambda r: _copy_cases(REAL / "Dataset810_ColinAAL", "Tr", _aal_split("test"))(r),
        [],
    ),
    ("Colin27 crops right", "test", _several(*(_copy_cases(d, "Ts", None, 12) for d in CROPS)), []),
    (
        "lung tumours",
        "test",
        _copy_cases(CACHE / "lung" / "DatasetLung", "Tr", None),
        ["data.ct_window=[-1000,400]"],
    ),
]


def _prepare(name: str, build: Callable[[Path], None], work: Path, settings: list[str]) -> Path:
    """The set's working dataset with its noisy masks (made once; a stamp records that it is complete)."""
    root = work / name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
    stamp = root / ".band_safety.json"
    want = sorted(s for s in settings if s != "clean")
    if read_json(stamp, {}).get("noise") == want:
        return root
    shutil.rmtree(root, ignore_errors=True)
    build(root)
    for noise, protocol, ratio, params in NOISE:
        if noise in want:
            run_noise(root, protocol, ratio, 0, name=noise, params=params)
    write_text(stamp, json.dumps({"noise": want}) + "\n")
    return root


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = ["clean", *(n for n, *_ in NOISE)] if not args.settings else args.settings.split(",")
    chosen = [s for s in SETS if not args.sets or s[0] in args.sets.split(",")]
    work = Path(args.work)
    rows = []
    for name, role, build, extra in chosen:
        try:
            root = _prepare(name, build, work, settings)
        except (UserError, FileNotFoundError) as exc:  # a source not fetched: say so, go on with the rest
            print(f"{name}: skipped ({exc}); fetch the data first (module docstring)", file=sys.stderr)
            continue
        for setting in settings:
            labels = "clean" if setting == "clean" else f"noisy/{setting}"
            for variant, overrides in VARIANTS:
                t0 = time.monotonic()
                cfg = C.load_config([C.preset_path("recommended")], [*BASE, *extra, *overrides])
                out = work / "targets" / root.name / setting / variant.replace(", ", "_")
                shutil.rmtree(out, ignore_errors=True)
                report = write_targets(root, labels, cfg, out)
                cases = report["cases"]
                rows.append(
                    {
                        "set": name,
                        "role": role,
                        "setting": setting,
                        "variant": variant,
                        "n_cases": len(cases),
                        "label_dice_given": round(report["mean_label_dice_given"], 4),
                        "label_dice_target": round(report["mean_label_dice_target"], 4),
                        "n_changed": report["n_changed"],
                        "n_kept_by_guard": sum(str(c.get("band", "")).startswith("kept") for c in cases),
                        "seconds": round(time.monotonic() - t0, 1),
                    }
                )
                if not args.quiet:
                    r = rows[-1]
                    print(
                        f"{name} / {setting} / {variant}: {r['label_dice_given']:.3f} -> {r['label_dice_target']:.3f}",
                        flush=True,
                    )
    return {"rows": rows, "settings": settings}


def write_results(out: Path, payload: dict[str, Any]) -> None:
    write_rows(out, payload)
    settings = payload["settings"]
    by = {(r["set"], r["setting"], r["variant"]): r for r in payload["rows"]}
    sets = list(dict.fromkeys((r["set"], r["role"]) for r in payload["rows"]))
    lines = [
        "# Does the recommended preset's mask correction do harm? (`svldrl targets`, nothing trains)",
        "",
        *made_with(payload),
        "- Label Dice of the training targets against the clean masks (mean over cases): the given masks, then "
        "the targets of `--preset recommended` (the band update with its guard) and of the same preset with "
        "`rl.band_guard=false` (the recommended configuration until 2026-12-05). In brackets: cases changed, and "
        "cases the guard kept as given. Development sets chose the guard's thresholds; test sets were not looked "
        "at while choosing.",
        "",
    ]
    for role in ("dev", "test"):
        lines += [
            f"## {'Development' if role == 'dev' else 'Test'} sets",
            "",
            "| set | masks | " + " | ".join(settings) + " |",
            "| --- | --- | " + " | ".join("---" for _ in settings) + " |",
        ]
        for name, r in sets:
            if r != role:
                continue
            n = next(by[k]["n_cases"] for k in by if k[0] == name)
            given = [by.get((name, s, VARIANTS[0][0])) for s in settings]
            lines.append(
                f"| {name} ({n}) | given | "
                + " | ".join(f"{g['label_dice_given']:.3f}" if g else "" for g in given)
                + " |"
            )
            for variant, _ in VARIANTS:
                cells = []
                for s in settings:
                    x = by.get((name, s, variant))
                    cells.append(
                        ""
                        if x is None
                        else f"{x['label_dice_target']:.3f} ({x['n_changed']}, {x['n_kept_by_guard']})"
                        if variant == VARIANTS[0][0]
                        else f"{x['label_dice_target']:.3f} ({x['n_changed']})"
                    )
                lines.append(f"| | {variant} | " + " | ".join(cells) + " |")
        lines.append("")
    write_text(out / "results.md", "\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/results/band_safety")
    p.add_argument(
        "--work", default="/tmp/svldrl_band_safety", help="working copies of the data (not committed)"
    )
    p.add_argument("--sets", default="", help="comma-separated set names (default: all)")
    p.add_argument("--settings", default="", help="comma-separated settings (default: clean and every noise)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    payload = run_script(lambda: run(args))
    if not payload["rows"]:
        print(
            "error: no set could be built (fetch the data first: see the module docstring)", file=sys.stderr
        )
        sys.exit(2)
    write_results(Path(args.out), payload)
    print(f"results: {Path(args.out) / 'results.md'}")


if __name__ == "__main__":
    main()
