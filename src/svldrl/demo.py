"""``svldrl demo``: phantoms -> MT-Noise 0.5 -> train on clean and on noisy masks -> evaluate on clean
test cases -> comparison table and overlays. Every step is skipped when its output is complete, so
an interrupted demo resumes."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from svldrl import config as C
from svldrl.data.io import read_volume, write_text
from svldrl.reporter import QUIET, Reporter, fmt_seconds

#: The full demo is phantom_converged's regime (benchmarks/phantom_converged.yaml): easy phantoms and a budget at
#: which plain training on clean masks is on its plateau, the only regime where methods can be compared
#: (docs/method.md section 11); about 10 min on 2 CPU cores. --quick is a 1-minute smoke test of the pipeline,
#: far from converged. 30 clean test cases because fewer let one hard case move the mean Dice by several points.
SETTINGS: dict[str, dict[str, Any]] = {
    "quick": {
        "cases": 10,
        "test_cases": 30,
        "size": 32,
        "difficulty": "easy",
        "patch": 32,
        "iterations": 120,
        "steps_per_epoch": 20,
        "val_every": 2,
        "features": [8, 16, 32, 64],
    },
    "full": {
        "cases": 48,
        "test_cases": 30,
        "size": 40,
        "difficulty": "easy",
        "patch": 32,
        "iterations": 2000,
        "steps_per_epoch": 50,
        "val_every": 4,
        "features": [8, 16, 32, 64],
    },
}

#: What we recommend: the shipped preset (svldrl/presets/recommended.yaml, where each choice is explained), its
#: method and its other settings.
RECOMMENDED_METHOD: str = C.load_config([C.preset_path("recommended")]).method
RECOMMENDED: list[str] = C.preset_overrides("recommended")[1:]  # without its method=

#: In the demo folder: the settings it was made with (a rerun with others is refused).
SETTINGS_NAME = "demo.json"

#: (run name, method, labels, extra config overrides)
RUNS: list[tuple[str, str, str, list[str]]] = [
    ("supervised_clean", "supervised", "clean", []),
    ("supervised_noisy", "supervised", "noisy/mt0.5", []),
    ("recommended_noisy", RECOMMENDED_METHOD, "noisy/mt0.5", RECOMMENDED),
]


def _run_overrides(method: str, labels: str, seed: int, s: dict[str, Any], extra: list[str]) -> list[str]:
    return [
        f"method={method}",
        f"labels={labels}",
        f"seed={seed}",
        f"train.patch={s['patch']}",
        f"train.iterations={s['iterations']}",
        f"train.steps_per_epoch={s['steps_per_epoch']}",
        f"nets.features={s['features']}",
        f"train.val_every={s['val_every']}",
        *extra,
    ]


def run_demo(
    out: Path, quick: bool = False, reporter: Reporter = QUIET, methods: str | None = None, seed: int = 0
) -> dict[str, Any]:
    """Run the demo into ``out``; returns the table rows."""
    from svldrl.data.synth import synthesize
    from svldrl.eval.summary import evaluate_folders, markdown_table
    from svldrl.methods import get_method, section_owners
    from svldrl.runs import predict_folder, run_noise, train

    t_start = time.monotonic()
    mode = "quick" if quick else "full"
    s = SETTINGS[mode]
    out = Path(out)
    ds = out / "dataset"
    _claim(
        out, {"mode": mode, "seed": seed, **s, "recommended": [f"method={RECOMMENDED_METHOD}", *RECOMMENDED]}
    )
    if not (ds / "dataset.json").exists():
        reporter.info(
            f"[1/4] phantoms ({s['difficulty']}): {s['cases']} training + {s['test_cases']} test cases of "
            f"{s['size']}^3"
        )
    # an existing dataset is checked against these settings, never silently reused with others
    synthesize(
        ds,
        cases=s["cases"],
        size=s["size"],
        seed=seed,
        test_cases=s["test_cases"],
        difficulty=s["difficulty"],
    )
    reporter.info("[2/4] MT-Noise, ratio 0.5 -> labelsTr_noisy/mt0.5")
    noisy = run_noise(ds, "mt", 0.5, seed, name="mt0.5")
    noise_report = json.loads((Path(noisy) / "noise_report.json").read_text())
    runs = [r for r in RUNS if methods is None or r[1] in methods.split(",")]
    rows = []
    spent = 0.0  # seconds of the runs trained in this call, and their cost in plain-training iterations
    spent_units = 0.0
    cost_units: list[float] = []
    owners = section_owners()
    for name, method, labels, extra in runs:
        cfg = C.load_config(overrides=_run_overrides(method, labels, seed, s, extra), owners=owners)
        done = (out / "runs" / name / "checkpoint_final.pt").exists()
        cost_units.append(0.0 if done else s["iterations"] * get_method(method).run_cost(cfg))
    for k, (name, method, labels, extra) in enumerate(runs, 1):
        run = out / "runs" / name
        cfg = C.load_config(overrides=_run_overrides(method, labels, seed, s, extra), owners=owners)
        units = cost_units[k - 1]
        if not (run / "checkpoint_final.pt").exists():
            left = sum(cost_units[k - 1 :]) if cost_units else 0.0
            eta = f", whole demo ETA {fmt_seconds(spent / spent_units * left)}" if spent_units else ""
            reporter.info(f"[3/4] training {k}/{len(runs)}: {name} ({method} on {labels} masks){eta}")
            resume = (run / "checkpoint_latest.pt").exists()
            t_run = time.monotonic()
            train(
                ds,
                labels=labels,
                out=run,
                cfg=C.load_config([run / "config.yaml"], owners=owners, saved=True) if resume else cfg,
                resume=resume,
                reporter=reporter,
            )
            spent += time.monotonic() - t_run
            spent_units += units
        pred = out / "predictions" / name
        if not (pred / "summary.json").exists():
            predict_folder(run, ds / "imagesTs", pred)
            evaluate_folders(pred, ds / "labelsTs", out=pred / "summary.json")
        summary = json.loads((pred / "summary.json").read_text())
        m = summary["mean"]["1"]
        rows.append(
            {
                "run": name,
                "method": method,
                "training masks": labels,
                "label Dice": 1.0 if labels == "clean" else noise_report["mean_dice"],
                "Dice": m["Dice"],
                "IoU": m["IoU"],
                "HD95 (mm)": m["HD95"],
                "ASD (mm)": m["ASD"],
            }
        )
    reporter.info("[4/4] report")
    report = out / "report"
    cols = ["run", "method", "training masks", "label Dice", "Dice", "IoU", "HD95 (mm)", "ASD (mm)"]
    table = markdown_table(rows, cols)
    wall = time.monotonic() - t_start
    text = (
        f"# svldrl demo ({mode})\n\n"
        f"Phantoms ({s['difficulty']}): {s['cases']} training / {s['test_cases']} test cases, {s['size']}^3; "
        f"MT-Noise ratio 0.5 (mean label Dice of the noisy training masks {noise_report['mean_dice']:.3f}); "
        f"{s['iterations']} iterations per run, patch {s['patch']}^3, seed {seed}; the recommended "
        f"preset (--preset recommended: method={RECOMMENDED_METHOD} {' '.join(RECOMMENDED)}). "
        f"Metrics on the clean test masks (mean over cases). Wall time {fmt_seconds(wall)}.\n\n"
        f"Command: `svldrl demo{' --quick' if quick else ''}`; {platform.platform()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads); {datetime.date.today().isoformat()}.\n\n"
        f"{table}\n"
    )
    write_text(report / "results.md", text)
    write_text(report / "results.json", json.dumps(rows, indent=2))
    _overlays(ds, out, [r[0] for r in runs], report)
    print(table)
    reporter.info(f"report: {report}  (wall time {fmt_seconds(wall)})")
    return {"rows": rows, "wall_s": wall}


def _claim(out: Path, settings: dict[str, Any]) -> None:
    """Take ``out`` as a demo folder (the output-folder rules every command follows) and record the demo's
    settings there, or refuse a folder holding a demo made with others: its phantoms and checkpoints would
    otherwise be reused and reported under these settings."""
    from svldrl.data.io import read_json
    from svldrl.data.outputs import check_output_dir, mark_output_dir
    from svldrl.errors import UserError

    check_output_dir(out, "demo", [SETTINGS_NAME, "dataset", "runs", "predictions", "report"], None, "--out")
    earlier = read_json(out / SETTINGS_NAME, None)
    if earlier is not None and earlier != settings:
        mode = earlier.get("mode", "other") if isinstance(earlier, dict) else "other"
        raise UserError(
            f"holds a demo made with other settings ({mode}); pass --out with another folder or remove it",
            out,
        )
    mark_output_dir(out, "demo", "--out")
    if earlier is None:
        write_text(out / SETTINGS_NAME, json.dumps(settings, indent=2) + "\n")


def _slice_of(mask: np.ndarray) -> int:
    """The axial slice with the most foreground."""
    areas = mask.reshape(-1, mask.shape[2]).sum(0) if mask.ndim == 3 else mask
    return int(np.argmax(areas))


def _overlays(ds: Path, out: Path, runs: list[str], report: Path, n_cases: int = 3) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from svldrl.data.io import atomic_write

    tests = sorted((ds / "labelsTs").glob("*.nii.gz"))[:n_cases]
    for ref in tests:
        cid = ref.name[: -len(".nii.gz")]
        img = read_volume(ds / "imagesTs" / f"{cid}_0000.nii.gz").array
        lab = read_volume(ref).array
        z = _slice_of(lab)
        panels = [("image", None), ("clean mask", lab)]
        for name in runs:
            p = out / "predictions" / name / f"{cid}.nii.gz"
            if p.exists():
                panels.append((name, read_volume(p).array))
        fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.2), dpi=90)
        for ax, (title, m) in zip(axes, panels):
            ax.imshow(img[:, :, z].T, cmap="gray", origin="lower")
            if m is not None:
                ax.contour(
                    m[:, :, z].T,
                    levels=[0.5],
                    colors="lime" if title == "clean mask" else "red",
                    linewidths=1,
                )
                if title != "clean mask":
                    ax.contour(lab[:, :, z].T, levels=[0.5], colors="lime", linewidths=0.6, alpha=0.6)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        fig.suptitle(f"{cid}, slice {z} (green: clean mask, red: prediction)", fontsize=9)
        fig.tight_layout()
        atomic_write(report / f"overlay_{cid}.png", lambda tmp, f=fig: f.savefig(tmp, format="png"))
        plt.close(fig)
    # the noise: training masks as given (noisy) against the clean ones
    noisy_dir = ds / "labelsTr_noisy" / "mt0.5"
    rep = json.loads((noisy_dir / "noise_report.json").read_text())
    corrupted = [c for c, v in rep.get("cases", {}).items() if v.get("corrupted")][:n_cases]
    if corrupted:
        fig, axes = plt.subplots(
            1, len(corrupted), figsize=(3.2 * len(corrupted), 3.4), dpi=90, squeeze=False
        )
        for ax, cid in zip(axes[0], corrupted):
            img = read_volume(ds / "imagesTr" / f"{cid}_0000.nii.gz").array
            lab = read_volume(ds / "labelsTr" / f"{cid}.nii.gz").array
            noisy = read_volume(noisy_dir / f"{cid}.nii.gz").array
            z = _slice_of(lab)
            ax.imshow(img[:, :, z].T, cmap="gray", origin="lower")
            ax.contour(lab[:, :, z].T, levels=[0.5], colors="lime", linewidths=1)
            ax.contour(noisy[:, :, z].T, levels=[0.5], colors="orange", linewidths=1)
            d = rep["cases"][cid].get("dice", math.nan)
            ax.set_title(f"{cid} (label Dice {d:.2f})", fontsize=9)
            ax.axis("off")
        fig.suptitle("training masks: clean (green) vs MT-Noise (orange)", fontsize=9)
        fig.tight_layout()
        atomic_write(report / "noisy_training_masks.png", lambda tmp: fig.savefig(tmp, format="png"))
        plt.close(fig)
