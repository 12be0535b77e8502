"""A benchmark's data: the phantoms (when synthetic), every noisy set (one noise seed) and the cross-validation
fold datasets, prepared once per benchmark folder (under a file lock shared by processes)."""

from __future__ import annotations

import contextlib
import json
import math
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from svldrl.bench.spec import CLEAN, Benchmark, expand_env
from svldrl.data.io import read_json, write_text
from svldrl.errors import UserError
from svldrl.reporter import Reporter

LOCK_NAME = ".prepare.lock"  # serialises data preparation between processes sharing an out folder


@dataclass
class Data:
    """Where each run trains and what it is scored on."""

    source: Path  # the dataset root the noise was written into
    label_dice: dict[str, float]  # setting -> mean label Dice of its noisy masks (1.0 clean)
    voxel_error: dict[str, float]
    folds: dict[int | None, Path]  # fold -> dataset root with imagesTs/labelsTs (None: no cv)
    description: str
    trusted: dict[str, list[str]] = field(default_factory=dict)  # setting -> its trusted cases (recorded)


def dataset_root(bench: Benchmark, out_dir: Path) -> Path:
    if "synth" in bench.dataset:
        return out_dir / "dataset"
    return Path(expand_env(bench.dataset["path"])).absolute()


def check_dataset_path(root: Path, cv: int) -> None:
    from svldrl.data.dataset import load_dataset

    ds = load_dataset(root)
    if cv:
        if len(ds.train) < cv:
            raise UserError(
                f"cv: {cv} needs at least {cv} training cases, the dataset has {len(ds.train)}", root
            )
        return
    base = ds.root
    for sub in ("imagesTs", "labelsTs"):
        folder = base / sub
        if not folder.is_dir() or not any(
            p.is_file() and not p.name.startswith(".") for p in folder.iterdir()
        ):
            raise UserError(
                f"the benchmark scores on a clean test part, but {sub}/ is missing or empty; "
                "add imagesTs/labelsTs or use 'cv: K' in the dataset section",
                base,
            )
    if any(c.label is None for c in ds.test):
        missing = [c.case_id for c in ds.test if c.label is None][:5]
        raise UserError(f"test cases without a clean mask in labelsTs: {', '.join(missing)}", base)


def prepare_data(bench: Benchmark, out_dir: Path, reporter: Reporter) -> Data:
    """Write the phantoms (if synthetic), every noisy set (one noise seed) and the cv fold datasets."""
    from svldrl.data.dataset import load_dataset
    from svldrl.runs import run_noise

    root = dataset_root(bench, out_dir)
    if "synth" in bench.dataset:
        from svldrl.data.synth import synthesize

        s = bench.dataset["synth"]
        previous = (read_json(root / "dataset.json", {}) or {}).get("synth") or {}
        difficulty = s.get("difficulty", "standard")
        changed = any(previous.get(k) != v for k, v in s.items() if k != "difficulty")
        if changed or previous.get("difficulty", "standard") != difficulty or not _synth_complete(root, s):
            reporter.info(
                f"phantoms: {s['cases']} training + {s['test_cases']} test cases of {s['size']}^3 ({difficulty})"
            )
            synthesize(
                root,
                cases=s["cases"],
                size=s["size"],
                seed=s["seed"],
                test_cases=s["test_cases"],
                difficulty=difficulty,
            )
        description = (
            f"synthetic phantoms (svldrl synth, difficulty {difficulty}): {s['cases']} training / "
            f"{s['test_cases']} test cases of {s['size']}^3, seed {s['seed']}"
        )
    else:
        description = f"{root}"
    ds = load_dataset(root)
    label_dice, voxel_error = {CLEAN: 1.0}, {CLEAN: 0.0}
    noisy_dirs: dict[str, Path] = {}
    trusted: dict[str, list[str]] = {}
    for n in bench.noise:
        reporter.info(
            f"noise {n.name}: protocol {n.protocol}, ratio {n.ratio:g}, params {n.params or {}}"
            + (f", {n.trusted} trusted cases" if n.trusted else "")
        )
        try:
            folder = Path(
                run_noise(
                    root,
                    n.protocol,
                    n.ratio,
                    bench.noise_seed,
                    name=n.name,
                    params=n.params,
                    trusted=n.trusted,
                )
            )
        except UserError as exc:
            raise UserError(f"noise setting '{n.name}': {exc}", bench.path) from None
        report = read_json(folder / "noise_report.json", {})
        if report.get("trusted"):
            trusted[n.name] = list(report["trusted"])
        label_dice[n.name] = float(report.get("mean_dice", math.nan))
        voxel_error[n.name] = float(report.get("mean_voxel_error_rate", math.nan))
        noisy_dirs[n.name] = folder
    if not bench.cv:
        n_test = len(ds.test)
        return Data(
            root,
            label_dice,
            voxel_error,
            {None: ds.root},
            f"{description}; {len(ds.train)} training cases, {n_test} clean test cases",
            trusted,
        )
    folds = _make_folds(ds, bench.cv, noisy_dirs, out_dir / "cv", reporter, trusted)
    return Data(
        root,
        label_dice,
        voxel_error,
        folds,
        f"{description}; {bench.cv}-fold cross-validation over {len(ds.train)} cases "
        "(each fold's held-out cases are its test cases, scored against their clean masks)",
        trusted,
    )


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing) for the block."""
    import fcntl  # POSIX only, like the rest of the multi-process tooling

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _synth_complete(root: Path, s: dict) -> bool:
    n = lambda sub: len(list((root / sub).glob("*.nii.gz"))) if (root / sub).is_dir() else 0  # noqa: E731
    return n("imagesTr") == n("labelsTr") == s["cases"] and n("imagesTs") == n("labelsTs") == s["test_cases"]


def _make_folds(
    ds: Any,
    k: int,
    noisy_dirs: dict[str, Path],
    base: Path,
    reporter: Reporter,
    trusted: dict[str, list[str]] | None = None,
) -> dict:
    """One nnU-Net dataset per fold: its training cases (clean and noisy masks), its held-out cases as test.

    The noisy masks are those written once for the whole dataset, so every fold sees the same noise;
    each trainer then carves its own validation split from the fold's training cases (its trusted ones, where
    the setting has ``trusted``: each noisy set's ``trusted.json`` is copied with the fold's training cases among
    them; a trusted case held out as a test case is just a test case).
    """
    from svldrl.data.dataset import TRUSTED_FILE
    from svldrl.data.io import read_volume, write_nifti
    from svldrl.data.splits import make_splits

    splits = make_splits(ds.case_ids, k)
    cases = {c.case_id: c for c in ds.train}
    folds: dict[int | None, Path] = {}
    for f, split in enumerate(splits):
        root = base / f"fold{f}"
        folds[f] = root
        stamp = {"source": str(ds.root), "split": split, "noise": sorted(noisy_dirs)}
        if trusted:  # only then: folds made before trusted cases keep their stamp
            stamp["trusted"] = {name: sorted(ids) for name, ids in sorted(trusted.items())}
        if read_json(root / ".fold.json", None) == stamp:
            continue
        reporter.info(
            f"cv fold {f}: {len(split['train'])} training / {len(split['val'])} test cases -> {root}"
        )
        shutil.rmtree(root, ignore_errors=True)

        def put(src: Path, key: str, dst: Path) -> None:
            if str(src).endswith(".nii.gz"):
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
            else:
                vol = read_volume(src, key=key)
                write_nifti(dst, vol.array, vol.affine)

        for part, ids in (("Tr", split["train"]), ("Ts", split["val"])):
            for cid in ids:
                c = cases[cid]
                put(Path(c.image), c.image_key, root / f"images{part}" / f"{cid}_0000.nii.gz")
                put(Path(c.label), c.label_key, root / f"labels{part}" / f"{cid}.nii.gz")
                if part == "Tr":
                    for name, folder in noisy_dirs.items():
                        put(
                            folder / f"{cid}.nii.gz",
                            "label",
                            root / "labelsTr_noisy" / name / f"{cid}.nii.gz",
                        )
        for name, ids in (trusted or {}).items():
            mine = [cid for cid in ids if cid in set(split["train"])]
            if mine:
                record = {
                    "cases": mine,
                    "written_by": "svldrl benchmark",
                    "note": f"the trusted cases of {name} (noise_report.json) in this fold's training part",
                }
                write_text(root / "labelsTr_noisy" / name / TRUSTED_FILE, json.dumps(record, indent=2) + "\n")
        dataset_json = {
            "channel_names": {"0": "CT" if ds.modality == "ct" else "MR"},
            "labels": ds.labels,
            "numTraining": len(split["train"]),
            "file_ending": ".nii.gz",
            "name": f"{ds.root.name}_cv{k}_fold{f}",
        }
        write_text(root / "dataset.json", json.dumps(dataset_json, indent=2) + "\n")
        write_text(root / ".fold.json", json.dumps(stamp, indent=2) + "\n")
    return folds
