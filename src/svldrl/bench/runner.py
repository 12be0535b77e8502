"""``svldrl benchmark``: every method on every noise setting with every seed, resumable, with reuse of
identical runs from other benchmark folders and an ETA that weighs methods by their cost.

The folder's ``results.csv`` is the record that travels (run folders are working state, too large to
commit): a run whose folder is gone but whose row is there, made with the same method, masks, iterations
and number of test cases, is kept as recorded and not trained again. So a committed benchmark resumed on a
fresh clone (``--only`` the methods still missing) adds its rows to the table instead of replacing it.

The file format is :mod:`svldrl.bench.spec`; the matrix :mod:`svldrl.bench.plan`; the data
:mod:`svldrl.bench.data`; one run :mod:`svldrl.bench.run`; the report :mod:`svldrl.bench.report`.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import time
import traceback
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from svldrl.bench.data import LOCK_NAME, Data, check_dataset_path, dataset_root, exclusive, prepare_data
from svldrl.bench.plan import RESULT_NAME, Run, check_existing, config_differences, plan_runs
from svldrl.bench.report import CSV_COLUMNS, ERROR_NAME, SETTINGS_NAME, write_report
from svldrl.bench.run import execute_run
from svldrl.bench.spec import CLEAN, Benchmark, load_benchmark
from svldrl.data.io import json_default, read_json, write_text
from svldrl.errors import UserError
from svldrl.reporter import QUIET, Reporter

SPEC_NAME = "benchmark_spec.json"


def run_benchmark(
    config_path: str | Path,
    out_dir: str | Path,
    reporter: Reporter | None = None,
    only: list[str] | None = None,
    settings: list[str] | None = None,
    seeds: list[int] | None = None,
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
        settings: noise setting names (``clean``: the oracle's) to run now, as ``only``.
        seeds: seeds of the config to run now, as ``only``.
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
    _check_subset("--settings", settings, [CLEAN, *(n.name for n in bench.noise)])
    _check_subset("--seeds", seeds, list(bench.seeds))
    todo = [
        r
        for r in runs
        if (only is None or r.method.name in only)
        and (settings is None or r.noise in settings)
        and (seeds is None or r.seed in seeds)
    ]
    for run in runs:
        check_existing(run)
    if "path" in bench.dataset:
        check_dataset_path(dataset_root(bench, out), bench.cv)
    check_trusted_rows(bench, runs, dataset_root(bench, out))
    spec = {"dataset": _resolved_dataset(bench, out), "noise_seed": bench.noise_seed}
    old = read_json(out / SPEC_NAME, None)
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

    with exclusive(out / LOCK_NAME):
        # processes sharing an out folder (disjoint --only lists) would otherwise race writing the same
        # phantoms and noisy masks; the second one waits and then finds them complete
        data = prepare_data(bench, out, reporter)
    # after prepare_data: whether the other folder's noisy masks are these is read from both noise reports
    reusers = [run_reuser(Path(o).absolute(), out, spec, bench) for o in others]
    carried = carried_rows(out / "results.csv", runs, data)
    todo = [r for r in todo if r.label not in carried]
    if carried:
        reporter.info(
            f"{len(carried)} run(s) kept from {out / 'results.csv'} (their run folders are not here)"
        )
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
        if (result := read_json(run.dir / RESULT_NAME, None)) is not None:
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
                reporter.warn(f"{run.label} FAILED ({type(exc).__name__}: {exc}); see {run.dir / ERROR_NAME}")
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

    results = collect_results(runs, carried)
    md = write_report(bench, out, data, runs, results, started, trained, command, failed, len(carried))
    reporter.info(f"results: {md} ({len(results)}/{len(runs)} runs complete)")
    if failed:
        raise RuntimeError(
            f"{len(failed)} run(s) failed: {', '.join(r.label for r, _ in failed[:5])}"
            f"{' ...' if len(failed) > 5 else ''} (tracebacks in each run's {ERROR_NAME}; results.md "
            "lists the completed runs; rerunning the benchmark retries the failed ones)"
        )
    return md


def _check_subset(flag: str, asked: list | None, known: list) -> None:
    """Refuse a ``--settings`` / ``--seeds`` value the config does not have."""
    bad = [str(v) for v in asked or [] if v not in known]
    if bad:
        raise UserError(
            f"{flag} names {', '.join(bad)}, which the config does not have ({', '.join(map(str, known))})"
        )


def check_trusted_rows(bench: Benchmark, runs: list[Run], root: Path) -> None:
    """Refuse, before anything is written, a setting with more trusted cases than the phantoms leave noisy, and a
    row that trains on the trusted cases alone (``data.train_on=trusted``) on a setting without any: one without
    ``trusted: N`` (the clean oracle too), unless the dataset has expert masks of its own (``labelsTr_trusted/``).
    """
    from svldrl.data.dataset import TRUSTED_DIR

    trusted = {n.name: n.trusted for n in bench.noise}
    cases = bench.dataset.get("synth", {}).get("cases")
    for name, k in trusted.items():
        if cases is not None and k >= cases:
            raise UserError(
                f"noise setting '{name}': trusted: {k}, but the phantoms have {cases} training cases; at least "
                "one must stay noisy",
                bench.path,
            )
    if "path" in bench.dataset and (root / TRUSTED_DIR).is_dir():
        return
    for run in runs:
        if run.cfg.data.train_on == "trusted" and not trusted.get(run.noise):
            raise UserError(
                f"method '{run.method.name}' on '{run.noise}': data.train_on=trusted, but that setting has no "
                "trusted cases (give its noise entry trusted: N)",
                bench.path,
            )


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
    same setting / method / seed path (or, failing that, the same setting and seed under another row name,
    with the same method), its noisy masks have the same noise report (protocol, parameters and per-case
    corruption) and its saved config has no difference that matters. The copy's
    ``result.json`` names where it came from. The function returns the source folder, or None (nothing
    to take, yet: it is asked again right before each run, so a benchmark still running in ``other``
    can be reused as it finishes runs).

    Raises:
        UserError: ``other`` is this folder, not a benchmark folder, or one on another dataset or noise seed.
    """
    if other == out:
        raise UserError("--reuse names the benchmark folder itself", other)
    theirs = read_json(other / SPEC_NAME, None)
    if theirs is None:
        raise UserError(f"--reuse: not a benchmark folder (no {SPEC_NAME})", other)
    if theirs != spec:
        raise UserError("--reuse: that benchmark was made on another dataset or noise seed", other)
    same_noise = {CLEAN}
    for n in bench.noise:
        mine = read_json(dataset_root(bench, out) / "labelsTr_noisy" / n.name / "noise_report.json", None)
        other_root = other / "dataset" if "synth" in bench.dataset else dataset_root(bench, out)
        if mine is not None and mine == read_json(
            other_root / "labelsTr_noisy" / n.name / "noise_report.json", None
        ):
            same_noise.add(n.name)

    def same(run: Run, result: Any, by_name: bool) -> bool:
        if not isinstance(result, dict) or config_differences(
            run.cfg, result.get("config") or {}, run.trusted
        ):
            return False
        if by_name:
            return result.get("method") == run.method.name and result.get("overrides") == run.method.overrides
        return result.get("base_method") == run.method.method

    def find(run: Run) -> tuple[Path, dict] | None:
        """The run at the same path, else (a curve's ``supervised_2000`` for a row ``supervised`` run at 2000
        iterations) any row's run of the same setting and seed whose settings are the same."""
        rel = run.dir.relative_to(out)
        source = other / rel
        result = read_json(source / RESULT_NAME, None)
        if same(run, result, by_name=True):
            return source, result
        row = out / "runs" / run.noise / run.method.name  # runs/<setting>/<row>/seed<k>[/fold<f>]
        for source in sorted((other / "runs" / run.noise).glob(str(Path("*", run.dir.relative_to(row))))):
            result = read_json(source / RESULT_NAME, None)
            if source.parent.name != run.method.name and same(run, result, by_name=False):
                return source, result
        return None

    def reuse(run: Run) -> Path | None:
        if read_json(run.dir / RESULT_NAME, None) is not None or run.noise not in same_noise:
            return None
        found = find(run)
        if found is None:
            return None
        source, result = found
        shutil.rmtree(run.dir, ignore_errors=True)  # no result.json: an interrupted run, worth nothing now
        tmp = run.dir.with_name(run.dir.name + ".reuse-partial")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp)
        result.update(method=run.method.name, overrides=run.method.overrides, reused_from=str(source))
        write_text(tmp / RESULT_NAME, json.dumps(result, indent=2, default=json_default) + "\n")
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

    return sum(estimate(r.method.name) for r in remaining if read_json(r.dir / RESULT_NAME, None) is None)


def _resolved_dataset(bench: Benchmark, out: Path) -> dict[str, Any]:
    if "synth" in bench.dataset:
        return bench.dataset
    return {**bench.dataset, "path": str(dataset_root(bench, out))}


def collect_results(
    runs: list[Run], carried: dict[str, dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """The ``result.json`` of every completed run, else its row kept from ``results.csv``, in matrix order."""
    results = []
    for run in runs:
        r = read_json(run.dir / RESULT_NAME, None)
        if not isinstance(r, dict):
            r = (carried or {}).get(run.label)
        if r is not None:
            results.append(r)
    return results


def carried_rows(path: Path, runs: list[Run], data: Data) -> dict[str, dict[str, Any]]:
    """Run label -> its row of an earlier ``results.csv``, for runs whose folder is not here.

    A row counts only if it was made with the run's registered method, training masks, iterations and
    number of clean test cases (a table from before ``n_test`` was recorded counts for nothing), and, where
    :data:`~svldrl.bench.report.SETTINGS_NAME` beside it records the row's settings, with the run's settings
    (:func:`~svldrl.bench.plan.config_differences`: a method's ``set`` or ``config`` changed in the YAML file
    retrains it); anything else is trained again and its row replaced. Rows of tables from before the settings
    were recorded are checked on the columns alone.
    """
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    recorded = read_json(path.with_name(SETTINGS_NAME), {})
    if not isinstance(recorded, dict):  # a hand-edited file: check the rows on their columns alone
        recorded = {}
    by_key = {(r.get("method"), r.get("noise"), r.get("seed"), r.get("fold") or ""): r for r in rows}
    n_test = {fold: len(list((root / "labelsTs").glob("*.nii*"))) for fold, root in data.folds.items()}
    kept = {}
    for run in runs:
        row = by_key.get(
            (run.method.name, run.noise, str(run.seed), "" if run.fold is None else str(run.fold))
        )
        if row is None or run.dir.exists():  # a folder here is the run's record: resume or skip it as ever
            continue
        if (
            row.get("base_method") != run.method.method
            or row.get("labels") != run.labels
            or row.get("iterations") != str(run.cfg.train.iterations)
            or row.get("n_test") != str(n_test[run.fold])
        ):
            continue
        settings = recorded.get(run.label)
        if isinstance(settings, dict) and config_differences(run.cfg, settings, run.trusted):
            continue
        kept[run.label] = {c: _cell(c, row.get(c, "")) for c in CSV_COLUMNS}
        if isinstance(settings, dict):
            kept[run.label]["settings"] = settings  # written again with the table
    return kept


def _cell(column: str, text: str) -> Any:
    """A ``results.csv`` cell as ``result.json`` holds it."""
    if column in ("method", "noise", "base_method", "labels"):
        return text
    if text == "":
        return None
    if column in ("seed", "fold", "n_test", "best_epoch", "epochs", "iterations"):
        return int(float(text))
    return float(text)
