"""``svldrl benchmark``: train every method on every noise setting with every seed, score on clean test masks.

A benchmark is a YAML file (examples in ``benchmarks/``)::

    name: phantom_cpu                  # optional; default the file's stem
    description: one paragraph         # optional, copied into results.md
    dataset:                           # exactly one of synth / path; cv optional
      synth: {cases: 16, size: 40, seed: 0, test_cases: 6}   # phantoms written to OUT/dataset
      # path: ${DATASET}               # a dataset with a clean test part imagesTs/labelsTs;
      #                                # ${VAR} is replaced by the environment variable VAR
      # cv: 5                          # K-fold cross-validation instead of a test part: each
      #                                # fold's held-out cases are the test cases (clean masks)
    noise_seed: 0                      # one noise seed: every method sees the same masks
    noise:                             # noisy-label settings (run_noise's protocols)
      - {name: mt0.5, protocol: mt, ratio: 0.5}
      - {name: mt_dilate1.0, protocol: mt, ratio: 1.0, params: {mode: dilate}}
    methods:                           # rows: a label, a registered method, config overrides
      - {name: supervised, method: supervised}
      - {name: svldrl_label, method: svldrl, set: [rl.action_space=label]}
    methods_on_clean: [supervised]     # also trained on the clean masks (default: supervised = the oracle)
    base: [train.patch=32, train.iterations=400]   # overrides shared by every run (list or mapping)
    seeds: [0, 1, 2]                   # training seeds

Runs live in ``OUT/runs/<noise>/<method>/seed<k>/`` (``.../seed<k>/fold<f>/`` with ``cv``); the clean
oracle under ``OUT/runs/clean/``. A run is a training run folder plus ``pred_final/`` and ``pred_val/``
(the clean test cases segmented with the final and with the best-on-noisy-validation checkpoint, each
with its ``summary.json``) and ``result.json``, written atomically last. Rerunning the benchmark skips
runs with a result, resumes trainings that have a ``checkpoint_latest.pt`` but no final checkpoint, and
rewrites ``results.csv``, ``results.md`` and ``plots/`` from every completed run.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import datetime
import io
import json
import math
import os
import platform
import re
import shutil
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from svldrl import __version__
from svldrl import config as C
from svldrl.data.io import write_text
from svldrl.errors import UserError
from svldrl.reporter import QUIET, Reporter, fmt_seconds

#: Name of the oracle setting (training on the clean masks).
CLEAN = "clean"
RESULT_NAME = "result.json"
ERROR_NAME = "error.txt"
SPEC_NAME = "benchmark_spec.json"
LOCK_NAME = ".prepare.lock"  # serialises data preparation between processes sharing an out folder
#: One row per run; ``fold`` is empty without cross-validation. Dice/IoU are fractions, HD95/ASD mm.
CSV_COLUMNS = (
    "method",
    "noise",
    "seed",
    "fold",
    "base_method",
    "labels",
    "dice",
    "iou",
    "hd95",
    "asd",
    "label_dice",
    "n_test",
    "dice_val_selected",
    "iou_val_selected",
    "hd95_val_selected",
    "asd_val_selected",
    "best_epoch",
    "epochs",
    "iterations",
    "train_seconds",
    "predict_seconds",
)
METRICS = (
    "dice",
    "iou",
    "hd95",
    "asd",
    "dice_val_selected",
    "iou_val_selected",
    "hd95_val_selected",
    "asd_val_selected",
    "train_seconds",
    "predict_seconds",
)
_TOP_KEYS = (
    "name",
    "description",
    "dataset",
    "noise",
    "noise_seed",
    "methods",
    "methods_on_clean",
    "base",
    "seeds",
)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
_ENV = re.compile(r"\$\{([^}]*)\}")
# The runner sets these per run; a config that sets them would silently be overridden.
_RUNNER_KEYS = ("method", "labels", "seed")
# Keys that do not change what a run computes: a rerun on another machine may differ in them.
_NEUTRAL_KEYS = {
    "train.threads",
    "train.keep_freed_memory",
    "train.device",
    "data.workers",
    "data.cache",
    "infer.sw_batch",
}


# ----------------------------------------------------------------------------------------------------------
# The benchmark file


@dataclass
class NoiseSetting:
    """One noisy-label setting; ``protocol`` None is the clean oracle."""

    name: str
    protocol: str | None = None
    ratio: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class MethodEntry:
    """One row of the results: a label, the registered method and its config overrides."""

    name: str
    method: str
    overrides: list[str] = field(default_factory=list)


@dataclass
class Benchmark:
    """A parsed and structurally checked benchmark file."""

    path: Path
    name: str
    description: str
    dataset: dict[str, Any]
    noise: list[NoiseSetting]
    noise_seed: int
    methods: list[MethodEntry]
    methods_on_clean: list[str]
    base: list[str]
    seeds: list[int]

    @property
    def cv(self) -> int:
        """Number of cross-validation folds (0: a fixed test part)."""
        return int(self.dataset.get("cv", 0))

    def method(self, name: str) -> MethodEntry:
        """The entry labelled ``name``; ``supervised`` exists implicitly (plain training)."""
        for m in self.methods:
            if m.name == name:
                return m
        if name == "supervised":
            return MethodEntry("supervised", "supervised")
        raise KeyError(name)


def load_benchmark(config_path: str | Path) -> Benchmark:
    """Read a benchmark YAML file and check its structure (run configs are checked by :func:`plan_runs`).

    Raises:
        UserError: a missing or malformed file, a missing or unknown key, a bad value, an unknown method.
    """
    from svldrl.methods import METHODS

    path = Path(config_path)
    if not path.is_file():
        raise UserError("benchmark config not found", path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"malformed YAML ({str(exc).splitlines()[0]})", path) from None
    if not isinstance(data, dict):
        raise UserError("a benchmark config must hold a mapping of keys", path)

    def fail(message: str) -> UserError:
        return UserError(message, path)

    unknown = sorted(set(data) - set(_TOP_KEYS))
    if unknown:
        raise fail(f"unknown key(s) {', '.join(unknown)} (accepted: {', '.join(_TOP_KEYS)})")
    for key in ("dataset", "noise", "methods", "seeds"):
        if key not in data:
            raise fail(f"missing key '{key}'")

    dataset = _check_dataset(data["dataset"], fail)
    noise_seed = data.get("noise_seed", 0)
    if isinstance(noise_seed, bool) or not isinstance(noise_seed, int) or noise_seed < 0:
        raise fail(f"noise_seed must be a non-negative integer, got {noise_seed!r}")

    if not isinstance(data["noise"], list):
        raise fail("noise must be a list of {name, protocol, ratio, params} (empty: the clean oracle only)")
    noise: list[NoiseSetting] = []
    for i, entry in enumerate(data["noise"]):
        setting = _check_noise(entry, i, fail)
        if setting.protocol is None:
            continue  # an explicit clean entry: the oracle is always there
        if setting.name in [n.name for n in noise]:
            raise fail(f"noise setting name '{setting.name}' appears twice")
        noise.append(setting)

    if not isinstance(data["methods"], list) or not data["methods"]:
        raise fail("methods must be a non-empty list of {name, method, set}")
    methods: list[MethodEntry] = []
    for i, entry in enumerate(data["methods"]):
        if not isinstance(entry, dict):
            raise fail(f"methods[{i}] must be a mapping with name, method and optionally set")
        extra = sorted(set(entry) - {"name", "method", "set"})
        if extra:
            raise fail(f"methods[{i}]: unknown key(s) {', '.join(extra)} (accepted: name, method, set)")
        name = entry.get("name", entry.get("method"))
        method = entry.get("method", name)
        if name is None:
            raise fail(f"methods[{i}]: missing key 'method'")
        _check_name(name, f"methods[{i}].name", fail)
        if method not in METHODS:
            raise fail(
                f"methods[{i}] ({name}): unknown method '{method}' "
                f"(choose from: {', '.join(sorted(METHODS))})"
            )
        if name in [m.name for m in methods]:
            raise fail(f"method name '{name}' appears twice")
        overrides = _overrides(entry.get("set"), f"methods[{i}].set ({name})", fail)
        methods.append(MethodEntry(str(name), str(method), overrides))

    on_clean = data.get("methods_on_clean", ["supervised"])
    if on_clean is None:
        on_clean = []
    if not isinstance(on_clean, list) or not all(isinstance(n, str) for n in on_clean):
        raise fail("methods_on_clean must be a list of method names")
    known = [m.name for m in methods]
    for n in on_clean:
        if n not in known and n != "supervised":
            raise fail(f"methods_on_clean names '{n}', which is not in methods ({', '.join(known)})")

    seeds = data["seeds"]
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    ):
        raise fail(f"seeds must be a non-empty list of non-negative integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise fail(f"seeds repeat a value: {seeds}")

    description = data.get("description", "")
    return Benchmark(
        path=path,
        name=str(data.get("name") or path.stem),
        description=str(description or "").strip(),
        dataset=dataset,
        noise=noise,
        noise_seed=noise_seed,
        methods=methods,
        methods_on_clean=list(dict.fromkeys(on_clean)),
        base=_overrides(data.get("base"), "base", fail),
        seeds=list(seeds),
    )


def _check_dataset(spec: Any, fail: Any) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise fail("dataset must be a mapping with synth or path (and optionally cv)")
    extra = sorted(set(spec) - {"synth", "path", "cv"})
    if extra:
        raise fail(f"dataset: unknown key(s) {', '.join(extra)} (accepted: synth, path, cv)")
    if ("synth" in spec) == ("path" in spec):
        raise fail("dataset needs exactly one of 'synth' (phantoms) or 'path' (a dataset folder)")
    cv = spec.get("cv", 0)
    if isinstance(cv, bool) or not isinstance(cv, int) or cv == 1 or cv < 0:
        raise fail(f"dataset.cv must be an integer >= 2 (folds), got {cv!r}")
    if "synth" in spec:
        synth = spec["synth"]
        if not isinstance(synth, dict):
            raise fail("dataset.synth must be a mapping {cases, size, seed, test_cases}")
        from svldrl.data.synth import DIFFICULTIES

        accepted = ("cases", "size", "seed", "test_cases", "difficulty")
        extra = sorted(set(synth) - set(accepted))
        if extra:
            raise fail(f"dataset.synth: unknown key(s) {', '.join(extra)} (accepted: {', '.join(accepted)})")
        for key in ("cases", "size"):
            if key not in synth:
                raise fail(f"dataset.synth: missing key '{key}'")
        synth = {"seed": 0, "test_cases": 0, **synth}
        for key, value in synth.items():
            if key == "difficulty":
                if value not in DIFFICULTIES:
                    raise fail(
                        f"dataset.synth.difficulty must be one of {', '.join(DIFFICULTIES)}, got {value!r}"
                    )
            elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise fail(f"dataset.synth.{key} must be a non-negative integer, got {value!r}")
        if synth.get("difficulty") == "standard":
            del synth["difficulty"]  # the default: the spec (and --reuse matching) stays as before the option
        if not cv and synth["test_cases"] < 1:
            raise fail("dataset.synth.test_cases must be >= 1 (the clean test cases), or use cv: K")
        return {"synth": synth, **({"cv": cv} if cv else {})}
    if not isinstance(spec["path"], str) or not spec["path"].strip():
        raise fail(f"dataset.path must be a path, got {spec['path']!r}")
    return {"path": spec["path"], **({"cv": cv} if cv else {})}


def _check_noise(entry: Any, i: int, fail: Any) -> NoiseSetting:
    if not isinstance(entry, dict):
        raise fail(f"noise[{i}] must be a mapping {{name, protocol, ratio, params}}")
    extra = sorted(set(entry) - {"name", "protocol", "ratio", "params"})
    if extra:
        raise fail(f"noise[{i}]: unknown key(s) {', '.join(extra)} (accepted: name, protocol, ratio, params)")
    name = entry.get("name")
    if name is None:
        raise fail(f"noise[{i}]: missing key 'name'")
    _check_name(name, f"noise[{i}].name", fail)
    if name == CLEAN:
        if set(entry) - {"name"}:
            raise fail(f"noise[{i}]: the setting named '{CLEAN}' is the clean oracle and takes no protocol")
        return NoiseSetting(CLEAN)
    for key in ("protocol", "ratio"):
        if key not in entry:
            raise fail(f"noise[{i}] ({name}): missing key '{key}'")
    protocol, ratio, params = entry["protocol"], entry["ratio"], entry.get("params") or {}
    if not isinstance(protocol, str) or not protocol:
        raise fail(f"noise[{i}] ({name}): protocol must be a name, got {protocol!r}")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
        raise fail(f"noise[{i}] ({name}): ratio must be a number in [0, 1], got {ratio!r}")
    if not isinstance(params, dict):
        raise fail(f"noise[{i}] ({name}): params must be a mapping of protocol parameters")
    return NoiseSetting(str(name), protocol, float(ratio), dict(params))


def _check_name(name: Any, where: str, fail: Any) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise fail(f"{where} must be a plain name (letters, digits, _ . + -), got {name!r}")


def _overrides(value: Any, where: str, fail: Any) -> list[str]:
    """A list of ``key=value`` strings or a (nested or dotted) mapping -> ``key=value`` strings."""
    if value is None:
        return []
    if isinstance(value, dict):
        items = [f"{k}={json.dumps(v)}" for k, v in C._flatten(value).items()]  # JSON is YAML
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = list(value)
    else:
        raise fail(f"{where} must be a list of key=value strings or a mapping of config keys")
    for item in items:
        if "=" not in item:
            raise fail(f"{where}: expected key=value, got '{item}'")
        key = item.split("=", 1)[0].strip()
        if key in _RUNNER_KEYS:
            raise fail(f"{where} sets '{key}', which the benchmark sets per run")
    return items


def expand_env(text: str, where: str = "dataset.path") -> str:
    """Replace every ``${VAR}`` by the environment variable VAR and expand ``~``.

    Raises:
        UserError: a variable that is not set (or an empty ``${}``).
    """

    def sub(match: re.Match) -> str:
        var = match.group(1)
        if not var or var not in os.environ:
            raise UserError(f"{where}: environment variable {var or '(empty name)'} is not set ({text})")
        return os.environ[var]

    return os.path.expanduser(_ENV.sub(sub, text))


# ----------------------------------------------------------------------------------------------------------
# Planning


@dataclass
class Run:
    """One training run of the matrix."""

    noise: str
    method: MethodEntry
    seed: int
    fold: int | None
    dir: Path
    cfg: dict

    @property
    def labels(self) -> str:
        """The training masks: ``clean`` or ``noisy/<setting>``."""
        return "clean" if self.noise == CLEAN else f"noisy/{self.noise}"

    @property
    def label(self) -> str:
        """``<setting>/<method>/seed<k>[/fold<f>]``, as in the run folder's path."""
        fold = "" if self.fold is None else f"/fold{self.fold}"
        return f"{self.noise}/{self.method.name}/seed{self.seed}{fold}"


def plan_runs(bench: Benchmark, out_dir: Path) -> list[Run]:
    """Every run of the matrix with its validated config, seed-major (a full table exists after one seed).

    Raises:
        UserError: an override with an unknown config key or a bad value (from ``load_config``).
    """
    folds: list[int | None] = list(range(bench.cv)) if bench.cv else [None]
    settings = [CLEAN, *(n.name for n in bench.noise)]
    runs: list[Run] = []
    for seed in bench.seeds:
        for noise in settings:
            names = bench.methods_on_clean if noise == CLEAN else [m.name for m in bench.methods]
            for name in names:
                entry = bench.method(name)
                labels = "clean" if noise == CLEAN else f"noisy/{noise}"
                overrides = [
                    *bench.base,
                    f"method={entry.method}",
                    f"labels={labels}",
                    f"seed={seed}",
                    *entry.overrides,
                ]
                try:
                    cfg = C.load_config(overrides=overrides)
                except UserError as exc:
                    raise UserError(f"method '{name}' on '{noise}': {exc}", bench.path) from None
                for fold in folds:
                    d = out_dir / "runs" / noise / name / f"seed{seed}"
                    runs.append(Run(noise, entry, seed, fold, d if fold is None else d / f"fold{fold}", cfg))
    return runs


def _config_differences(asked: dict, saved: dict) -> list[str]:
    a, s, defaults = C._flatten(asked), C._flatten(saved), C._flatten(C.DEFAULTS)
    diffs = []
    for key in sorted(set(a) | set(s)):
        if key in _NEUTRAL_KEYS or a.get(key) == s.get(key):
            continue
        if key not in s and key in defaults and a.get(key) == defaults[key]:
            continue  # the run predates this key and was made with what is now its default
        if key in ("data.modality", "data.intensity_range") and a.get(key) in ("auto", None):
            continue  # the trainer writes what it resolved from the dataset (modality, CT fingerprint range)
        diffs.append(f"{key}: {s.get(key)!r} there, {a.get(key)!r} asked")
    return diffs


def _check_existing(run: Run) -> None:
    """Refuse to skip or resume a run folder made with other settings (its results would be stale)."""
    result = _read_json(run.dir / RESULT_NAME)
    saved = result.get("config") if isinstance(result, dict) else None
    if saved is None and (run.dir / "config.yaml").is_file():
        try:
            saved = C.load_config([run.dir / "config.yaml"])
        except UserError:
            saved = None
    if saved is None:
        return
    diffs = _config_differences(run.cfg, saved)
    if diffs:
        raise UserError(
            f"run {run.label} was made with other settings ({'; '.join(diffs[:4])}"
            f"{' ...' if len(diffs) > 4 else ''}); delete that run folder or choose another --out",
            run.dir,
        )


# ----------------------------------------------------------------------------------------------------------
# Data


@dataclass
class Data:
    """Where each run trains and what it is scored on."""

    source: Path  # the dataset root the noise was written into
    label_dice: dict[str, float]  # setting -> mean label Dice of its noisy masks (1.0 clean)
    voxel_error: dict[str, float]
    folds: dict[int | None, Path]  # fold -> dataset root with imagesTs/labelsTs (None: no cv)
    description: str


def _dataset_root(bench: Benchmark, out_dir: Path) -> Path:
    if "synth" in bench.dataset:
        return out_dir / "dataset"
    return Path(expand_env(bench.dataset["path"])).absolute()


def _check_dataset_path(root: Path, cv: int) -> None:
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
    from svldrl.noise import run_noise

    root = _dataset_root(bench, out_dir)
    if "synth" in bench.dataset:
        from svldrl.data.synth import synthesize

        s = bench.dataset["synth"]
        previous = (_read_json(root / "dataset.json", {}) or {}).get("synth") or {}
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
    for n in bench.noise:
        reporter.info(f"noise {n.name}: protocol {n.protocol}, ratio {n.ratio:g}, params {n.params or {}}")
        try:
            folder = Path(
                run_noise(root, n.protocol, n.ratio, bench.noise_seed, name=n.name, params=n.params)
            )
        except UserError as exc:
            raise UserError(f"noise setting '{n.name}': {exc}", bench.path) from None
        report = _read_json(folder / "noise_report.json", {})
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
        )
    folds = _make_folds(ds, bench.cv, noisy_dirs, out_dir / "cv", reporter)
    return Data(
        root,
        label_dice,
        voxel_error,
        folds,
        f"{description}; {bench.cv}-fold cross-validation over {len(ds.train)} cases "
        "(each fold's held-out cases are its test cases, scored against their clean masks)",
    )


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
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


def _make_folds(ds: Any, k: int, noisy_dirs: dict[str, Path], base: Path, reporter: Reporter) -> dict:
    """One nnU-Net dataset per fold: its training cases (clean and noisy masks), its held-out cases as test.

    The noisy masks are those written once for the whole dataset, so every fold sees the same noise;
    each trainer then carves its own validation split from the fold's training cases.
    """
    from svldrl.data.io import read_volume, write_nifti
    from svldrl.data.splits import make_splits

    splits = make_splits(ds.case_ids, k)
    cases = {c.case_id: c for c in ds.train}
    folds: dict[int | None, Path] = {}
    for f, split in enumerate(splits):
        root = base / f"fold{f}"
        folds[f] = root
        stamp = {"source": str(ds.root), "split": split, "noise": sorted(noisy_dirs)}
        if _read_json(root / ".fold.json") == stamp:
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


# ----------------------------------------------------------------------------------------------------------
# One run


def execute_run(run: Run, data: Data, reporter: Reporter, train_reporter: Reporter) -> dict[str, Any]:
    """Train (or resume), predict the clean test cases with both checkpoints, score, write ``result.json``."""
    from svldrl.engine.predict import predict_folder
    from svldrl.engine.train import train
    from svldrl.eval.summary import evaluate_folders

    root = data.folds[run.fold]
    if not (run.dir / "checkpoint_final.pt").is_file():
        resume = (run.dir / "checkpoint_latest.pt").is_file()
        if resume:
            reporter.info(f"{run.label}: resuming the interrupted training")
        elif run.dir.exists():
            shutil.rmtree(run.dir)  # a run killed before its first checkpoint: nothing worth keeping
        train(root, run.labels, run.dir, copy.deepcopy(run.cfg), resume=resume, reporter=train_reporter)
    history = _read_history(run.dir / "metrics.csv")
    best_epoch = _best_epoch(history)
    foreground = run.cfg["data"]["foreground"]
    t0 = time.monotonic()
    scores: dict[str, dict[str, float]] = {}
    for tag, checkpoint in (("final", "final"), ("val", "best")):
        pred = run.dir / f"pred_{tag}"
        shutil.rmtree(pred, ignore_errors=True)  # left by a kill during prediction
        if tag == "val" and best_epoch is not None and best_epoch == len(history) - 1:
            # The best validation was the last epoch: the same weights as the final checkpoint.
            shutil.copytree(run.dir / "pred_final", pred)
            scores[tag] = scores["final"]
            continue
        predict_folder(run.dir, root / "imagesTs", pred, checkpoint=checkpoint)
        summary = evaluate_folders(pred, root / "labelsTs", out=pred / "summary.json", foreground=foreground)
        fg = summary["foreground_mean"]
        scores[tag] = {"dice": fg["Dice"], "iou": fg["IoU"], "hd95": fg["HD95"], "asd": fg["ASD"]}
        n_test = len(summary["metric_per_case"])
    predict_seconds = time.monotonic() - t0
    saved = C.load_config([run.dir / "config.yaml"])
    result = {
        "method": run.method.name,
        "noise": run.noise,
        "seed": run.seed,
        "fold": run.fold,
        "base_method": run.method.method,
        "labels": run.labels,
        **scores["final"],
        "label_dice": data.label_dice[run.noise],
        "n_test": n_test,
        **{f"{k}_val_selected": v for k, v in scores["val"].items()},
        "best_epoch": best_epoch,
        "epochs": len(history),
        "iterations": run.cfg["train"]["iterations"],
        "train_seconds": sum(_num(r.get("epoch_time")) for r in history),
        "predict_seconds": predict_seconds,
        "overrides": run.method.overrides,
        "finished": _now(),
        "svldrl_version": __version__,
        "config": saved,
    }
    # Written last and atomically: a run counts as done only once this file exists.
    write_text(run.dir / RESULT_NAME, json.dumps(result, indent=2, default=_json_default) + "\n")
    return result


def _read_history(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _best_epoch(history: list[dict[str, str]]) -> int | None:
    """Index of the epoch whose validation Dice the trainer kept as best (first strict maximum)."""
    best, idx = -1.0, None
    for i, row in enumerate(history):
        v = _num(row.get("val_dice"), math.nan)
        if not math.isnan(v) and v > best:
            best, idx = v, i
    return idx


def _num(value: Any, default: float = 0.0) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


# ----------------------------------------------------------------------------------------------------------
# The benchmark


def run_benchmark(
    config_path: str | Path,
    out_dir: str | Path,
    reporter: Reporter | None = None,
    only: list[str] | None = None,
    verbose: bool = False,
    command: str | None = None,
    reuse: str | Path | list[str | Path] | None = None,
) -> Path:
    """Run a benchmark file into ``out_dir`` and write its results; returns the path of ``results.md``.

    Every run's config is built and validated before anything is written, and run folders left by an
    earlier call are checked against it; then the dataset and noisy sets are prepared and the runs
    executed in seed-major order (completed runs are skipped, interrupted ones resumed).

    Args:
        config_path: the benchmark YAML file (format in the module docstring).
        out_dir: the benchmark folder (dataset if synthetic, runs, results).
        reporter: progress lines (``runs done/total`` with ETA); silent when None.
        only: method names (rows of the config) to run now; the results still list every completed run.
        verbose: pass the reporter to each training (one line per epoch).
        command: the command line to record in results.md (default: a Python call).
        reuse: other benchmark folders (one or a list) on the same dataset and noise seed; their completed
            runs with the same setting name, noisy masks, method name, seed and config are copied instead
            of trained (the first folder with a match wins).

    Raises:
        UserError: a bad config (missing key, unknown method, unknown noise protocol, unknown config key),
            a dataset without a clean test part, or run folders made with other settings.
    """
    from svldrl.noise.run import PROTOCOLS, resolve_params

    reporter = reporter or QUIET
    started = time.monotonic()
    bench = load_benchmark(config_path)
    out = Path(out_dir).absolute()
    # Everything that can be checked without data is checked before anything is written. A protocol
    # this check does not know goes to run_noise as it is (it may handle more than PROTOCOLS lists) and
    # run_noise names the problem, still before any training.
    for n in bench.noise:
        if n.protocol not in PROTOCOLS:
            continue
        try:
            resolve_params(n.protocol, n.params)
        except UserError as exc:
            raise UserError(f"noise setting '{n.name}': {exc}", bench.path) from None
    runs = plan_runs(bench, out)
    if only is not None:
        known = list(dict.fromkeys([*(m.name for m in bench.methods), *bench.methods_on_clean]))
        bad = [n for n in only if n not in known]
        if bad:
            raise UserError(
                f"--only names unknown method(s) {', '.join(bad)} (the config has: {', '.join(known)})"
            )
    todo = [r for r in runs if only is None or r.method.name in only]
    for run in runs:
        _check_existing(run)
    if "path" in bench.dataset:
        _check_dataset_path(_dataset_root(bench, out), bench.cv)
    spec = {"dataset": _resolved_dataset(bench, out), "noise_seed": bench.noise_seed}
    old = _read_json(out / SPEC_NAME)
    if old is not None and old != spec:
        raise UserError(
            f"this folder holds a benchmark on another dataset or noise seed ({old} there, {spec} asked); "
            "choose another --out",
            out,
        )
    others = [] if reuse is None else [reuse] if isinstance(reuse, str | Path) else list(reuse)
    for other in others:
        if not (Path(other) / SPEC_NAME).is_file():
            raise UserError(f"--reuse: not a benchmark folder (no {SPEC_NAME})", other)
    claim_benchmark_dir(out)
    write_text(out / SPEC_NAME, json.dumps(spec, indent=2) + "\n")

    with _exclusive(out / LOCK_NAME):
        # processes sharing an out folder (disjoint --only lists) would otherwise race writing the same
        # phantoms and noisy masks; the second one waits and then finds them complete
        data = prepare_data(bench, out, reporter)
    # after prepare_data: whether the other folder's noisy masks are these is read from both noise reports
    reusers = [run_reuser(Path(o).absolute(), out, spec, bench) for o in others]
    train_reporter = reporter if verbose else QUIET
    total = len(todo)
    reporter.info(f"benchmark {bench.name}: {total} runs ({len(runs)} in the matrix) -> {out}")
    done, trained, durations = 0, 0, defaultdict(list)
    recorded: dict[str, list[float]] = defaultdict(list)  # seconds of runs complete before this call
    failed: list[tuple[Run, str]] = []
    t_runs = time.monotonic()
    for run in todo:
        source = next((s for s in (r(run) for r in reusers) if s is not None), None)
        if source is not None:
            reporter.info(f"run {done + 1}/{total}: {run.label} reused from {source}")
        if (result := _read_json(run.dir / RESULT_NAME)) is not None:
            seconds = [result.get(k) for k in ("train_seconds", "predict_seconds")]
            if all(isinstance(v, int | float) and math.isfinite(v) for v in seconds):
                recorded[run.method.name].append(float(sum(seconds)))
        else:
            reporter.info(f"run {done + 1}/{total}: {run.label} ({run.method.method} on {run.labels} masks)")
            t0 = time.monotonic()
            try:
                execute_run(run, data, reporter, train_reporter)
            except UserError:
                raise  # a problem with the data or settings: every other run would hit it too
            except Exception as exc:
                # A crash of one method (a bug, NaN, out of memory) should not cost the other runs of
                # a long benchmark: record it, go on, and fail at the end. A rerun retries it.
                failed.append((run, f"{type(exc).__name__}: {exc}"))
                write_text(run.dir / ERROR_NAME, traceback.format_exc())
                reporter.info(f"{run.label} FAILED ({type(exc).__name__}: {exc}); see {run.dir / ERROR_NAME}")
            else:
                durations[run.method.name].append(time.monotonic() - t0)
                trained += 1
                (run.dir / ERROR_NAME).unlink(missing_ok=True)
        done += 1
        eta = _eta(todo[done:], durations, recorded)
        # Reporter.progress extrapolates from (elapsed / done); give it the start time that makes its
        # estimate equal ours, which counts only runs executed now and weighs methods by their cost.
        now = time.monotonic()
        fake_start = now - (eta * done / max(total - done, 1) if total > done else now - t_runs)
        reporter.progress("benchmark runs", done, total, fake_start, extra=run.label)

    results = collect_results(runs)
    md = write_report(bench, out, data, runs, results, started, trained, command, failed)
    reporter.info(f"results: {md} ({len(results)}/{len(runs)} runs complete)")
    if failed:
        raise RuntimeError(
            f"{len(failed)} run(s) failed: {', '.join(r.label for r, _ in failed[:5])}"
            f"{' ...' if len(failed) > 5 else ''} (tracebacks in each run's {ERROR_NAME}; results.md "
            "lists the completed runs; rerunning the benchmark retries the failed ones)"
        )
    return md


def claim_benchmark_dir(out: Path) -> None:
    """Refuse an ``--out`` that is a dataset's folder, or holds files a benchmark would replace that no
    benchmark wrote; then mark it as a benchmark folder (:mod:`svldrl.data.outputs`)."""
    from svldrl.data.outputs import claim_output_dir, mark_output_dir

    md = out / "results.md"
    ours = (out / SPEC_NAME).is_file() or (md.is_file() and md.read_text()[:200].startswith("# Benchmark: "))
    if ours:  # made before output folders carried a marker (the committed results folders)
        mark_output_dir(out, "benchmark", "--out")
    will_write = [SPEC_NAME, "results.csv", "results.md", "plots", "runs", "dataset", "cv"]
    claim_output_dir(out, "benchmark", will_write, overwrite=None, flag="--out")


def run_reuser(other: Path, out: Path, spec: dict, bench: Benchmark) -> Callable[[Run], Path | None]:
    """A function that copies the completed run of benchmark folder ``other`` matching a run here.

    A run is taken only when both folders hold the same dataset and noise seed, the other run has the
    same setting / method / seed path, its noisy masks have the same noise report (protocol, parameters
    and per-case corruption) and its saved config has no difference that matters. The copy's
    ``result.json`` names where it came from. The function returns the source folder, or None (nothing
    to take, yet: it is asked again right before each run, so a benchmark still running in ``other``
    can be reused as it finishes runs).

    Raises:
        UserError: ``other`` is this folder, not a benchmark folder, or one on another dataset or noise seed.
    """
    if other == out:
        raise UserError("--reuse names the benchmark folder itself", other)
    theirs = _read_json(other / SPEC_NAME)
    if theirs is None:
        raise UserError(f"--reuse: not a benchmark folder (no {SPEC_NAME})", other)
    if theirs != spec:
        raise UserError("--reuse: that benchmark was made on another dataset or noise seed", other)
    same_noise = {CLEAN}
    for n in bench.noise:
        mine = _read_json(_dataset_root(bench, out) / "labelsTr_noisy" / n.name / "noise_report.json")
        other_root = other / "dataset" if "synth" in bench.dataset else _dataset_root(bench, out)
        if mine is not None and mine == _read_json(
            other_root / "labelsTr_noisy" / n.name / "noise_report.json"
        ):
            same_noise.add(n.name)

    def reuse(run: Run) -> Path | None:
        source = other / run.dir.relative_to(out)
        result = _read_json(source / RESULT_NAME)
        if _read_json(run.dir / RESULT_NAME) is not None or not isinstance(result, dict):
            return None
        if run.noise not in same_noise or _config_differences(run.cfg, result.get("config") or {}):
            return None
        if result.get("method") != run.method.name or result.get("overrides") != run.method.overrides:
            return None
        shutil.rmtree(run.dir, ignore_errors=True)  # no result.json: an interrupted run, worth nothing now
        tmp = run.dir.with_name(run.dir.name + ".reuse-partial")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp)
        result["reused_from"] = str(source)
        write_text(tmp / RESULT_NAME, json.dumps(result, indent=2, default=_json_default) + "\n")
        tmp.rename(run.dir)  # atomic: the run appears complete or not at all
        return source

    return reuse


def _eta(remaining: list[Run], durations: dict[str, list[float]], recorded: dict[str, list[float]]) -> float:
    """Seconds left: each remaining run at its method's mean duration in this call, else the mean of
    the method's runs recorded before it (resumed or reused: their result.json seconds), else the
    overall mean. Without the recorded runs a resumed benchmark would show ETA 0:00 until it trained one.
    """

    def mean_of(source: dict[str, list[float]]) -> float | None:
        values = [d for ds in source.values() for d in ds]
        return float(np.mean(values)) if values else None

    overall = mean_of(durations) or mean_of(recorded) or 0.0

    def estimate(name: str) -> float:
        for source in (durations, recorded):
            if source.get(name):
                return float(np.mean(source[name]))
        return overall

    return sum(estimate(r.method.name) for r in remaining if _read_json(r.dir / RESULT_NAME) is None)


def _resolved_dataset(bench: Benchmark, out: Path) -> dict[str, Any]:
    if "synth" in bench.dataset:
        return bench.dataset
    return {**bench.dataset, "path": str(_dataset_root(bench, out))}


def collect_results(runs: list[Run]) -> list[dict[str, Any]]:
    """The ``result.json`` of every completed run, in matrix order."""
    results = []
    for run in runs:
        r = _read_json(run.dir / RESULT_NAME)
        if isinstance(r, dict):
            results.append(r)
    return results


# ----------------------------------------------------------------------------------------------------------
# Results


def aggregate(results: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(setting, method) -> ``n`` and per metric ``(mean, std)`` over seeds; folds averaged within a seed."""
    per_seed: dict[tuple[str, str, int], list[dict]] = defaultdict(list)
    for r in results:
        per_seed[(r["noise"], r["method"], r["seed"])].append(r)
    grouped: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)
    for (noise, method, _seed), rows in per_seed.items():
        grouped[(noise, method)].append(
            {m: _nanmean([_num(r.get(m), math.nan) for r in rows]) for m in METRICS}
        )
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for key, seeds in grouped.items():
        stats: dict[str, Any] = {"n": len(seeds)}
        for m in METRICS:
            vals = [s[m] for s in seeds if not math.isnan(s[m])]
            mean = float(np.mean(vals)) if vals else math.nan
            std = float(np.std(vals, ddof=1)) if len(vals) > 1 else (0.0 if vals else math.nan)
            stats[m] = (mean, std)
        out[key] = stats
    return out


def _nanmean(values: list[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def write_csv(path: Path, results: list[dict[str, Any]]) -> Path:
    """``results.csv``: one row per completed run."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in results:
        writer.writerow(["" if r.get(c) is None else _csv_value(r.get(c)) for c in CSV_COLUMNS])
    return write_text(path, buf.getvalue())


def _csv_value(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    return str(v)


def _pct(stat: tuple[float, float] | None, n: int = 1) -> str:
    return _pm(stat, 100.0, 2, n)


def _mm(stat: tuple[float, float] | None, n: int = 1) -> str:
    return _pm(stat, 1.0, 2, n)


def _pm(stat: tuple[float, float] | None, scale: float, digits: int, n: int) -> str:
    if stat is None or math.isnan(stat[0]):
        return "n/a"
    mean = f"{stat[0] * scale:.{digits}f}"
    return mean if n < 2 else f"{mean} ± {stat[1] * scale:.{digits}f}"


def machine_description() -> str:
    """One line naming the platform, CPUs, torch threads, versions and device (for reports)."""
    import torch

    device = "CPU"
    if torch.cuda.is_available():
        device = f"GPU {torch.cuda.get_device_name(0)}"
    return (
        f"{platform.platform()}, {os.cpu_count()} CPUs ({torch.get_num_threads()} torch threads), "
        f"Python {platform.python_version()}, torch {torch.__version__}, svldrl {__version__}, {device}"
    )


def write_report(
    bench: Benchmark,
    out: Path,
    data: Data,
    runs: list[Run],
    results: list[dict[str, Any]],
    started: float,
    trained: int,
    command: str | None,
    failed: list[tuple[Run, str]] | None = None,
) -> Path:
    """Write ``results.csv``, ``results.md`` and ``plots/``; returns the path of ``results.md``."""
    from svldrl.bench import plots
    from svldrl.eval.summary import markdown_table

    write_csv(out / "results.csv", results)
    agg = aggregate(results)
    settings = [CLEAN, *(n.name for n in bench.noise)]
    methods = list(dict.fromkeys([*(m.name for m in bench.methods), *bench.methods_on_clean]))

    def stat(setting: str, method: str, metric: str) -> tuple[float, float] | None:
        s = agg.get((setting, method))
        return None if s is None else s[metric]

    def n_of(setting: str, method: str) -> int:
        s = agg.get((setting, method))
        return 0 if s is None else s["n"]

    sup = "supervised"
    gap_rows, gaps = [], {}
    for s in bench.noise:
        clean, noisy = stat(CLEAN, sup, "dice"), stat(s.name, sup, "dice")
        gap = None if clean is None or noisy is None else clean[0] - noisy[0]
        gaps[s.name] = gap
        best = max(
            (
                (m, stat(s.name, m, "dice"))
                for m in methods
                if m != sup and stat(s.name, m, "dice") is not None
            ),
            key=lambda t: t[1][0] if not math.isnan(t[1][0]) else -1.0,
            default=(None, None),
        )
        gap_rows.append(
            {
                "setting": s.name,
                "label Dice": f"{100 * data.label_dice[s.name]:.2f}",
                "supervised on clean": _pct(clean, n_of(CLEAN, sup)),
                "supervised on noisy": _pct(noisy, n_of(s.name, sup)),
                "gap (clean − noisy)": "n/a" if gap is None else f"{100 * gap:+.2f}",
                "best other method": best[0] or "n/a",
                "its Dice": _pct(best[1], n_of(s.name, best[0]) if best[0] else 0),
                "gain over supervised": "n/a"
                if best[1] is None or noisy is None
                else f"{100 * (best[1][0] - noisy[0]):+.2f}",
            }
        )

    noise_rows = [
        {
            "setting": f"{CLEAN} (oracle)",
            "protocol": "-",
            "ratio": "0",
            "params": "-",
            "label Dice": "100.00",
            "voxel error rate": "0",
        }
    ] + [
        {
            "setting": s.name,
            "protocol": s.protocol,
            "ratio": f"{s.ratio:g}",
            "params": ", ".join(f"{k}={v}" for k, v in s.params.items()) or "-",
            "label Dice": f"{100 * data.label_dice[s.name]:.2f}",
            "voxel error rate": f"{data.voxel_error[s.name]:.4f}",
        }
        for s in bench.noise
    ]

    wide_rows = []
    for m in methods:
        row = {"method": m}
        for s in settings:
            row[s] = _pct(stat(s, m, "dice"), n_of(s, m)) if (s, m) in agg else ""
        wide_rows.append(row)
    label_row = {"method": "*label Dice of the training masks*"}
    label_row.update({s: f"{100 * data.label_dice[s]:.2f}" for s in settings})
    wide_rows.append(label_row)

    long_rows = []
    for s in settings:
        for m in methods:
            if (s, m) not in agg:
                continue
            n = n_of(s, m)
            long_rows.append(
                {
                    "setting": f"{s} (oracle)" if s == CLEAN else s,
                    "method": m,
                    "Dice": _pct(stat(s, m, "dice"), n),
                    "IoU": _pct(stat(s, m, "iou"), n),
                    "HD95 (mm)": _mm(stat(s, m, "hd95"), n),
                    "ASD (mm)": _mm(stat(s, m, "asd"), n),
                    "Dice, val-selected": _pct(stat(s, m, "dice_val_selected"), n),
                    "IoU, val-selected": _pct(stat(s, m, "iou_val_selected"), n),
                    "seeds": str(n),
                    "train s/run": f"{stat(s, m, 'train_seconds')[0]:.0f}",
                }
            )

    plot_files = plots.write_plots(out / "plots", bench, agg, settings, methods, data.label_dice)

    cfg0 = runs[0].cfg if runs else C.load_config()
    tc, nc = cfg0["train"], cfg0["nets"]
    budget = (
        f"{tc['iterations']} iterations per run for every method "
        f"(batch {tc['batch']}, patch {tc['patch']}^3, "
        f"{tc['steps_per_epoch']} steps per epoch, validation every {tc['val_every']} epoch(s)); "
        f"backbone {nc['backbone']}"
        + (
            f" features {nc['features']}"
            if nc["backbone"] == "unet"
            else f" feature_size {nc['feature_size']}"
        )
    )
    missing = [r for r in runs if _read_json(r.dir / RESULT_NAME) is None]
    run_time = sum(_num(r.get("train_seconds")) + _num(r.get("predict_seconds")) for r in results)
    wall = time.monotonic() - started
    cmd = command or f"svldrl.bench.run_benchmark({str(bench.path)!r}, {str(out)!r})"

    lines = [f"# Benchmark: {bench.name}", ""]
    if bench.description:
        lines += [bench.description, ""]
    lines += [
        f"- Command: `{cmd}`",
        f"- Config: `{bench.path}`",
        f"- Date: {_now()}; wall time of this call {fmt_seconds(wall)} ({trained} run(s) trained now, "
        f"{len(results)}/{len(runs)} complete); summed training + prediction time of all runs "
        f"{fmt_seconds(run_time)}",
        f"- Machine: {machine_description()}",
        f"- Dataset: {data.description}",
        f"- Budget: {budget}",
        f"- Seeds: {', '.join(map(str, bench.seeds))} (training); noise seed {bench.noise_seed} "
        "(every method sees the same noisy masks)",
        "",
        "Scores are on the clean test masks: Dice and IoU in %, HD95 and ASD in mm, mean ± sample std over "
        "seeds of each seed's mean over test cases"
        + (" (folds averaged within a seed)" if bench.cv else "")
        + ". The primary columns use the final checkpoint, as nnU-Net reports; *val-selected* uses the "
        "checkpoint with the best Dice on the validation split carved from the training cases, scored "
        "against their noisy masks as a user would have them (never the test set).",
        "",
        "## Where noise hurts",
        "",
        "The gap is supervised training on clean masks minus supervised training on the noisy masks "
        "(Dice points): a method can only recover what this gap leaves.",
        "",
        markdown_table(gap_rows, list(gap_rows[0]) if gap_rows else ["setting"]),
        "",
        "## Dice by method and setting (final checkpoint)",
        "",
        "The `clean` column is the oracle (trained on the clean masks).",
        "",
        markdown_table(wide_rows, ["method", *settings]),
        "",
        "## All metrics",
        "",
        markdown_table(long_rows, list(long_rows[0]) if long_rows else ["setting", "method"]),
        "",
        "## Noise settings",
        "",
        "Label Dice: mean Dice (%) of the noisy training masks against the clean ones, from each set's "
        "noise report; a noise level is only comparable between papers through this number.",
        "",
        markdown_table(noise_rows, list(noise_rows[0])),
        "",
    ]
    overrides = [
        {"method": m.name, "registered method": m.method, "overrides": " ".join(m.overrides) or "-"}
        for m in bench.methods
    ]
    lines += [
        "## Methods",
        "",
        markdown_table(overrides, ["method", "registered method", "overrides"]),
        "",
        f"Shared overrides (`base`): `{' '.join(bench.base) or '-'}`",
        "",
    ]
    lines += _peer_section(out, agg)
    if failed:
        lines += ["## Failed runs", ""] + [
            f"- {r.label}: {msg} (`{r.dir / ERROR_NAME}`)" for r, msg in failed
        ]
        lines += [""]
    if missing:
        shown = ", ".join(r.label for r in missing[:10])
        lines += [
            "## Missing runs",
            "",
            f"{len(missing)} run(s) have no result yet: {shown}" + (" ..." if len(missing) > 10 else ""),
            "",
        ]
    if plot_files:
        lines += ["## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in plot_files] + [""]
    lines += [
        "Per-run numbers: `results.csv`; each run's folder holds its training logs, predictions and "
        "`summary.json` files.",
        "",
    ]
    return write_text(out / "results.md", "\n".join(lines))


def _peer_section(out: Path, agg: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """External reference rows: ``OUT/peers/<peer>/<setting>/seed<k>/*_row.json`` (e.g. written by
    ``scripts/pymic_peer.py``), mean ± std over seeds beside our method of the same name's suffix."""
    from svldrl.eval.summary import markdown_table

    rows: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    commands = []
    for path in sorted((out / "peers").glob("*/*/seed*/*_row.json")):
        row = _read_json(path)
        if isinstance(row, dict) and {"method", "noise", "dice"} <= set(row):
            rows[(row["noise"], row["method"])].append(row)
            commands.append(row.get("command"))
    if not rows:
        return []
    table = []
    for (noise, method), rs in sorted(rows.items()):
        n = len(rs)

        def ms(key: str, rs: list[dict[str, Any]] = rs) -> tuple[float, float]:
            v = [_num(r.get(key), math.nan) for r in rs]
            return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0

        ours = method.split("_", 1)[-1]  # pymic_coteaching -> coteaching
        table.append(
            {
                "setting": noise,
                "peer": method,
                "Dice": _pct(ms("dice"), n),
                "IoU": _pct(ms("iou"), n),
                "HD95 (mm)": _mm(ms("hd95"), n),
                "Dice, val-selected": _pct(ms("dice_val_selected"), n),
                "seeds": str(n),
                f"ours ({ours})": _pct(agg[(noise, ours)]["dice"], agg[(noise, ours)]["n"])
                if (noise, ours) in agg
                else "n/a",
                "details": rs[0].get("peer", ""),
            }
        )
    example = next((c for c in commands if c), None)
    return [
        "## External reference (peer implementations)",
        "",
        "Not part of the matrix: another library's implementation run on the same split (fold 0 of the "
        "dataset's splits), the same noisy masks and the same clean test cases, scored by the same evaluator"
        + (f"; e.g. `{example}`" if example else "")
        + ".",
        "",
        markdown_table(table, list(table[0])),
        "",
    ]


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
