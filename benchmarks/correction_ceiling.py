"""How close can a correction of the noisy masks come to the clean ones? The ceiling of every per-case shift.

The trusted shift (docs/method.md section 14) moves each noisy mask's boundary, in the mask's own geometry (its
Euclidean distance transform), to the volume it estimates for the case. However well the volume is estimated, a
mask moved so cannot be more right than the same mask moved to the case's *true* volume. This script measures that
ceiling on the training masks of the trusted benchmarks (nothing trains): the label Dice of the given masks, of each
moved to its true volume, and, under MT-Noise dilation, of each eroded by the very cube that dilated it (the closing
of the truth: what is left when the dilation's own size is known). The cases recorded as trusted are left out.

With the preset's run folders at hand (``RUNS``: gitignored, made by the trusted benchmarks), it also reads, for
seed 0 under dilation, how far the preset's own correction got (the targets its checkpoint carries) and how far
moving each given mask to the volume the run's *final* model draws for the case would get: that model trained on
the case only outside its mask (the finish's bound, docs/method.md section 19), so it never learned the mask's
wrong extent (section 20).

``--train DATASET_NAME`` also writes a copy of that dataset (images linked, not copied) whose ``dilate_t8`` masks
are the ones moved to their true volume, with the noise report's label Dice made theirs, so that
``svldrl benchmark benchmarks/correction_ceiling.yaml`` trains on them: what a model learns from masks corrected as
well as any per-case shift can correct them.

    python scripts/fetch_real_anatomy.py       # once
    svldrl benchmark benchmarks/real_anatomy_trusted.yaml --only supervised --seeds 0       # writes the noisy sets
    svldrl benchmark benchmarks/real_anatomy_trusted_dev.yaml --only supervised --seeds 0   # (the thalamus's)
    python benchmarks/correction_ceiling.py [--train Dataset801_ColinPutamen]

Writes ``results.csv``, ``results.json`` and ``results.md`` (machine, date, command) to ``--out`` (default
``benchmarks/results/correction_ceiling``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from svldrl.bench.script import made_with, run_script, write_rows
from svldrl.data.io import write_text
from svldrl.errors import UserError

ROOT = Path(__file__).resolve().parent
REAL = Path.home() / ".cache" / "svldrl" / "real_anatomy"
#: (structure, dataset folder): the trusted benchmarks' real anatomy (the putamen is the reported one).
SETS = [("putamen", REAL / "Dataset801_ColinPutamen"), ("thalamus", REAL / "Dataset803_ColinThalamus")]
SETTINGS = ("dilate_t8", "markov_t8")
#: (structure, the preset's run under dilation, seed 0): its own correction, and its final model's volumes.
RUNS = [
    ("putamen", ROOT / "results" / "real_anatomy_trusted" / "runs" / "dilate_t8" / "recommended" / "seed0"),
    (
        "thalamus",
        ROOT / "results" / "real_anatomy_trusted_dev" / "runs" / "dilate_t8" / "finish_bound" / "seed0",
    ),
]
#: Development runs (the thalamus, the preset with the bound, seed 0) whose corrected targets say how far from their
#: boundary a voxel's class is known (data.trusted_bound_band, docs/method.md section 21): chosen on these alone.
BAND_RUNS = [
    (
        "thalamus",
        setting,
        ROOT / "results" / "real_anatomy_trusted_dev" / "runs" / setting / "finish_bound" / "seed0",
    )
    for setting in SETTINGS
]
#: Distances (voxels) from the corrected target's boundary measured there.
BAND_WIDTHS = (1, 2, 3)
#: The same runs with the trusted measure (data.trusted_measure, section 20): its corrected targets.
MEASURED = [(name, run.parent.parent / "recommended_measure" / "seed0") for name, run in RUNS]
#: Where --train writes the copy with the corrected masks (svldrl benchmark benchmarks/correction_ceiling.yaml).
CEILING = REAL / "ceiling"


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def to_volume(mask: np.ndarray, voxels: int) -> np.ndarray:
    """``mask`` moved inwards, in its own geometry (the distance transform, as the trusted shift moves it), until
    about ``voxels`` remain (ties at the last distance kept); outwards where ``voxels`` is larger."""
    if voxels >= mask.sum():
        depth = ndimage.distance_transform_edt(~mask)
        keep = np.sort(depth[~mask])[max(voxels - int(mask.sum()), 1) - 1]
        return mask | (depth <= keep)
    depth = ndimage.distance_transform_edt(mask)
    keep = np.sort(depth[mask])[::-1][voxels - 1]
    return depth >= keep


def _cases(root: Path, setting: str) -> list[tuple[str, np.ndarray, np.ndarray, dict[str, Any], Any]]:
    """(case, truth, given mask, its noise record, the given mask's image) of each corrupted training case."""
    folder = root / "labelsTr_noisy" / setting
    report = folder / "noise_report.json"
    if not report.is_file():
        raise UserError(f"no noisy set {setting} (run its benchmark first: see the module docstring)", folder)
    out = []
    for case, rec in json.loads(report.read_text())["cases"].items():
        if not rec.get("corrupted"):
            continue
        truth = np.asarray(nib.load(str(root / "labelsTr" / f"{case}.nii.gz")).dataobj) > 0
        img = nib.load(str(folder / f"{case}.nii.gz"))
        out.append((case, truth, np.asarray(img.dataobj) > 0, rec, img))
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    for name, root in SETS:
        if not root.is_dir():
            raise UserError("no real anatomy here (python scripts/fetch_real_anatomy.py)", root)
        for setting in SETTINGS:
            cases = _cases(root, setting)
            given = [_dice(g, t) for _, t, g, _, _ in cases]
            moved = [_dice(to_volume(g, int(t.sum())), t) for _, t, g, _, _ in cases]
            sides = [rec.get("noise", {}).get("sides") for *_, rec, _ in cases]
            cube = (
                [
                    _dice(ndimage.minimum_filter(g.astype(np.uint8), size=s, mode="nearest") > 0, t)
                    for (_, t, g, _, _), s in zip(cases, sides, strict=True)
                ]
                if all(sides)
                else []
            )
            rows.append(
                {
                    "structure": name,
                    "setting": setting,
                    "cases": len(cases),
                    "given": float(np.mean(given)),
                    "true_volume": float(np.mean(moved)),
                    "true_volume_min": float(np.min(moved)),
                    "cube_undone": float(np.mean(cube)) if cube else None,
                }
            )
    runs = [
        from_run(name, root, run, measured)
        for (name, root), (_, run), (_, measured) in zip(SETS, RUNS, MEASURED, strict=True)
        if run.is_dir()
    ]
    known = [
        row
        for name, setting, run in BAND_RUNS
        if run.is_dir()
        for row in known_beyond(dict(SETS)[name], setting, run, name)
    ]
    if args.train:
        rows_by = {(r["structure"], r["setting"]): r for r in rows}
        root = dict((p.name, p) for _, p in SETS).get(args.train)
        if root is None:
            raise UserError(f"--train takes one of {', '.join(p.name for _, p in SETS)}", args.train)
        name = next(n for n, p in SETS if p == root)
        write_ceiling_set(root, "dilate_t8", rows_by[(name, "dilate_t8")]["true_volume"])
    return {"rows": rows, "runs": runs, "known": known}


def _targets(run: Path) -> dict[str, np.ndarray]:
    """The corrected targets a run's final checkpoint carries, by case."""
    from svldrl.engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(run / "checkpoint_final.pt")
    return dict(zip(ckpt["cases"]["train"], ckpt["extra"]["targets"], strict=True))


def from_run(name: str, root: Path, run: Path, measured: Path) -> dict[str, Any]:
    """Label Dice of the run's corrected targets, of the given masks moved to its final model's volumes, and of the
    targets the same preset made with the trusted measure (``measured``; NaN without that run)."""
    from svldrl.cli import main as svldrl

    targets = _targets(run)
    remeasured = _targets(measured) if measured.is_dir() else {}
    pred = run.parent / f".{run.name}_training_predictions"
    if not pred.is_dir():
        with tempfile.TemporaryDirectory(dir=run.parent) as tmp:
            if svldrl(["predict", str(run), str(root / "imagesTr"), f"{tmp}/p", "--quiet"]) != 0:
                raise UserError("could not segment the training images with the run's final model", run)
            Path(f"{tmp}/p").rename(pred)
    own, moved, ratio, again = [], [], [], []
    for case, truth, given, _, _ in _cases(root, "dilate_t8"):
        crop = tuple(slice(0, n) for n in truth.shape)
        t = np.asarray(targets[case])[crop] >= 0.5
        if remeasured:
            again.append(_dice(np.asarray(remeasured[case])[crop] >= 0.5, truth))
        model = np.asarray(nib.load(str(pred / f"{case}.nii.gz")).dataobj) > 0
        own.append(_dice(t, truth))
        ratio.append(float(t.sum()) / float(truth.sum()))
        moved.append(_dice(to_volume(given, int(model.sum())), truth))
    return {
        "structure": name,
        "run": str(run.relative_to(ROOT.parent)),
        "preset_targets": float(np.mean(own)),
        "preset_volume_ratio_min": float(np.min(ratio)),
        "preset_volume_ratio_max": float(np.max(ratio)),
        "final_model_volume": float(np.mean(moved)),
        "measured_targets": float(np.mean(again)) if again else float("nan"),
    }


def known_beyond(root: Path, setting: str, run: Path, name: str) -> list[dict[str, Any]]:
    """How right a run's corrected targets are away from their boundary: of the voxels more than k voxels inside
    a target, the share truly foreground (mean, lowest case) and the share of the organ they cover; of the organ,
    the share more than k voxels outside it (mean, highest case)."""
    targets = _targets(run)
    # each case read once: (truth, its corrected target)
    pairs = [
        (truth, np.asarray(targets[case])[tuple(slice(0, n) for n in truth.shape)] >= 0.5)
        for case, truth, _, _, _ in _cases(root, setting)
    ]
    rows = []
    for k in BAND_WIDTHS:
        precision, recall, outside = [], [], []
        for truth, t in pairs:
            core = ndimage.binary_erosion(t, iterations=k)
            precision.append(float((core & truth).sum()) / max(float(core.sum()), 1.0))
            recall.append(float((core & truth).sum()) / float(truth.sum()))
            outside.append(
                float((truth & ~ndimage.binary_dilation(t, iterations=k)).sum()) / float(truth.sum())
            )
        rows.append(
            {
                "structure": name,
                "setting": setting,
                "run": str(run.relative_to(ROOT.parent)),
                "band": k,
                "core_foreground": float(np.mean(precision)),
                "core_foreground_min": float(np.min(precision)),
                "core_covers": float(np.mean(recall)),
                "organ_outside": float(np.mean(outside)),
                "organ_outside_max": float(np.max(outside)),
            }
        )
    return rows


def write_ceiling_set(root: Path, setting: str, mean_dice: float) -> Path:
    """A copy of ``root`` (images and clean masks linked) whose ``setting`` masks are moved to their true volume."""
    dest = CEILING / root.name
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for f in ("dataset.json", "splits_final.json"):
        if (root / f).is_file():
            shutil.copyfile(root / f, dest / f)
    for d in ("imagesTr", "imagesTs", "labelsTr", "labelsTs"):
        (dest / d).symlink_to(root / d)
    folder = dest / "labelsTr_noisy" / setting
    shutil.copytree(root / "labelsTr_noisy" / setting, folder)
    report = json.loads((folder / "noise_report.json").read_text())
    for case, truth, given, _, img in _cases(root, setting):
        moved = to_volume(given, int(truth.sum())).astype(np.uint8)
        nib.save(nib.Nifti1Image(moved, img.affine, img.header), str(folder / f"{case}.nii.gz"))
        report["cases"][case]["dice"] = _dice(moved > 0, truth)
    report["mean_dice"] = mean_dice
    report["ceiling"] = "every corrupted mask moved to its true volume (benchmarks/correction_ceiling.py)"
    write_text(folder / "noise_report.json", json.dumps(report, indent=2) + "\n")
    return dest


def write_results(out: Path, payload: dict[str, Any]) -> None:
    write_rows(out, payload)
    if payload.get("known"):
        write_rows(out, {"rows": payload["known"]}, name="known")
    lines = [
        "# The ceiling of a per-case shift: the training masks moved to their true volume (nothing trains)",
        "",
        *made_with(payload),
        "- Label Dice (%) against the clean masks, mean over the corrupted training cases (the trusted ones left "
        "out): as given; each moved, in its own geometry (distance transform, as the trusted shift moves it), to its "
        "true volume (the best any per-case shift can do; worst case in brackets); under MT-Noise dilation, each "
        "eroded by the cube that dilated it.",
        "",
        "| structure | setting | cases | given | moved to its true volume | cube undone |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in payload["rows"]:
        cube = f"{100 * r['cube_undone']:.1f}" if r["cube_undone"] is not None else "n/a"
        lines.append(
            f"| {r['structure']} | {r['setting']} | {r['cases']} | {100 * r['given']:.1f} | "
            f"{100 * r['true_volume']:.1f} ({100 * r['true_volume_min']:.1f}) | {cube} |"
        )
    if payload.get("runs"):
        lines += [
            "",
            "Under dilation, seed 0 of the preset: its own corrected targets (volume ratio to the truth, lowest and "
            "highest), and the given masks moved to the volumes its final model draws (trained on these cases only "
            "outside their masks: section 19's bound), and the targets the same preset made with the trusted measure "
            "(`data.trusted_measure`, section 20; seed 0).",
            "",
            "| structure | run | the preset's targets | their volume ratio | moved to the final model's volume "
            "| the targets with the trusted measure |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for r in payload["runs"]:
            lines.append(
                f"| {r['structure']} | `{r['run']}` | {100 * r['preset_targets']:.1f} | "
                f"{r['preset_volume_ratio_min']:.2f}-{r['preset_volume_ratio_max']:.2f} | "
                f"{100 * r['final_model_volume']:.1f} | {100 * r['measured_targets']:.1f} |"
            )
    if payload.get("known"):
        lines += [
            "",
            "Away from the boundary of the preset's corrected targets (development runs, seed 0; "
            "`data.trusted_bound_band`, section 21): of the voxels more than k voxels inside a target, the share "
            "truly foreground (lowest case) and the share of the organ they cover; the share of the organ more than k "
            "voxels outside it (highest case). %.",
            "",
            "| structure | setting | k | foreground inside | organ covered | organ outside |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for r in payload["known"]:
            lines.append(
                f"| {r['structure']} | {r['setting']} | {r['band']} | {100 * r['core_foreground']:.1f} "
                f"({100 * r['core_foreground_min']:.1f}) | {100 * r['core_covers']:.1f} | "
                f"{100 * r['organ_outside']:.2f} ({100 * r['organ_outside_max']:.2f}) |"
            )
    write_text(out / "results.md", "\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(ROOT / "results" / "correction_ceiling"))
    p.add_argument(
        "--train",
        default="",
        help="also write a copy of this dataset (e.g. Dataset801_ColinPutamen) whose dilate_t8 masks are moved to "
        f"their true volume, under {CEILING}, for benchmarks/correction_ceiling.yaml",
    )
    args = p.parse_args()
    write_results(Path(args.out), run_script(lambda: run(args)))
    print(f"results: {Path(args.out) / 'results.md'}")


if __name__ == "__main__":
    main()
