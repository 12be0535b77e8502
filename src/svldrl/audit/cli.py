"""``svldrl audit``: which training masks are wrong, and where (wired into :mod:`svldrl.cli` by
:func:`add_parser`)."""

from __future__ import annotations

import argparse

from svldrl.errors import UserError
from svldrl.reporter import QUIET_HELP, Reporter


def cmd_audit(a: argparse.Namespace, rep: Reporter) -> int:
    """Run the audit and print the path of ``audit.html``."""
    from svldrl.audit.audit import audit

    runs = [r.strip() for r in (a.runs or "").split(",") if r.strip()]
    if a.runs is not None and not runs:
        raise UserError(f"--runs expects comma-separated run folders, got '{a.runs}'")
    result = audit(
        a.run,
        a.dataset,
        a.out,
        labels=a.labels,
        runs=runs,
        top=a.top,
        threshold=a.threshold,
        detector=a.detector,
        band=a.band,
        device=a.device,
        checkpoint=a.checkpoint,
        batch=a.batch,
        tta=not a.disable_tta,
        reporter=rep,
        overwrite=a.overwrite,
    )
    worst = ", ".join(f"{r['case']} ({r['dice']:.3f})" for r in result.rows[:3])
    rep.info(f"worst masks (Dice given vs corrected): {worst}")
    print(result.html)
    return 0


def add_parser(
    subparsers: argparse._SubParsersAction, formatter_class: type = argparse.HelpFormatter
) -> argparse.ArgumentParser:
    """Add the ``audit`` subcommand to the ``svldrl`` command line; returns its parser."""
    help_ = "rank training masks by suspected label errors, with error maps and corrected masks"
    p = subparsers.add_parser(
        "audit",
        help=help_,
        formatter_class=formatter_class,
        description=f"{help_}. Each case is judged by a run whose fold did not train on it where one is "
        "given (one run per fold: --runs or a folder of fold runs); cases only a run trained on can judge "
        "are marked in_fold, where errors are under-detected.",
    )
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    p.add_argument("run", help="run folder, or a folder of fold runs")
    p.add_argument("dataset", help="dataset folder (or datalist .json)")
    p.add_argument("--labels", default="clean", help="masks to audit: clean (default) or noisy/NAME")
    p.add_argument("--out", required=True, help="output folder (outside the dataset's image/mask folders)")
    p.add_argument("--top", type=int, default=10, help="worst cases shown with figures (default 10)")
    p.add_argument(
        "--threshold",
        type=float,
        default=0.8,
        help="confidence T: flip to foreground where p > T, to background where p < 1 - T (0.8)",
    )
    p.add_argument(
        "--band",
        type=float,
        default=3.0,
        help="keep suspected errors within this many voxels of the given boundary (3; 0 = anywhere)",
    )
    p.add_argument("--runs", default=None, metavar="RUN2,RUN3", help="more run folders (other folds)")
    p.add_argument(
        "--detector",
        choices=["threshold", "cl"],
        default="threshold",
        help="threshold (default) or cl: confident learning with pooled class thresholds",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument(
        "--checkpoint",
        default="auto",
        choices=["auto", "final", "best", "latest"],
        help="auto: each run's train.checkpoint_select",
    )
    p.add_argument("--batch", type=int, default=None, help="sliding-window batch size")
    p.add_argument(
        "--disable-tta",
        action="store_true",
        help="judge with one pass instead of the mean over the 8 axis mirrorings (8x faster)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace files in --out that svldrl did not write as an audit (never the dataset's own folders)",
    )
    p.set_defaults(func=cmd_audit)
    return p
