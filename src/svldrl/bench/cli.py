"""``svldrl benchmark CONFIG [--out DIR] [--only METHOD,...]``, added to a parser by :func:`add_parser`."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from svldrl.errors import UserError
from svldrl.reporter import QUIET_HELP, Reporter

#: Where results go when --out is not given: benchmarks/results/<config stem> under the current folder.
DEFAULT_RESULTS = Path("benchmarks") / "results"


def default_out(config: str | Path) -> Path:
    """``benchmarks/results/<config stem>``."""
    return DEFAULT_RESULTS / Path(config).stem


def parse_only(text: str | None) -> list[str] | None:
    """``"supervised,svldrl"`` -> ``["supervised", "svldrl"]``; None stays None."""
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UserError(f"--only expects method names like supervised,svldrl, got '{text}'")
    return names


def parse_seeds(text: str | None) -> list[int] | None:
    """``"0,2"`` -> ``[0, 2]``; None stays None."""
    names = parse_only(text)
    if names is None:
        return None
    try:
        return [int(n) for n in names]
    except ValueError:
        raise UserError(f"--seeds expects seed numbers like 0,1, got '{text}'") from None


def cmd_benchmark(a: argparse.Namespace, rep: Reporter) -> int:
    """Run the benchmark and print the path of results.md."""
    from svldrl.bench.runner import run_benchmark

    out = Path(a.out) if a.out else default_out(a.config)
    parts = ["svldrl", "benchmark", str(a.config), "--out", str(out)]
    for flag in ("only", "settings", "seeds"):
        if getattr(a, flag):
            parts += [f"--{flag}", getattr(a, flag)]
    for folder in a.reuse or []:
        parts += ["--reuse", folder]
    md = run_benchmark(
        a.config,
        out,
        reporter=rep,
        only=parse_only(a.only),
        settings=parse_only(a.settings),
        seeds=parse_seeds(a.seeds),
        verbose=a.verbose,
        command=shlex.join(parts),
        reuse=a.reuse,
    )
    print(md)
    return 0


def add_parser(
    subparsers: argparse._SubParsersAction, formatter_class: type = argparse.HelpFormatter
) -> argparse.ArgumentParser:
    """Add the ``benchmark`` subcommand to the ``svldrl`` subparsers (``func=cmd_benchmark``)."""
    help_ = "train methods x noise settings x seeds from a YAML file and report Dice on clean test masks"
    p = subparsers.add_parser(
        "benchmark",
        help=help_,
        formatter_class=formatter_class,
        description=help_
        + (
            ". Writes OUT/results.csv, OUT/results.md and OUT/plots/; rerunning skips completed runs and "
            "resumes interrupted ones. Configs: benchmarks/*.yaml."
        ),
    )
    p.add_argument("config", help="benchmark YAML file (e.g. benchmarks/phantom_cpu.yaml)")
    p.add_argument("--out", default=None, help="benchmark folder (default benchmarks/results/<config stem>)")
    p.add_argument(
        "--only",
        default=None,
        metavar="METHOD,...",
        help="run only these methods (names from the config); the report lists every completed run",
    )
    p.add_argument(
        "--settings",
        default=None,
        metavar="NAME,...",
        help="run only these noise settings (names from the config, clean for the oracle's)",
    )
    p.add_argument("--seeds", default=None, metavar="SEED,...", help="run only these seeds of the config's")
    p.add_argument(
        "--reuse",
        default=None,
        action="append",
        metavar="DIR",
        help="another benchmark folder on the same data (e.g. benchmarks/results/phantom_cpu): copy its "
        "completed runs that match a run here exactly (same noisy masks, method, seed and settings); "
        "repeat for several folders (the first match wins)",
    )
    p.add_argument("--verbose", action="store_true", help="also print each training's per-epoch lines")
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    p.set_defaults(func=cmd_benchmark)
    return p
