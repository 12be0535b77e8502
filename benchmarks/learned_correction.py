"""Can a correction learned on the trusted cases alone fix the other cases' masks? (a diagnostic; nothing of it in
the preset yet)

Sections 20-21 of docs/method.md ended on shape: a per-case shift cannot restore the concavities a dilation filled,
and only the trusted masks carry them. This script learns a correction from the trusted cases: a small U-Net reads
(image, a mask) and outputs the mask corrected. It trains on the trusted cases only, whose masks it perturbs by a
generic forward model of boundary error (the signed distance moved by a random amount, from a few voxels inwards to
several outwards, plus a smooth random field for ragged edges; no knowledge of the benchmark's noise protocol), then
corrects each corrupted training case's given mask. It reports the label Dice of the corrected masks against the
clean ones, and, for do no harm, of the clean masks passed through the same correction.

    python scripts/fetch_real_anatomy.py                                      # once
    svldrl benchmark benchmarks/real_anatomy_trusted_dev.yaml --only supervised --seeds 0   # writes the noisy sets
    python benchmarks/learned_correction.py --settings dilate_t8              # generic forward model (the thalamus)
    python benchmarks/learned_correction.py --settings dilate_t8 --cube       # the benchmark's own noise
    python benchmarks/learned_correction.py --settings dilate_t8 --cube --prior 2   # + the mask added to the logits

Each call adds its rows (stamped with its command) to ``results.csv``, ``results.json`` and ``results.md`` in
``--out`` (default ``benchmarks/results/learned_correction``); a row of the same structure, setting, seed and
correction is replaced. One call takes 12-24 minutes of one CPU thread (the longer beside other processes).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.losses import DiceCELoss
from scipy import ndimage

from svldrl.bench.script import made_with, run_script, write_rows
from svldrl.data.io import write_text
from svldrl.data.normalize import normalize_intensity
from svldrl.errors import UserError
from svldrl.nets.factory import build_network
from svldrl.settings import Nets

ROOT = Path(__file__).resolve().parent
REAL = Path.home() / ".cache" / "svldrl" / "real_anatomy"
SETS = {"putamen": REAL / "Dataset801_ColinPutamen", "thalamus": REAL / "Dataset803_ColinThalamus"}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def _read(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def perturb(
    mask: np.ndarray, rng: np.random.Generator, lo: float, hi: float, rough: float, cube: bool
) -> np.ndarray:
    """A generic boundary error: the signed distance (positive outside) thresholded at a random offset in
    [lo, hi] voxels plus a smooth random field of amplitude up to ``rough`` voxels. ``cube``: the benchmark's own
    noise instead (dilation by a cube of random side up to 2 * hi + 1), a diagnostic that knows the protocol."""
    if cube:
        side = int(rng.integers(1, int(2 * hi) + 2))
        return ndimage.maximum_filter(mask.astype(np.uint8), size=side, mode="nearest") > 0
    sdf = ndimage.distance_transform_edt(~mask) - ndimage.distance_transform_edt(mask)
    offset = rng.uniform(lo, hi)
    field = ndimage.gaussian_filter(rng.standard_normal(mask.shape), sigma=rng.uniform(1.5, 4.0))
    field *= rng.uniform(0.0, rough) / max(float(field.std()), 1e-6)
    out = sdf < offset + field
    return out if out.any() else mask


def train_correction(
    images: list[np.ndarray], masks: list[np.ndarray], args: argparse.Namespace, seed: int
) -> torch.nn.Module:
    """A U-Net on (image, perturbed trusted mask) -> trusted mask, trained on the trusted cases alone."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = build_network(Nets(features=[8, 16, 32, 64]), in_channels=2, rl_heads=False)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=args.iterations, power=0.9)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    net.train()
    for _ in range(args.iterations):
        idx = rng.integers(0, len(images), size=args.batch)
        noisy = [perturb(masks[i], rng, args.lo, args.hi, args.rough, args.cube) for i in idx]
        x = np.stack([np.stack([images[i], m]) for i, m in zip(idx, noisy, strict=True)]).astype(np.float32)
        y = np.stack([masks[i][None] for i in idx]).astype(np.float32)
        opt.zero_grad()
        loss = loss_fn(_logits(net, torch.from_numpy(x), args.prior), torch.from_numpy(y))
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    return net


def _logits(net: torch.nn.Module, x: torch.Tensor, prior: float) -> torch.Tensor:
    """The net's logits, plus ``prior`` times the input mask (+-1) on the foreground class: the mask is the
    starting point and the net learns where to depart from it."""
    out = net.segment(x)
    return torch.cat([out[:, :1], out[:, 1:] + prior * (2 * x[:, 1:2] - 1)], 1)


@torch.no_grad()
def correct(net: torch.nn.Module, image: np.ndarray, mask: np.ndarray, prior: float = 0.0) -> np.ndarray:
    x = torch.from_numpy(np.stack([image, mask.astype(np.float32)])[None])
    return _logits(net, x, prior).argmax(1)[0].numpy().astype(bool)


def forward_model(args: argparse.Namespace) -> str:
    """The forward model of one call, as its rows name it."""
    if args.cube:
        return f"cube dilation, side 1-{int(2 * args.hi) + 1}"
    return f"distance offset {args.lo:g} to {args.hi:g}, field {args.rough:g}"


def correction_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The call's settings as results.json keeps them: the correction's, not this machine's paths."""
    return {k: v for k, v in vars(args).items() if k not in ("out", "add")}


def run(args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    for name in args.structures.split(","):
        root = SETS.get(name)
        if root is None or not root.is_dir():
            raise UserError("no real anatomy here (python scripts/fetch_real_anatomy.py)", root or name)
        for setting in args.settings.split(","):
            folder = root / "labelsTr_noisy" / setting
            report = json.loads((folder / "noise_report.json").read_text())
            trusted = list(report["trusted"])
            img = {
                c: normalize_intensity(_read(root / "imagesTr" / f"{c}_0000.nii.gz")) for c in report["cases"]
            }
            truth = {c: _read(root / "labelsTr" / f"{c}.nii.gz") > 0 for c in report["cases"]}
            given = {c: _read(folder / f"{c}.nii.gz") > 0 for c in report["cases"]}
            others = [c for c, r in report["cases"].items() if r.get("corrupted")]
            for seed in [int(s) for s in args.seeds.split(",")]:
                t0 = time.perf_counter()
                net = train_correction([img[c] for c in trusted], [truth[c] for c in trusted], args, seed)
                fixed = {c: correct(net, img[c], given[c], args.prior) for c in others}
                rows.append(
                    {
                        "structure": name,
                        "setting": setting,
                        "seed": seed,
                        "forward": forward_model(args),
                        "prior": args.prior,
                        "iterations": args.iterations,
                        "cases": len(others),
                        "given": float(np.mean([_dice(given[c], truth[c]) for c in others])),
                        "corrected": float(np.mean([_dice(fixed[c], truth[c]) for c in others])),
                        "corrected_min": float(np.min([_dice(fixed[c], truth[c]) for c in others])),
                        "clean_through": float(
                            np.mean(
                                [_dice(correct(net, img[c], truth[c], args.prior), truth[c]) for c in others]
                            )
                        ),
                        "seconds": time.perf_counter() - t0,
                    }
                )
                print(rows[-1], flush=True)
    return {"rows": rows, "settings": correction_settings(args)}


KEY = ("structure", "setting", "seed", "forward", "prior", "iterations")


def merged(out: Path, payload: dict[str, Any], extra: list[Path]) -> dict[str, Any]:
    """``payload``'s rows, each stamped with its call's command, date and machine, added to those already in
    ``out/results.json`` and in ``extra`` results.json files of earlier calls (a row of the same structure,
    setting, seed and correction replaced)."""
    for r in payload["rows"]:
        r.update(command=payload["command"], date=payload["date"], machine=payload["machine"])
    rows: dict[tuple, dict[str, Any]] = {}
    for f in [out / "results.json", *extra]:
        if f.is_file():
            earlier = json.loads(f.read_text())
            call = argparse.Namespace(**{"prior": 0.0, "cube": False, **earlier["settings"]})
            for r in earlier["rows"]:
                if "forward" not in r:  # a call from before rows named their correction
                    r["forward"] = forward_model(call)
                r.setdefault("prior", call.prior)
                if "iterations" not in r:
                    r["iterations"] = call.iterations
                r.setdefault("command", earlier["command"])
                r.setdefault("date", earlier["date"])
                r.setdefault("machine", earlier["machine"])
                rows[tuple(r[k] for k in KEY)] = r
    for r in payload["rows"]:
        rows[tuple(r[k] for k in KEY)] = r
    return {**payload, "rows": list(rows.values())}


def write_results(out: Path, payload: dict[str, Any]) -> None:
    write_rows(out, payload)
    lines = [
        "# A correction learned on the trusted cases alone: label Dice of the corrected training masks",
        "",
        *made_with(payload),
        "- Each row: a U-Net on (image, mask) trained on the 8 trusted cases alone, their clean masks perturbed by the "
        "forward model, then run on each corrupted training case's given mask. Label Dice (%) against the clean "
        "masks, mean over the corrupted training cases (lowest in brackets); *clean through*: the clean masks passed "
        "through the same correction (100: untouched). *prior*: the input mask added to the logits (0: none).",
        "",
        "| structure | setting | seed | forward model | prior | iterations | given | corrected | clean through "
        "| seconds | command |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in payload["rows"]:
        lines.append(
            f"| {r['structure']} | {r['setting']} | {r['seed']} | {r['forward']} | {r['prior']:g} | "
            f"{r['iterations']} | {100 * r['given']:.1f} | {100 * r['corrected']:.1f} ({100 * r['corrected_min']:.1f}) "
            f"| {100 * r['clean_through']:.1f} | {r['seconds']:.0f} | `{r['command']}` ({r['date']}) |"
        )
    write_text(out / "results.md", "\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(ROOT / "results" / "learned_correction"))
    p.add_argument("--structures", default="thalamus")
    p.add_argument("--settings", default="dilate_t8,markov_t8")
    p.add_argument("--seeds", default="0")
    p.add_argument("--iterations", type=int, default=1200)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--lo", type=float, default=0.0, help="the forward model's smallest offset (voxels)")
    p.add_argument("--hi", type=float, default=3.0, help="its largest offset (voxels, outwards)")
    p.add_argument("--rough", type=float, default=1.0, help="its smooth field's largest amplitude (voxels)")
    p.add_argument("--prior", type=float, default=0.0, help="the input mask added to the logits (residual)")
    p.add_argument("--cube", action="store_true", help="the forward model is the benchmark's cube dilation")
    p.add_argument(
        "--add",
        default="",
        help="results.json files of earlier calls (comma-separated) whose rows join this folder's; with "
        "--structures none, nothing trains",
    )
    args = p.parse_args()
    out = Path(args.out)
    payload = run_script(
        lambda: (
            run(args) if args.structures != "none" else {"rows": [], "settings": correction_settings(args)}
        )
    )
    write_results(out, merged(out, payload, [Path(f) for f in args.add.split(",") if f]))
    print(f"results: {Path(args.out) / 'results.md'}")


if __name__ == "__main__":
    main()
