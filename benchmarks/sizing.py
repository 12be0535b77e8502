"""How long a benchmark config takes on this machine, measured on a one-seed sample of it.

Runs every method of CONFIG once (its first noise setting, its first seed, plus the clean oracle) as
``--processes`` parallel 1-thread ``svldrl benchmark`` processes with disjoint ``--only`` lists, then
scales each method's measured seconds to the full matrix (every setting, seed and fold), packs the
methods into ``--processes`` ``--only`` lists by those totals and predicts the wall time as the
heaviest list's. Each sample process's wall time beyond its runs' own seconds (data preparation,
start-up, evaluation, report) is added per run as measured overhead; a process's idle wait for the
other is not. Writes ``OUT/sizing.json`` and ``OUT/results.md``, with the ``--only`` lists to use.
``--keep-sample`` keeps the runs of an earlier sample in OUT and trains only the missing ones (a method
added to CONFIG since); without it a finished sample there is refused rather than silently reused.

    python benchmarks/sizing.py benchmarks/phantom_cpu.yaml --out benchmarks/results/sizing

Why a sample and not the full run: the full benchmark is what the estimate is for; a sample of one
run per method measures each method's cost on the same idle machine in ~10 minutes. Other settings
cost the same per run (same phantoms, patch and iterations); seeds do not change the cost.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import itertools
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import yaml

from svldrl.bench.plan import plan_runs
from svldrl.bench.report import machine_description
from svldrl.bench.spec import CLEAN, load_benchmark
from svldrl.data.io import read_json, write_text

#: Above this many assignments of methods to processes, :func:`_split` keeps the greedy packing.
EXACT_LIMIT = 200_000


def _split(methods: list[str], weights: dict[str, float], processes: int) -> list[list[str]]:
    """Methods packed into ``processes`` --only lists with the lightest heaviest list.

    Greedy longest-first packing, replaced by the best of all assignments where there are few enough
    (a benchmark has a handful of methods; greedy can miss the best split by minutes, e.g. 5, 4, 3, 3, 3
    on two processes: greedy 10, best 9). Each list is ordered heaviest first.
    """
    w = {m: weights.get(m, 1.0) for m in methods}
    order = sorted(methods, key=lambda m: -w[m])
    bins: list[list[str]] = [[] for _ in range(processes)]
    load = [0.0] * processes
    for name in order:
        i = load.index(min(load))
        bins[i].append(name)
        load[i] += w[name]
    best = max(load)
    if processes > 1 and processes ** (len(order) - 1) <= EXACT_LIMIT:
        # the heaviest method's process is fixed (the lists' order does not matter)
        for rest in itertools.product(range(processes), repeat=len(order) - 1):
            loads = [0.0] * processes
            for name, i in zip(order, (0, *rest), strict=True):
                loads[i] += w[name]
            if max(loads) < best - 1e-9:
                best, assignment = max(loads), (0, *rest)
                bins = [
                    [n for n, j in zip(order, assignment, strict=True) if j == i] for i in range(processes)
                ]
    return [b for b in bins if b]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="benchmark YAML (e.g. benchmarks/phantom_cpu.yaml)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the sample and the report")
    parser.add_argument("--processes", type=int, default=2, help="parallel 1-thread processes (default 2)")
    parser.add_argument("--target-min", type=float, default=90.0, help="the config's wall-time target")
    parser.add_argument(
        "--keep-sample",
        action="store_true",
        help="OUT holds the sample of an earlier call (same code and machine): keep its runs and train only the "
        "missing ones, e.g. of a method added to CONFIG since",
    )
    parser.add_argument(
        "--reference",
        type=Path,
        help="a finished benchmark folder of CONFIG: its Dice for the sample's runs are shown beside the sample's "
        "(does this code and machine reproduce it?)",
    )
    return parser.parse_args(argv)


def _refusal(args: argparse.Namespace, sample_dir: Path) -> str | None:
    """Why the call cannot go ahead, checked before anything trains (``None``: it can)."""
    # (the sample itself may serve as the reference: it is finished by the time the reference is read)
    if (
        args.reference is not None
        and args.reference.resolve() != sample_dir.resolve()
        and not (args.reference / "results.csv").is_file()
    ):
        return f"--reference {args.reference}: not a finished benchmark folder (no results.csv)"
    if any(sample_dir.glob("runs/*/*/*/result.json")) and not args.keep_sample:
        return (
            f"{sample_dir} holds the runs of an earlier sample: pass --keep-sample to keep them and train only the "
            "missing ones, or remove it to measure every method again"
        )
    return None


def _sample_config(config: Path, name: str, out: Path) -> dict:
    """CONFIG cut to its first noise setting and seed, its rows' config files resolved from OUT."""
    raw = yaml.safe_load(config.read_text())
    raw["name"] = f"{name}_sample"
    raw["noise"] = raw["noise"][:1]
    raw["seeds"] = raw["seeds"][:1]
    for row in raw["methods"]:  # a row's config file, relative to CONFIG's folder, from the sample's folder
        if isinstance(row, dict) and isinstance(row.get("config"), str):
            found = next(
                (c for c in (Path(row["config"]), config.parent / row["config"]) if c.is_file()), None
            )
            if found is not None:
                row["config"] = os.path.relpath(found.resolve(), out.resolve())
    return raw


def _benchmark_call(sample_cfg: Path, sample_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "svldrl.cli",
        "benchmark",
        str(sample_cfg),
        "--out",
        str(sample_dir),
        *extra,
    ]


def _run_sample(
    sample_cfg: Path, sample_dir: Path, groups: list[list[str]]
) -> tuple[dict[int, float], str | None]:
    """The sample as one process per ``--only`` list, then its report; each process's own wall time."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            _benchmark_call(sample_cfg, sample_dir, "--only", ",".join(group), "--quiet"), env=env
        )
        for group in groups
    ]
    ends: dict[int, float] = {}
    while len(ends) < len(procs):  # each process's own wall time, not the slowest one's
        for i, proc in enumerate(procs):
            if i not in ends and proc.poll() is not None:
                ends[i] = time.perf_counter() - start
        time.sleep(0.2)
    codes = [p.returncode for p in procs]
    if any(codes):
        return ends, f"a sample process failed (exit codes {codes})"
    # one more call writes the report over every run (the processes each saw only their own)
    report = subprocess.run(_benchmark_call(sample_cfg, sample_dir, "--quiet"), env=env)
    if report.returncode:
        return ends, f"writing the sample's report failed (exit code {report.returncode})"
    return ends, None


def _overhead(
    rows: list[dict[str, str]],
    seconds: dict[tuple[str, bool], float],
    sample_dir: Path,
    started_at: float,
    groups: list[list[str]],
    ends: dict[int, float],
    earlier: dict,
) -> tuple[float, float, int, int]:
    """Seconds per run beyond training and prediction: (per run, pooled extra seconds, their runs, runs kept).

    Measured on the runs trained in this call (with --keep-sample: the earlier call's if none).
    """

    def result_time(r: dict[str, str]) -> float:  # a row kept without its run folder was not trained now
        path = sample_dir / "runs" / r["noise"] / r["method"] / f"seed{r['seed']}" / "result.json"
        return path.stat().st_mtime if path.is_file() else 0.0

    now = {(r["method"], r["noise"] == CLEAN) for r in rows if result_time(r) >= started_at}
    group_of = {name: i for i, group in enumerate(groups) for name in group}
    busy = [0.0] * len(groups)
    for (name, clean), sec in seconds.items():
        if (name, clean) in now:
            busy[group_of[name]] += sec
    # Only processes that trained count: one with nothing left to train (--keep-sample) pays its start-up and
    # report alone, which a full run pays once per process, not per run. With kept runs, the earlier call's
    # measurement is pooled in (one run's overhead alone carries a whole process's fixed costs).
    trained = [i for i, group in enumerate(groups) if any(key[0] in group for key in now)]
    extra, n_extra = sum(max(0.0, ends[i] - busy[i]) for i in trained), len(now)
    kept = len(rows) - len(now)
    if kept and earlier:
        n_before = int(earlier.get("overhead_runs", earlier.get("sample_runs", 0)))
        extra += float(earlier.get("overhead_extra_s", earlier.get("overhead_per_run_s", 0.0) * n_before))
        n_extra += n_before
    return (extra / n_extra if n_extra else 0.0), extra, n_extra, kept


def _reference(folder: Path, seed: int, noise: str) -> dict[tuple[str, bool], float]:
    """A finished benchmark's Dice of the sample's runs: (method, clean) -> Dice."""
    with (folder / "results.csv").open(newline="") as f:
        return {
            (r["method"], r["noise"] == CLEAN): float(r["dice"])
            for r in csv.DictReader(f)
            if r["seed"] == str(seed) and r["noise"] in (CLEAN, noise)
        }


def _command(args: argparse.Namespace) -> str:
    command = f"python benchmarks/sizing.py {args.config.as_posix()} --out {args.out.as_posix()}"
    if args.processes != 2:
        command += f" --processes {args.processes}"
    if args.target_min != 90.0:
        command += f" --target-min {args.target_min:g}"
    if args.keep_sample:
        command += " --keep-sample"
    if args.reference is not None:
        command += f" --reference {args.reference.as_posix()}"
    return command


def _markdown(summary: dict, name: str, reference: Path | None) -> list[str]:
    minutes, kept, groups = summary["predicted_wall_min"], summary["sample_runs_kept"], summary["groups"]
    lines = [
        f"# Sizing of {name}: {summary['runs']} runs, predicted {minutes:.1f} min on {summary['processes']} "
        f"processes (target {summary['target_min']:.0f} min)",
        "",
        f"Sample: {summary['sample_runs']} runs (first setting and seed of every method, plus the oracle)"
        + (
            f", {kept} of them kept from the sample of {summary['kept_from']} (--keep-sample),"
            if kept
            else ""
        )
        + f" in {summary['sample_wall_s'] / 60:.1f} min wall as {len(groups)} 1-thread processes "
        f"({'; '.join(','.join(g) for g in groups)}); overhead "
        f"{summary['overhead_per_run_s']:.1f} s per run beyond its training and prediction seconds. Machine: "
        f"{summary['machine']}. Date: {summary['date']}. Command: `{summary['command']}`.",
        "",
        "| method | runs in the matrix | seconds per run (sample) | seconds in total | Dice (sample) |"
        + (f" Dice ({reference.as_posix()}, same run) |" if reference else ""),
        "| --- | --- | --- | --- | --- |" + (" --- |" if reference else ""),
    ]
    for method, v in summary["per_method"].items():
        ref = v["reference_dice"]
        lines.append(
            f"| {method} | {v['runs']} | {v['seconds_per_run']:.0f} | {v['seconds']:.0f} | {100 * v['dice']:.2f} |"
            + ((f" {100 * ref:.2f} |" if ref is not None else " - |") if reference else "")
        )
    verdict = "within" if summary["predicted_wall_s"] / 60 <= summary["target_min"] else "over"
    lines += [
        "",
        f"Predicted wall time: {minutes:.1f} min ({verdict} the {summary['target_min']:.0f}-minute target), as "
        f"{len(summary['only_lists'])} 1-thread processes (`OMP_NUM_THREADS=1`) with these `--only` lists: "
        + "; ".join(
            f"`{','.join(g)}` ({m:.1f} min)"
            for g, m in zip(summary["only_lists"], summary["only_list_minutes"])
        )
        + ".",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    torch.set_num_threads(1)  # the machine line of the report names the samples' thread count
    bench = load_benchmark(args.config)
    full = plan_runs(bench, args.out / "unused")
    sample_dir = args.out / "sample"
    refusal = _refusal(args, sample_dir)
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    earlier = read_json(args.out / "sizing.json", {})
    raw = _sample_config(args.config, bench.name, args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    sample_cfg = args.out / "sample.yaml"
    write_text(sample_cfg, yaml.safe_dump(raw, sort_keys=False))

    # pack the heavy RL methods apart (rough weights from the method's kind; the measurement decides);
    # the oracle runs in the process whose --only list names its method
    weights = {m.name: 4.0 if m.method == "svldrl" else 1.0 for m in bench.methods}
    for name in bench.methods_on_clean:
        weights[name] = weights.get(name, 0.0) + 1.0
    names = list(dict.fromkeys([m.name for m in bench.methods] + list(bench.methods_on_clean)))
    groups = _split(names, weights, args.processes)
    started_at = time.time()
    ends, failure = _run_sample(sample_cfg, sample_dir, groups)
    if failure:
        print(f"error: {failure}", file=sys.stderr)
        return 2

    with (sample_dir / "results.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    seconds = {
        (r["method"], r["noise"] == CLEAN): float(r["train_seconds"]) + float(r["predict_seconds"])
        for r in rows
    }
    overhead, extra, n_extra, kept = _overhead(rows, seconds, sample_dir, started_at, groups, ends, earlier)
    counts = Counter((run.method.name, run.noise == CLEAN) for run in full)
    cost = {key: n * (seconds[key] + overhead) for key, n in counts.items()}
    dice = {(r["method"], r["noise"] == CLEAN): float(r["dice"]) for r in rows}
    reference = (
        _reference(args.reference, bench.seeds[0], raw["noise"][0]["name"])
        if args.reference is not None
        else {}
    )
    per_method = {
        f"{name}{' (clean)' if clean else ''}": {
            "runs": counts[(name, clean)],
            "seconds_per_run": seconds[(name, clean)],
            "seconds": cost[(name, clean)],
            "dice": dice[(name, clean)],
            "reference_dice": reference.get((name, clean)),
        }
        for name, clean in counts
    }
    by_only: dict[str, float] = Counter()  # the oracle runs in the --only list naming its method
    for (name, _), c in cost.items():
        by_only[name] += c
    only_lists = _split(list(by_only), by_only, args.processes)
    loads = [sum(by_only[name] for name in group) for group in only_lists]
    total = max(loads)
    summary = {
        "config": args.config.as_posix(),
        "runs": len(full),
        "processes": args.processes,
        "groups": groups,
        "process_wall_s": [round(ends[i], 1) for i in range(len(groups))],
        "sample_runs": len(rows),
        "sample_runs_kept": kept,
        "kept_from": earlier.get("date") if kept else None,
        "sample_wall_s": round(max(ends.values()), 1),
        "overhead_per_run_s": round(overhead, 1),
        "overhead_extra_s": round(extra, 6),  # pooled by a later --keep-sample call: kept unrounded
        "overhead_runs": n_extra,
        "per_method": per_method,
        "only_lists": only_lists,
        "only_list_minutes": [round(load / 60, 1) for load in loads],
        "predicted_wall_min": round(total / 60, 1),
        "predicted_wall_s": round(total, 3),
        "target_min": args.target_min,
        "machine": machine_description(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": _command(args),
    }
    # atomic (a later --keep-sample pools from it)
    write_text(args.out / "sizing.json", json.dumps(summary, indent=2) + "\n")
    lines = _markdown(summary, bench.name, args.reference if reference else None)
    write_text(args.out / "results.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
