"""The ``svldrl`` command line. User errors print one line and exit with code 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from svldrl import __version__
from svldrl.errors import UserError
from svldrl.reporter import QUIET_HELP, SILENT, Reporter

if TYPE_CHECKING:
    from svldrl.settings import Config


def _foreground(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--foreground expects label values like 1,2,4, got '{text}'") from None
    if not values or any(v <= 0 for v in values):
        raise UserError(f"--foreground expects positive label values like 1,2,4, got '{text}'")
    return values


def cmd_synth(a: argparse.Namespace, rep: Reporter) -> int:
    from svldrl.data.synth import synthesize

    out = synthesize(
        Path(a.out),
        cases=a.cases,
        size=a.size,
        seed=a.seed,
        test_cases=a.test_cases,
        reporter=rep,
        difficulty=a.difficulty,
    )
    rep.info(f"wrote {a.cases} training and {a.test_cases} test phantoms ({a.difficulty}) to {out}")
    return 0


def cmd_noise(a: argparse.Namespace, rep: Reporter) -> int:
    from svldrl.runs import run_noise

    params = dict(_parse_params(a.param))
    if a.mode:
        params["mode"] = a.mode
    if a.trusted is not None and a.trusted < 1:
        raise UserError(f"--trusted expects a number of training cases of at least 1, got {a.trusted}")
    out = run_noise(
        a.dataset,
        a.protocol,
        a.ratio,
        a.seed,
        name=a.name,
        params=params,
        foreground=_foreground(a.foreground),
        reporter=rep,
        trusted=a.trusted or 0,
    )

    report = json.loads((Path(out) / "noise_report.json").read_text())
    unchanged = report.get("n_unchanged", 0)
    rep.info(
        f"wrote {out}: {report['n_corrupted']}/{report['n_cases']} cases corrupted"
        + (f" ({unchanged} drawn but left unchanged by their corruption)" if unchanged else "")
        + f", mean label Dice {report['mean_dice']:.4f}, mean voxel error rate "
        f"{report['mean_voxel_error_rate']:.4f}"
        + (
            f"; {report['n_trusted']} trusted cases left untouched (trusted.json): {', '.join(report['trusted'])}"
            if report.get("n_trusted")
            else ""
        )
    )
    print(out)
    return 0


def _parse_params(items: list[str] | None) -> list[tuple[str, object]]:
    import yaml

    out = []
    for item in items or []:
        if "=" not in item:
            raise UserError(f"--param expects key=value, got '{item}'")
        k, v = item.split("=", 1)
        out.append((k.strip(), yaml.safe_load(v)))
    return out


#: ``svldrl train`` flags and the config keys they set.
TRAIN_FLAGS = (
    ("method", "method"),
    ("labels", "labels"),
    ("iterations", "train.iterations"),
    ("patch", "train.patch"),
    ("backbone", "nets.backbone"),
    ("seed", "seed"),
    ("fold", "data.fold"),
    ("device", "train.device"),
)


def _flag_overrides(a: argparse.Namespace) -> list[tuple[str, str]]:
    """(how the user said it, ``key=value``) for every config value a ``svldrl train`` flag sets."""
    out = [(f"--set {s}", s) for s in (a.set or [])]
    for flag, key in TRAIN_FLAGS:
        value = getattr(a, flag, None)
        if value is not None:
            out.append((f"--{flag} {value}", f"{key}={value}"))
    trusted = getattr(a, "trusted", None)
    if trusted is not None:
        # a list file is kept by its absolute path (config.yaml is read again by --resume, from anywhere)
        value = trusted if trusted in ("auto", "none") else os.path.abspath(trusted)
        out.append((f"--trusted {trusted}", f"data.trusted={json.dumps(value)}"))
    if getattr(a, "deterministic", False):
        out.append(("--deterministic", "train.deterministic=true"))
    return out


def build_train_config(a: argparse.Namespace, base: Config | None = None) -> Config:
    """The run's config from ``--preset``, ``--config`` files, the flags and ``--set``, in this order (on top of
    ``base`` if given); a key of a section the method does not read is refused."""
    from svldrl import config as C
    from svldrl.methods import section_owners

    files = ([C.preset_path(a.preset)] if getattr(a, "preset", None) else []) + (a.config or [])
    cfg = C.load_config(files, [kv for _, kv in _flag_overrides(a)], base=base, owners=section_owners())
    fg = _foreground(getattr(a, "foreground", None))
    if fg is not None:
        cfg.data.foreground = fg  # the config built here: no one else holds it yet
    return cfg


def _said(a: argparse.Namespace, key: str) -> str:
    """How the user asked for config ``key``: the flag or ``--set`` that took effect (the last), else ``--config``
    (or ``--foreground``)."""
    said = [how for how, kv in _flag_overrides(a) if kv.split("=", 1)[0] == key]
    return said[-1] if said else ("--foreground" if key == "data.foreground" else "--config")


def resume_config(a: argparse.Namespace) -> Config:
    """The config of the run being resumed; ``--iterations`` may keep or extend the budget, and the settings that
    do not change what a run computes (``--device``, threads, layout: ``config.NEUTRAL_KEYS``) may change.

    Checked before anything is written: ``config.yaml`` stays as it was when the resume is refused.

    Raises:
        UserError: a flag, ``--set`` or ``--config`` that asks for something else than the run was started with
            (a resume continues that run; a changed setting would silently be a different experiment), or a
            budget below the iterations the run has done (the run would stop where it is and call that the
            end of a shorter one).
    """
    from svldrl import config as C
    from svldrl.engine.checkpoint import checkpoint_iteration
    from svldrl.methods import section_owners

    run = Path(a.out)
    saved = C.load_config([run / "config.yaml"], owners=section_owners(), saved=True)
    asked = build_train_config(a, base=saved)
    # the budget may grow; device, threads and layout may change (config.NEUTRAL_KEYS): the same computation
    changed = C.differences(asked, saved, allowed=("train.iterations",), owners=section_owners())
    if changed:
        key, there, here = changed[0]
        raise UserError(
            f"--resume continues the run as it was started, but {_said(a, key)} asks for {key}={here!r} "
            f"(the run has {there!r}); drop it, or start a new run with another --out",
            run / "config.yaml",
        )
    latest = run / "checkpoint_latest.pt"
    budget = int(asked.train.iterations)
    if latest.is_file() and budget < (done := checkpoint_iteration(latest)):
        raise UserError(
            f"--resume: the run has done {done} iterations already, more than the budget of {budget} that "
            f"{_said(a, 'train.iterations')} asks for; a resume keeps or extends the budget (--iterations {done} "
            "or more), or start a new run with another --out",
            run,
        )
    return asked


def cmd_train(a: argparse.Namespace, rep: Reporter) -> int:
    from svldrl.data.outputs import refuse_dataset_folder
    from svldrl.engine import distributed as D
    from svldrl.runs import train

    # checkpoints inside a dataset's image / mask folders would mix into the user's data (the SFDA noise
    # protocol's own source model, under labelsTr_noisy/NAME.source/, is trained through runs.train, not here)
    refuse_dataset_folder(Path(a.out), "--out")
    if a.resume and (Path(a.out) / "config.yaml").is_file():
        cfg = resume_config(a)
    else:
        cfg = build_train_config(a)
    if a.trusted == "auto":
        _check_trusted_found(a.dataset, cfg)
    D.init_from_env()
    if D.rank() != 0:
        rep = SILENT  # rank 0 says it once (its warnings included)
    run = train(a.dataset, labels=cfg.labels, out=a.out, cfg=cfg, resume=a.resume, reporter=rep)
    rep.info(f"run folder: {run}")
    return 0


def _check_trusted_found(dataset: str, cfg: Config) -> None:
    """``--trusted auto`` given on the command line asks for trusted cases: refuse a dataset with none."""
    from svldrl.data.dataset import TRUSTED_DIR, load_dataset

    if not load_dataset(dataset, cfg.labels, "auto").trusted_ids:
        raise UserError(
            f"--trusted auto: no trusted cases (no masks in {TRUSTED_DIR}/, and the {cfg.labels} masks record "
            "none: svldrl noise --trusted N records them); give a list with --trusted FILE or leave --trusted out",
            dataset,
        )


def cmd_targets(a: argparse.Namespace, rep: Reporter) -> int:
    from svldrl.runs.targets import run_config, write_targets

    if a.from_run is not None:
        given = [
            f
            for f in ("labels", "method", "foreground", "trusted", "preset", "config", "set")
            if getattr(a, f)
        ]
        if given:
            raise UserError(
                f"--from takes the run's own settings; leave out --{', --'.join(given)}", a.from_run
            )
        cfg = run_config(a.from_run)
    else:
        cfg = build_train_config(a)
        if a.trusted == "auto":
            _check_trusted_found(a.dataset, cfg)
    report = write_targets(
        a.dataset, cfg.labels, cfg, a.out, reporter=rep, overwrite=a.overwrite, run=a.from_run
    )
    summary = f"{report['n_changed']} of {report['n_cases']} masks changed"
    if report["mean_label_dice_target"] == report["mean_label_dice_target"]:  # not NaN: clean masks exist
        summary += (
            f"; mean label Dice against the clean masks {report['mean_label_dice_given']:.4f} given, "
            f"{report['mean_label_dice_target']:.4f} as training starts"
        )
    rep.info(f"wrote {report['n_cases']} training targets to {a.out} ({summary}); report: targets.md")
    return 0


def cmd_predict(a: argparse.Namespace, rep: Reporter) -> int:
    from svldrl.runs import predict_folder

    files = predict_folder(
        a.run,
        a.input,
        a.output,
        device=a.device,
        batch=a.batch,
        checkpoint=a.checkpoint,
        save_refined=a.save_refined,
        reporter=rep,
        overwrite=a.overwrite,
    )
    rep.info(f"wrote {len(files)} predictions to {a.output}")
    return 0


def cmd_evaluate(a: argparse.Namespace, rep: Reporter) -> int:
    from svldrl.eval.summary import evaluate_folders, format_table

    out = Path(a.out) if a.out else None
    summary = evaluate_folders(
        a.pred, a.ref, out=out, foreground=_foreground(a.foreground), reporter=rep, overwrite=a.overwrite
    )
    print(format_table(summary))
    return 0


def cmd_demo(a: argparse.Namespace, rep: Reporter) -> int:
    from svldrl.demo import run_demo

    run_demo(Path(a.out), quick=a.quick, reporter=rep, methods=a.methods)
    return 0


TRUSTED_HELP = (
    "trusted cases (validation and checkpoint selection on their masks; MTCL's clean subset): auto (expert masks "
    "in labelsTr_trusted/ and the cases the noisy set records), none, or FILE: a JSON / text list of case ids "
    "(default auto: none where nothing is recorded)"
)


def _config_flags(sp: argparse.ArgumentParser) -> None:
    """``--preset``, ``--config`` and ``--set``, applied in this order (later ones win)."""
    from svldrl.config import presets

    sp.add_argument(
        "--preset",
        default=None,
        metavar="NAME",
        help=f"a configuration shipped with svldrl: {' | '.join(presets())} (svldrl/presets/NAME.yaml: which of its "
        "parts are the paper's and which are ours, and on which data it was chosen)",
    )
    sp.add_argument("--config", action="append", help="YAML config file (repeatable; after --preset)")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override, e.g. rl.t_max=5")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each entry's default, except where there is none to show (flags, ``None``) or the help text
    already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


class RawEpilogHelpFormatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """:class:`HelpFormatter` that prints the epilog (the table of settings) as written."""


def settings_epilog() -> str:
    """Every config key with its default and origin, for ``svldrl train --help``."""
    from svldrl.config import SCHEMA

    lines = [
        "settings (--set KEY=VALUE or a YAML file; where each default comes from: [paper] the paper's, "
        "[decision] ours where",
        "the paper is silent, [ours] our addition, [experimental] measured and not adopted, or never "
        "benchmarked; docs/method.md):",
    ]
    width = max(len(f"{k}={v['default']}") for k, v in SCHEMA.items())
    for key, spec in SCHEMA.items():
        value = spec["default"]
        value = str(value).lower() if isinstance(value, bool) else "null" if value is None else value
        lines.append(f"  {f'{key}={value}':<{width}}  [{spec['origin']}] {spec['meaning'].split(';')[0]}")
    return "\n".join(lines)


def make_parser() -> argparse.ArgumentParser:
    from svldrl.settings import Config

    defaults = Config()
    tc = defaults.train
    p = argparse.ArgumentParser(
        prog="svldrl",
        description="Train 3D segmentation models that stay accurate when the training masks are wrong.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"svldrl {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_, formatter_class=HelpFormatter)
        sp.add_argument("--quiet", action="store_true", help=QUIET_HELP)
        return sp

    s = add("synth", "write a phantom dataset in nnU-Net raw layout")
    s.add_argument("out", help="dataset folder to create (e.g. data/Dataset001_Phantom)")
    s.add_argument("--cases", type=int, default=20, help="training cases (imagesTr / labelsTr)")
    s.add_argument("--size", type=int, default=64, help="voxels per side (16..512)")
    s.add_argument("--seed", type=int, default=0, help="the same seed writes the same files")
    s.add_argument("--test-cases", type=int, default=10, help="held-out cases (imagesTs / labelsTs)")
    s.add_argument(
        "--difficulty",
        choices=["standard", "easy"],
        default="standard",
        help="standard: a look-alike structure touches the organ; easy: it differs by 35-50%%, little noise, "
        "bias and blur (same shapes either way)",
    )
    s.set_defaults(func=cmd_synth)

    n = add("noise", "corrupt training masks reproducibly into labelsTr_noisy/NAME")
    n.add_argument("dataset", help="dataset folder (or datalist .json); its clean masks are only read")
    n.add_argument(
        "--protocol",
        required=True,
        choices=["mt", "markov", "spg", "sfda"],
        help="mt (MT-Noise, sizes in mm), markov (boundary noise), spg (SP-guided), sfda (a shifted-domain "
        "model's masks)",
    )
    n.add_argument("--ratio", type=float, default=0.5, help="fraction of training cases corrupted")
    n.add_argument("--seed", type=int, default=0, help="noise seed; the same seed writes the same masks")
    n.add_argument("--name", default=None, help="folder under labelsTr_noisy/ (default e.g. mt0.5)")
    n.add_argument(
        "--mode", choices=["both", "dilate", "erode"], default=None, help="mt: one-sided noise (default both)"
    )
    n.add_argument(
        "--param",
        action="append",
        metavar="KEY=VALUE",
        help="protocol parameter, e.g. theta1=0.7 (repeatable)",
    )
    n.add_argument("--foreground", default=None, help="label values mapped to foreground, e.g. 1,2,4")
    n.add_argument(
        "--trusted",
        type=int,
        default=None,
        metavar="N",
        help="leave N training cases (drawn with the noise seed) untouched and record them as trusted "
        "(trusted.json; svldrl train validates on them); --ratio then applies to the other cases (default none)",
    )
    n.set_defaults(func=cmd_noise)

    t = sub.add_parser(
        "train",
        help="train a model with a method picked by name",
        description="train a model with a method picked by name",
        formatter_class=RawEpilogHelpFormatter,
        epilog=settings_epilog(),
    )
    t.add_argument("--quiet", action="store_true", help="no progress output; warnings and errors still print")
    t.add_argument(
        "dataset", help="dataset folder (nnU-Net raw, HDF5 or image/label pairs) or datalist .json"
    )
    t.add_argument("--method", default=None, help=f"method name (default {defaults.method}; see README)")
    t.add_argument("--labels", default=None, help="training masks: clean (default) or noisy/NAME")
    t.add_argument("--out", required=True, help="run folder to create (checkpoints, logs, config.yaml)")
    t.add_argument(
        "--iterations", type=int, default=None, help=f"total optimiser steps (default {tc.iterations})"
    )
    t.add_argument("--patch", type=int, default=None, help=f"cubic patch side (default {tc.patch})")
    t.add_argument("--backbone", default=None, help=f"unet | swinunetr (default {defaults.nets.backbone})")
    t.add_argument("--seed", type=int, default=None, help=f"training seed (default {defaults.seed})")
    t.add_argument(
        "--fold",
        default=None,
        help="cross-validation fold of splits_final.json (default 0), or all: train on every case, no validation",
    )
    t.add_argument("--device", default=None, help=f"auto | cpu | cuda | cuda:N (default {tc.device})")
    t.add_argument("--foreground", default=None, help="label values mapped to foreground, e.g. 1,2,4")
    t.add_argument("--trusted", default=None, metavar="{auto,none,FILE}", help=TRUSTED_HELP)
    _config_flags(t)
    t.add_argument(
        "--deterministic", action="store_true", help="deterministic algorithms: one seed, identical weights"
    )
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue a killed run from its latest checkpoint, same settings",
    )
    t.set_defaults(func=cmd_train)

    tg = add(
        "targets",
        "write the masks a configuration starts training from (after its corrections before training), with a "
        "report of what changed; nothing trains (--from RUN: the masks a trained run ended with)",
    )
    tg.add_argument("dataset", help="dataset folder or datalist .json; only read")
    tg.add_argument("--labels", default=None, help="the given masks: clean (default) or noisy/NAME")
    tg.add_argument("--out", required=True, help="folder for the masks and targets.md (outside the dataset)")
    tg.add_argument("--method", default=None, help="method name, if no preset or config file names it")
    tg.add_argument("--foreground", default=None, help="label values mapped to foreground, e.g. 1,2,4")
    tg.add_argument("--trusted", default=None, metavar="{auto,none,FILE}", help=TRUSTED_HELP)
    _config_flags(tg)
    tg.add_argument(
        "--from",
        dest="from_run",
        default=None,
        metavar="RUN",
        help="the targets a finished run (svldrl train --out) ended with, for corrections made during training "
        "(the trusted shift, MTCL); its settings are the run's",
    )
    tg.add_argument(
        "--overwrite", action="store_true", help="replace files in --out that svldrl targets did not write"
    )
    tg.set_defaults(func=cmd_targets)

    pr = add("predict", "segment every image of a folder with a trained run")
    pr.add_argument("run", help="run folder (svldrl train --out)")
    pr.add_argument("input", help="folder of images (e.g. imagesTs)")
    pr.add_argument("output", help="folder for the masks (never a dataset's own image or mask folder)")
    pr.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    pr.add_argument("--batch", type=int, default=None, help="sliding-window batch size (default: the run's)")
    pr.add_argument(
        "--checkpoint",
        default="auto",
        choices=["auto", "final", "best", "latest"],
        help="auto: the run's train.checkpoint_select",
    )
    pr.add_argument(
        "--save-refined", action="store_true", help="svldrl: also write the refined volume and action map"
    )
    pr.add_argument(
        "--overwrite",
        action="store_true",
        help="replace files in OUTPUT that svldrl did not write as predictions (never a dataset's "
        "image or mask folder)",
    )
    pr.set_defaults(func=cmd_predict)

    e = add("evaluate", "compare predictions with reference masks (summary.json, per-case CSV)")
    e.add_argument("pred", help="folder of predicted masks")
    e.add_argument("ref", help="folder of reference masks (e.g. labelsTs)")
    e.add_argument("--out", default=None, help="summary.json path (default PRED/summary.json)")
    e.add_argument("--foreground", default=None, help="reference label values mapped to foreground")
    e.add_argument(
        "--overwrite", action="store_true", help="replace an --out file that svldrl evaluate did not write"
    )
    e.set_defaults(func=cmd_evaluate)

    from svldrl.audit.cli import add_parser as add_audit
    from svldrl.bench.cli import add_parser as add_benchmark

    add_audit(sub, HelpFormatter)
    add_benchmark(sub, HelpFormatter)

    d = add("demo", "phantoms -> MT-Noise 0.5 -> train on clean / noisy -> evaluate -> report")
    d.add_argument("--out", default="svldrl_demo", help="demo folder (resumable: rerun to continue)")
    d.add_argument("--quick", action="store_true", help="small and short (see README for the time it takes)")
    d.add_argument("--methods", default=None, help=argparse.SUPPRESS)
    d.set_defaults(func=cmd_demo)
    return p


def _warnings_to(rep: Reporter):
    """Python warnings as the reporter's ``warning: ...`` lines (printed under ``--quiet`` too, see
    :meth:`Reporter.warn`); libraries' deprecation notices are dropped, they say nothing about the user's data."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
        if issubclass(category, (DeprecationWarning, PendingDeprecationWarning, FutureWarning)) and (
            "svldrl" not in str(filename)
        ):
            return
        rep.warn(str(message))

    return show


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    rep = Reporter(quiet=args.quiet)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _warnings_to(rep)
            return int(args.func(args, rep) or 0)
    except UserError as exc:
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every rank stops; one prints
            print(f"svldrl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("svldrl: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        # A path the user gave that cannot be read or written where no check caught it first: still one
        # line naming it (SVLDRL_DEBUG=1 shows the traceback instead).
        if os.environ.get("SVLDRL_DEBUG"):
            raise
        if int(os.environ.get("RANK", "0")) == 0:
            where = f"{exc.filename}: " if exc.filename else ""
            print(f"svldrl: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
