#!/usr/bin/env python
"""Peer check (docs/peers.md): PyMIC 0.6.2's Co-teaching on the same split and masks as an svldrl run.

    python scripts/pymic_peer.py --dataset DIR --labels noisy/NAME --fold F --out DIR [--iterations N]

Run it with svldrl's python (it reads the dataset and scores with svldrl). PyMIC itself runs in its own
virtual environment (default ``~/.cache/svldrl/pymic-venv``), made on first use with ``python -m venv``
and pip: ``torch==2.13.0`` first (the CPU build from the local wheel folder), then ``pymic==0.6.2`` and
the extras it imports without declaring (``imops einops ml_collections monai``). PyMIC runs through
``scripts/pymic/pymic_cpu.py``, which supplies a torchvision stand-in and sends PyMIC's ``cuda:N``
devices to the CPU on a CPU-only torch.

What it does, in ``OUT``:

1. ``data/``: the fold's training cases (``splits_final.json`` of the dataset, fold F; made as the
   svldrl trainer makes it when absent) with the chosen masks, its validation cases with the same kind
   of masks (noisy: a user has no clean ones), the clean test cases (``imagesTs``/``labelsTs``). Images
   are normalised to [0, 1] exactly as svldrl normalises them (dataset modality, CT window if given),
   masks binarised (``--foreground``). CSV lists ``train.csv``, ``valid.csv``, ``test.csv``.
2. ``pymic.cfg`` (from ``scripts/pymic/coteaching.cfg``): ``supervise_type = noisy_label``,
   ``method_name = CoTeaching``, ``net_type = [UNet, UNet]`` with ``dimension = 3``, Adam + PolynomialLR,
   the patch a multiple of 16; ``pymic_train`` writes ``model/``.
3. ``pymic_test`` twice: the latest checkpoint -> ``pred_final/``, the best-on-validation checkpoint ->
   ``pred_val/``; each scored against the clean test masks with svldrl's evaluator (``summary.json``).
4. ``pymic_row.json``: ``{method: "pymic_coteaching", noise, seed, fold, dice, iou, hd95, asd,
   dice_val_selected, ...}`` (Dice / IoU as fractions, HD95 / ASD in mm, as the benchmark's results).

With a benchmark that cross-validates (``dataset: {cv: K}``), point ``--dataset`` at the fold dataset the
runner wrote (``OUT/cv/foldK``): its test part is the fold's held-out cases, and ``--fold 0`` is the inner
train/validation split the svldrl runs of that fold used (``data.fold`` 0).

Exit codes: 0 done, 2 a user error (bad arguments, missing data, PyMIC could not be installed), 1 PyMIC
itself failed (its log is named).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import string
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "pymic" / "coteaching.cfg"
LAUNCHER = HERE / "pymic" / "pymic_cpu.py"
DEFAULT_VENV = Path("~/.cache/svldrl/pymic-venv").expanduser()
TORCH_PIN = "torch==2.13.0"
PYMIC_PIN = "pymic==0.6.2"
# Imported by PyMIC 0.6.2 at start-up (networks it registers eagerly) but not declared as dependencies.
PYMIC_EXTRAS = ("imops", "einops", "ml_collections", "monai")
STAMP = ".svldrl-pymic.json"
METHOD = "pymic_coteaching"


class PeerError(Exception):
    """A problem the user can fix (exit code 2)."""


def log(msg: str) -> None:
    print(f"pymic_peer: {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------
# The PyMIC environment


def ensure_venv(venv: Path, python: str) -> Path:
    """The venv's python, after creating the venv and installing PyMIC once (stamped when complete)."""
    py = venv / "bin" / "python"
    wanted = {"torch": TORCH_PIN, "pymic": PYMIC_PIN, "extras": list(PYMIC_EXTRAS)}
    stamp = venv / STAMP
    if py.is_file() and stamp.is_file():
        try:
            if json.loads(stamp.read_text()) == wanted:
                return py
        except ValueError:
            pass
    log(f"setting up the PyMIC environment in {venv} (once; a few minutes)")
    if not py.is_file():
        _run([python, "-m", "venv", str(venv)], "python -m venv")
    # torch first and pinned, so PyMIC's own requirement (any torch) does not pull another build.
    _run(
        [str(py), "-m", "pip", "install", "--disable-pip-version-check", TORCH_PIN],
        f"pip install {TORCH_PIN}",
    )
    _run(
        [str(py), "-m", "pip", "install", "--disable-pip-version-check", TORCH_PIN, PYMIC_PIN, *PYMIC_EXTRAS],
        f"pip install {PYMIC_PIN} {' '.join(PYMIC_EXTRAS)}",
    )
    stamp.write_text(json.dumps(wanted, indent=2) + "\n")
    return py


def _run(cmd: list[str], what: str) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-15:])
        raise PeerError(f"{what} failed (exit {res.returncode}):\n{tail}")


# ----------------------------------------------------------------------------------------------------------
# Data, split and configuration


def prepare_data(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    """Normalised images, binary masks and CSV lists for the fold; returns a description of the split."""
    from svldrl.data.dataset import check_mask, load_dataset
    from svldrl.data.io import read_volume, write_nifti
    from svldrl.data.normalize import normalize_intensity
    from svldrl.data.splits import load_or_create_splits
    from svldrl.errors import UserError

    try:
        ds = load_dataset(args.dataset, labels=args.labels)
        clean = load_dataset(args.dataset, labels="clean")
        splits = load_or_create_splits(ds.root, sorted(ds.case_ids), args.num_folds)
    except UserError as exc:
        raise PeerError(str(exc)) from None
    if not 0 <= args.fold < len(splits):
        raise PeerError(f"--fold {args.fold} does not exist: the splits have {len(splits)} folds")
    if not ds.test or any(c.label is None for c in ds.test):
        raise PeerError(
            f"{ds.root}: needs clean test cases (imagesTs + labelsTs); for a cross-validated benchmark use "
            "the fold datasets the runner writes (OUT/cv/foldK)"
        )
    modality = ds.modality if args.modality == "auto" else args.modality
    window = args.ct_window
    foreground = args.foreground

    def image01(case: Any) -> tuple[np.ndarray, Any]:
        vol = read_volume(case.image, key=case.image_key)
        return normalize_intensity(vol.array, modality, (0.5, 99.5), window), vol

    if data_dir.exists():
        shutil.rmtree(data_dir)
    rows: dict[str, list[str]] = {"train": [], "valid": [], "test": []}
    split = splits[args.fold]
    cases = {c.case_id: c for c in ds.train}
    for part, ids in (("train", split["train"]), ("valid", split["val"])):
        for cid in sorted(ids):
            case = cases[cid]
            img, vol = image01(case)
            mask = check_mask(
                read_volume(case.label, key=case.label_key).array, case.label, foreground, allow_empty=True
            )
            write_nifti(data_dir / "images" / f"{cid}.nii.gz", img, vol.affine)
            write_nifti(data_dir / "labels" / f"{cid}.nii.gz", mask, vol.affine)
            rows[part].append(f"images/{cid}.nii.gz,labels/{cid}.nii.gz")
    for case in clean.test:
        img, vol = image01(case)
        ref = read_volume(case.label, key=case.label_key)
        mask = check_mask(ref.array, case.label, foreground, allow_empty=True)
        write_nifti(data_dir / "test_images" / f"{case.case_id}.nii.gz", img, vol.affine)
        write_nifti(data_dir / "test_labels" / f"{case.case_id}.nii.gz", mask, ref.affine)
        rows["test"].append(f"test_images/{case.case_id}.nii.gz")
    for part, lines in rows.items():
        header = "image" if part == "test" else "image,label"
        (data_dir / f"{part}.csv").write_text("\n".join([header, *lines]) + "\n")
    return {
        "train": sorted(split["train"]),
        "valid": sorted(split["val"]),
        "test": [c.case_id for c in clean.test],
    }


def write_config(args: argparse.Namespace, out: Path, n_train: int) -> Path:
    iter_valid = max(1, min(args.iter_valid, args.iterations))
    iterations = int(np.ceil(args.iterations / iter_valid)) * iter_valid  # PyMIC trains in iter_valid chunks
    values = {
        "data_dir": str(out / "data"),
        "train_csv": str(out / "data" / "train.csv"),
        "valid_csv": str(out / "data" / "valid.csv"),
        "test_csv": str(out / "data" / "test.csv"),
        # drop_last=True in PyMIC's loader: a batch larger than the training set would yield nothing.
        "batch": min(args.batch, n_train),
        "patch": args.patch,
        "stride": args.patch // 2,
        "pos_fraction": args.pos_fraction,
        "features": json.dumps(args.features),
        "seed": args.seed,
        "lr": args.lr,
        "ckpt_dir": str(out / "model"),
        "iterations": iterations,
        "iter_valid": iter_valid,
        "select_ratio": 1.0 - args.forget_rate,
        "rampup_start": 0,
        # The forget rate ramps up over the first part of training, as svldrl's coteaching (forget_ramp).
        "rampup_end": max(1, int(round(args.forget_ramp * iterations))),
        "pred_dir": str(out / "pred_final"),
    }
    cfg = out / "pymic.cfg"
    cfg.write_text(string.Template(TEMPLATE.read_text()).substitute(values))
    return cfg


# ----------------------------------------------------------------------------------------------------------
# Running PyMIC and scoring


def run_pymic(py: Path, stage: str, cfg: Path, extra: list[str], log_file: Path, threads: int) -> float:
    env = dict(os.environ)
    if threads:
        env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    # PyMIC writes relative paths nowhere we rely on; run from OUT so stray files land there.
    t0 = time.monotonic()
    with open(log_file, "w") as fh:
        res = subprocess.run(
            [str(py), str(LAUNCHER), stage, str(cfg), *extra],
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=cfg.parent,
            env=env,
        )
    if res.returncode != 0:
        tail = "\n".join(log_file.read_text(errors="replace").strip().splitlines()[-20:])
        raise RuntimeError(f"pymic {stage} failed (exit {res.returncode}); log {log_file}:\n{tail}")
    return time.monotonic() - t0


def score(pred_dir: Path, ref_dir: Path) -> dict[str, float]:
    from svldrl.eval.summary import evaluate_folders

    fg = evaluate_folders(pred_dir, ref_dir, labels=[1])["foreground_mean"]
    return {"dice": fg["Dice"], "iou": fg["IoU"], "hd95": fg["HD95"], "asd": fg["ASD"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--dataset", required=True, help="dataset folder (nnU-Net layout with imagesTs/labelsTs)")
    p.add_argument("--labels", default="clean", help="clean or noisy/NAME (training and validation masks)")
    p.add_argument("--fold", type=int, default=0, help="fold of the dataset's splits_final.json")
    p.add_argument("--num-folds", type=int, default=5, help="folds when splits_final.json must be made")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--iterations", type=int, default=2000)
    p.add_argument("--iter-valid", type=int, default=100, help="iterations between validations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--patch", type=int, default=48, help="cubic patch side, a multiple of 16")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument(
        "--features",
        type=json.loads,
        default=[16, 32, 64, 128, 256],
        help="UNet channels of its 5 levels, JSON list",
    )
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--forget-rate", type=float, default=0.2, help="final forget rate (1 - select ratio)")
    p.add_argument(
        "--forget-ramp", type=float, default=0.3, help="fraction of training over which it ramps up"
    )
    p.add_argument("--pos-fraction", type=float, default=0.67, help="share of foreground-centred patches")
    p.add_argument("--modality", choices=["auto", "mr", "ct"], default="auto")
    p.add_argument("--ct-window", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"))
    p.add_argument(
        "--foreground",
        type=lambda s: [int(v) for v in s.split(",")],
        default=None,
        help="label values mapped to foreground, e.g. 1,2",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads of PyMIC (0: its default)")
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="PyMIC's virtual environment")
    p.add_argument("--python", default=sys.executable, help="python that creates the venv")
    args = p.parse_args(argv)

    try:
        if args.patch % 16 or args.patch < 16:
            raise PeerError(
                f"--patch must be a positive multiple of 16 (PyMIC's UNet halves 4 times), got {args.patch}"
            )
        if len(args.features) != 5:
            raise PeerError(
                f"--features needs 5 channel counts (PyMIC's UNet has 5 levels), got {args.features}"
            )
        if args.iterations < 1:
            raise PeerError("--iterations must be >= 1")
        if not args.labels == "clean" and not args.labels.startswith("noisy/"):
            raise PeerError(f"--labels must be clean or noisy/NAME, got {args.labels!r}")
        out = Path(args.out).resolve()
        out.mkdir(parents=True, exist_ok=True)
        split = prepare_data(args, out / "data")
        py = ensure_venv(args.venv.expanduser(), args.python)
    except PeerError as exc:
        log(f"error: {exc}")
        return 2

    noise = "clean" if args.labels == "clean" else args.labels.split("/", 1)[1]
    log(
        f"fold {args.fold}: {len(split['train'])} training / {len(split['valid'])} validation cases "
        f"({args.labels}), "
        f"{len(split['test'])} clean test cases"
    )
    cfg = write_config(args, out, len(split["train"]))
    shutil.rmtree(out / "model", ignore_errors=True)
    try:
        log(f"pymic_train (CoTeaching, 2 x 3D UNet, {args.iterations} iterations) -> {out / 'model'}")
        train_s = run_pymic(py, "train", cfg, [], out / "pymic_train.log", args.threads)
        scores: dict[str, dict[str, float]] = {}
        pred_s = 0.0
        for tag, mode in (("final", 0), ("val", 1)):
            pred_dir = out / f"pred_{tag}"
            shutil.rmtree(pred_dir, ignore_errors=True)
            pred_s += run_pymic(
                py,
                "test",
                cfg,
                ["--output_dir", str(pred_dir), "--ckpt_mode", str(mode)],
                out / f"pymic_test_{tag}.log",
                args.threads,
            )
            for f in pred_dir.iterdir():  # PyMIC leaves its log and config among the predictions
                if not f.name.endswith(".nii.gz"):
                    f.rename(out / f"{tag}_{f.name}")
            scores[tag] = score(pred_dir, out / "data" / "test_labels")
    except RuntimeError as exc:
        log(f"error: {exc}")
        return 1

    row = {
        "method": METHOD,
        "noise": noise,
        "labels": args.labels,
        "seed": args.seed,
        "fold": args.fold,
        **scores["final"],
        **{f"{k}_val_selected": v for k, v in scores["val"].items()},
        "iterations": args.iterations,
        "train_seconds": round(train_s, 1),
        "predict_seconds": round(pred_s, 1),
        "peer": f"PyMIC {PYMIC_PIN.split('==')[1]} CoTeaching, net_type [UNet, UNet] 3D, patch {args.patch}, "
        f"features {args.features}",
        "command": shlex.join(["python", "scripts/pymic_peer.py", *(sys.argv[1:] if argv is None else argv)]),
        "split": split,
    }
    (out / "pymic_row.json").write_text(json.dumps(row, indent=2) + "\n")
    log(
        f"Dice {row['dice']:.4f} (final) / {row['dice_val_selected']:.4f} (val-selected) "
        f"-> {out / 'pymic_row.json'}"
    )
    print(out / "pymic_row.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
