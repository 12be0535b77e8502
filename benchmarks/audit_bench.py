"""How well does ``svldrl audit`` find wrong training masks? Phantoms with known corruption, both detectors.

For each noise setting (MT-Noise, Markov, SP-guided; half of the cases corrupted, made with ``run_noise``)
one supervised model per fold is trained on the noisy masks (2 folds), every case is audited out-of-fold with
the ``threshold`` detector and the confident-learning (``cl``) detector, and the audit is scored against the
truth the noise generator knows:

- case level: AUROC of the ranking score ``1 - Dice(given, corrected)`` for "this case was corrupted"
  (Mann-Whitney U from ranks, ties averaged),
- voxel level: precision / recall / F1 of the suspected-error map against the flipped voxels
  (noisy != clean), pooled over all cases,
- correction: mean Dice of the corrected mask vs the clean one, next to the given (noisy) mask vs clean,
  over all cases and over the corrupted ones.

    python benchmarks/audit_bench.py --out benchmarks/results/audit   # ~50 min on 2 shared CPU cores
    python benchmarks/audit_bench.py --out /tmp/audit_tiny --tiny              # a check of the pipeline

Writes ``results.json``, ``results.csv`` and ``results.md`` (machine, date, command, seed) to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata

from svldrl import config as C
from svldrl.audit.audit import audit
from svldrl.data.io import read_volume, write_text
from svldrl.data.synth import synthesize
from svldrl.noise import run_noise
from svldrl.reporter import Reporter
from svldrl.runs import train
from svldrl.settings import Config

SETTINGS = {  # name -> (protocol, protocol parameters); every setting corrupts half of the cases
    "mt": ("mt", {}),
    "markov": ("markov", {}),
    "spg": ("spg", {}),
}
DETECTORS = ("threshold", "cl")
RATIO = 0.5
FOLDS = 2


def auroc(scores: list[float], positive: list[bool]) -> float:
    """Area under the ROC curve by the Mann-Whitney rank formula (ties get average ranks).

    ``AUC = (R+ - n+ (n+ + 1) / 2) / (n+ n-)`` with ``R+`` the rank sum of the positives; NaN when either
    class is absent.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(s)  # average ranks for ties
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """Precision, recall, F1 from counts (NaN where undefined)."""
    p = tp / (tp + fp) if tp + fp else math.nan
    r = tp / (tp + fn) if tp + fn else math.nan
    f = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan
    return p, r, f


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two binary masks (1.0 when both are empty)."""
    a, b = a != 0, b != 0
    denom = int(a.sum()) + int(b.sum())
    return 1.0 if denom == 0 else 2.0 * int((a & b).sum()) / denom


def _mask(path: Path) -> np.ndarray:
    return (np.asarray(read_volume(path).array) != 0).astype(np.uint8)


def score_audit(
    ds_root: Path, noisy_name: str, audit_out: Path, rows: list[dict[str, Any]]
) -> dict[str, Any]:
    """Case AUROC, pooled voxel precision / recall / F1 and correction Dice of one audit."""
    report = json.loads((ds_root / "labelsTr_noisy" / noisy_name / "noise_report.json").read_text())
    selected = {c: bool(e["corrupted"]) for c, e in report["cases"].items()}
    tp = fp = fn = 0
    per_case = []
    for row in rows:
        cid = row["case"]
        clean = _mask(ds_root / "labelsTr" / f"{cid}.nii.gz")
        noisy = _mask(ds_root / "labelsTr_noisy" / noisy_name / f"{cid}.nii.gz")
        errors = np.asarray(read_volume(audit_out / "errors" / f"{cid}.nii.gz").array) != 0
        corrected = _mask(audit_out / "corrected" / f"{cid}.nii.gz")
        model = np.asarray(read_volume(audit_out / "confidence" / f"{cid}.nii.gz").array) > 0.5
        truth = noisy != clean
        tp += int((errors & truth).sum())
        fp += int((errors & ~truth).sum())
        fn += int((~errors & truth).sum())
        per_case.append(
            {
                "case": cid,
                # A case counts as corrupted when its mask actually changed: a drawn operation can leave a
                # small mask as it was (e.g. an erosion by a cube smaller than the mask's thinnest part).
                "corrupted": bool(truth.any()),
                "selected_by_noise": selected[cid],
                "judged_by": row["judged_by"],
                "score": 1.0 - row["dice"],
                "flipped_voxels": int(truth.sum()),
                "suspected_voxels": int(errors.sum()),
                "dice_given_vs_clean": dice(noisy, clean),
                "dice_corrected_vs_clean": dice(corrected, clean),
                "dice_model_vs_clean": dice(model, clean),  # the judging model's own segmentation
            }
        )
    p, r, f = prf(tp, fp, fn)
    bad = [c for c in per_case if c["corrupted"]]
    return {
        "case_auroc": auroc([c["score"] for c in per_case], [c["corrupted"] for c in per_case]),
        "voxel_precision": p,
        "voxel_recall": r,
        "voxel_f1": f,
        "voxel_tp": tp,
        "voxel_fp": fp,
        "voxel_fn": fn,
        "dice_given_vs_clean": float(np.mean([c["dice_given_vs_clean"] for c in per_case])),
        "dice_corrected_vs_clean": float(np.mean([c["dice_corrected_vs_clean"] for c in per_case])),
        "dice_given_vs_clean_corrupted": float(np.mean([c["dice_given_vs_clean"] for c in bad]))
        if bad
        else None,
        "dice_corrected_vs_clean_corrupted": (
            float(np.mean([c["dice_corrected_vs_clean"] for c in bad])) if bad else None
        ),
        "dice_model_vs_clean": float(np.mean([c["dice_model_vs_clean"] for c in per_case])),
        "n_cases": len(per_case),
        "n_corrupted": len(bad),
        "n_out_of_fold": sum(c["judged_by"] == "out_of_fold" for c in per_case),
        "cases": per_case,
    }


def train_config(args: argparse.Namespace, fold: int) -> Config:
    """A small supervised run on one fold of ``FOLDS``."""
    return C.load_config(
        overrides=[
            "method=supervised",
            f"seed={args.seed}",
            f"train.patch={args.patch}",
            "train.batch=2",
            f"train.iterations={args.iterations}",
            f"train.steps_per_epoch={min(50, args.iterations)}",
            f"train.val_every={10**6}",  # validation only at the last epoch: the audit is what is measured
            f"train.threads={args.threads}",
            f"nets.features={args.features}",
            f"data.num_folds={FOLDS}",
            f"data.fold={fold}",
            "infer.sw_batch=2",
        ]
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    rep = Reporter(quiet=args.quiet)
    work = Path(args.work)
    ds_root = work / "Dataset900_AuditBench"
    if not (ds_root / "dataset.json").is_file():
        synthesize(ds_root, cases=args.cases, size=args.size, seed=args.seed, test_cases=0)
    results: dict[str, Any] = {}
    timings: dict[str, float] = {}
    for setting in args.settings:
        protocol, params = SETTINGS[setting]
        t0 = time.monotonic()
        noisy = run_noise(ds_root, protocol, RATIO, args.seed, name=f"{setting}{RATIO}", params=params).name
        labels = f"noisy/{noisy}"
        runs = work / "runs" / setting
        for fold in range(FOLDS):
            run_dir = runs / f"fold_{fold}"
            if (run_dir / "checkpoint_final.pt").is_file():
                continue  # finished earlier (a rerun after an interruption, or with the same --work)
            shutil.rmtree(run_dir, ignore_errors=True)
            rep.info(f"{setting}: training fold {fold} ({args.iterations} iterations) on {labels}")
            cfg = train_config(args, fold)
            cfg.labels = labels
            train(ds_root, labels, run_dir, cfg)
        timings[f"{setting}_train_s"] = time.monotonic() - t0
        # training time as logged by the runs, also when they were trained by an earlier call
        timings[f"{setting}_train_logged_s"] = sum(
            float(r["epoch_time"])
            for fold in range(FOLDS)
            for r in csv.DictReader(open(runs / f"fold_{fold}" / "metrics.csv", newline=""))
        )
        results[setting] = {}
        for detector in DETECTORS:
            t1 = time.monotonic()
            out = work / "audits" / setting / detector
            res = audit(
                runs,
                ds_root,
                out,
                labels=labels,
                detector=detector,
                top=3,
                device=args.device,
                tta=not args.disable_tta,
            )
            results[setting][detector] = score_audit(ds_root, noisy, out, res.rows)
            timings[f"{setting}_audit_{detector}_s"] = time.monotonic() - t1
            m = results[setting][detector]
            rep.info(
                f"{setting} / {detector}: case AUROC {m['case_auroc']:.3f}, voxel P/R/F1 "
                f"{m['voxel_precision']:.3f}/{m['voxel_recall']:.3f}/{m['voxel_f1']:.3f}, Dice vs clean "
                f"given {m['dice_given_vs_clean']:.4f} -> corrected {m['dice_corrected_vs_clean']:.4f}"
            )
    return {"results": results, "timings_s": timings}


SUMMARY_KEYS = (
    "case_auroc",
    "voxel_precision",
    "voxel_recall",
    "voxel_f1",
    "dice_given_vs_clean",
    "dice_corrected_vs_clean",
    "dice_given_vs_clean_corrupted",
    "dice_corrected_vs_clean_corrupted",
    "dice_model_vs_clean",
    "n_cases",
    "n_corrupted",
    "n_out_of_fold",
)


def _f(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def write_results(out: Path, payload: dict[str, Any]) -> None:
    """results.json (everything), results.csv (one row per setting and detector), results.md (table)."""
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "results.json", json.dumps(payload, indent=2, default=float) + "\n")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["setting", "detector", *SUMMARY_KEYS])
    for setting, by_det in payload["results"].items():
        for det, m in by_det.items():
            w.writerow([setting, det, *(_f(m[k]) if isinstance(m[k], float) else m[k] for k in SUMMARY_KEYS)])
    write_text(out / "results.csv", buf.getvalue())
    a = payload["args"]
    lines = [
        "# Label audit benchmark",
        "",
        f"- Command: `{payload['command']}`",
        f"- Date: {payload['date']}",
        f"- Machine: {payload['machine']}",
        f"- Seed: {a['seed']}; {a['cases']} phantom cases of {a['size']}^3; {RATIO:.0%} of the cases "
        f"corrupted per setting; one supervised model per fold ({FOLDS} folds, {a['iterations']} iterations, "
        f"patch {a['patch']}, features {a['features']}); every case judged out-of-fold.",
        f"- Wall time of this call: {payload['wall_s'] / 60:.1f} min; training time logged by the judging runs "
        f"(summed over settings and folds, also when an earlier call with the same --work trained them): "
        f"{sum(v for k, v in payload['timings_s'].items() if k.endswith('_train_logged_s')) / 60:.1f} min",
        "- Judging: "
        + ("one pass" if a["disable_tta"] else "mean over the 8 axis mirrorings (test-time augmentation)")
        + "; threshold detector T = 0.8, band 3 voxels (the `svldrl audit` defaults)",
        "",
        "Case AUROC: ranking by 1 - Dice(given, corrected) against 'this case was corrupted' (its noisy "
        "mask differs from the clean one; a drawn noise operation can leave a small mask unchanged). "
        "Voxel P/R/F1: "
        "the suspected-error map against the flipped voxels (noisy != clean), pooled over cases. Dice vs "
        "clean: the given (noisy) mask and the corrected mask against the clean mask, mean over all cases "
        "(corrupted cases only in brackets). Model vs clean: the judging models' own segmentation (p > 0.5) "
        "against the clean masks, which bounds what the audit can find.",
        "",
        "| setting | detector | case AUROC | voxel precision | voxel recall | voxel F1 | Dice given vs clean "
        "| Dice corrected vs clean | Dice model vs clean |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for setting, by_det in payload["results"].items():
        for det, m in by_det.items():
            lines.append(
                f"| {setting} | {det} | {_f(m['case_auroc'])} | {_f(m['voxel_precision'])} | "
                f"{_f(m['voxel_recall'])} | {_f(m['voxel_f1'])} | {_f(m['dice_given_vs_clean'])} "
                f"({_f(m['dice_given_vs_clean_corrupted'])}) | {_f(m['dice_corrected_vs_clean'])} "
                f"({_f(m['dice_corrected_vs_clean_corrupted'])}) | {_f(m['dice_model_vs_clean'])} |"
            )
    write_text(out / "results.md", "\n".join(lines) + "\n")


def machine() -> str:
    """CPU, cores, torch build and device in one line."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.system()}, Python {platform.python_version()}, "
        f"torch {torch.__version__}, {gpu}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/results/audit")
    p.add_argument(
        "--work", default=None, help="datasets, runs and audits (default: a temporary folder, removed)"
    )
    p.add_argument("--cases", type=int, default=24)
    p.add_argument("--size", type=int, default=40)
    p.add_argument("--patch", type=int, default=32)
    p.add_argument("--iterations", type=int, default=600)
    p.add_argument("--features", default="[8,16,32,64]")
    p.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated subset of mt,markov,spg")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps a shared machine usable)")
    p.add_argument("--device", default="auto")
    p.add_argument("--disable-tta", action="store_true", help="judge with one pass, not 8 mirrorings")
    p.add_argument("--tiny", action="store_true", help="a quick check: 6 cases of 32^3, 20 iterations")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.tiny:
        args.cases, args.size, args.iterations, args.features = 6, 32, 20, "[4,8,16,32]"
    args.settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [s for s in args.settings if s not in SETTINGS]
    if unknown:
        p.error(f"unknown setting(s) {', '.join(unknown)} (choose from {', '.join(SETTINGS)})")
    temporary = args.work is None
    args.work = args.work or tempfile.mkdtemp(prefix="audit_bench_")
    started = time.monotonic()
    try:
        payload = run(args)
    finally:
        if temporary:
            shutil.rmtree(args.work, ignore_errors=True)
    payload.update(
        command="python "
        + " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        machine=machine(),
        args={k: v for k, v in vars(args).items() if k not in ("work", "quiet")},
        wall_s=time.monotonic() - started,
    )
    write_results(Path(args.out), payload)
    print(Path(args.out) / "results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
