"""What a user reads: every --help entry explains itself and shows its default; Python warnings come out
as the reporter's ``warning:`` lines, which --quiet keeps (it hides progress only); long trainings say how
long is left."""

from __future__ import annotations

import argparse
import io
import json
import math
import warnings
from pathlib import Path

import pytest
import torch

from svldrl import config as C
from svldrl.cli import main, make_parser
from svldrl.data.dataset import load_dataset
from svldrl.engine import trainer as T
from svldrl.methods import get_method
from svldrl.reporter import QUIET, SILENT, Reporter, SvldrlWarning
from tests.conftest import TINY


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_help_entry_has_text_and_shows_its_default() -> None:
    for name, sub in _subparsers(make_parser()).items():
        text = sub.format_help()
        for action in sub._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"svldrl {name} {action.dest}: no help text"
            if action.default not in (None, False):
                shown = str(action.default)
                assert shown in text, f"svldrl {name} --help does not show {action.dest}'s default {shown}"


def test_warnings_go_through_the_reporter(dataset: Path, tmp_path: Path, capsys) -> None:
    meta = json.loads((dataset / "dataset.json").read_text())
    meta["numTraining"] = 99
    (dataset / "dataset.json").write_text(json.dumps(meta))
    argv = ["noise", str(dataset), "--protocol", "mt", "--ratio", "0.5"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert any(line.startswith("warning:") and "numTraining is 99" in line for line in err.splitlines()), err
    # --quiet hides progress (the set exists already: "already exists" is progress) but not the warning
    assert main([*argv, "--quiet"]) == 0
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "numTraining is 99" in lines[0], lines
    assert captured.out.strip().endswith("mt0.5")  # the result's path still goes to stdout


def test_quiet_help_says_warnings_still_print() -> None:
    for name, sub in _subparsers(make_parser()).items():
        quiet = next(a for a in sub._actions if a.dest == "quiet")
        assert quiet.help == "no progress output; warnings and errors still print", name


def test_reporters_keep_warnings_where_they_hide_progress(capsys) -> None:
    stream = io.StringIO()
    rep = Reporter(quiet=True, stream=stream)
    rep.info("progress")
    rep.progress("step", 1, 2, 0.0)
    rep.warn("look at this")
    assert stream.getvalue() == "warning: look at this\n"
    # the library default prints nothing itself: progress is dropped, a warning is a Python warning
    with pytest.warns(SvldrlWarning, match="look at this"):
        QUIET.warn("look at this")
    QUIET.info("progress")
    # the other ranks of a distributed run: nothing at all
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SILENT.warn("look at this")
        SILENT.info("progress")
    assert capsys.readouterr() == ("", "")


class Lines:
    quiet = False

    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, message: str) -> None:
        self.lines.append(message)

    def warn(self, message: str) -> None:
        self.lines.append(f"warning: {message}")

    def progress(self, *a, **k) -> None:
        pass


def test_svldrl_eta_charges_the_rl_stages_their_own_cost(dataset: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    cfg = C.load_config(overrides=[*TINY, "method=svldrl", "train.iterations=10", "rl.warmup=0.5"])
    trainer = get_method("svldrl")(cfg, load_dataset(dataset), tmp_path / "run")
    timing = trainer.timing
    timing.stage_seconds[1], timing.stage_steps[1] = 4.0, 4  # warm-up: 1 s per step
    prior = timing.cost_prior(3)
    assert prior == pytest.approx(6.0)  # t_max 3, three decoders
    # after 4 steps (2 epochs): 1 warm-up step left at 1 s, 5 RL steps at the prior's 6 s
    assert timing.eta(4, 2) == pytest.approx(1.0 + 5 * prior)
    timing.stage_seconds[2], timing.stage_steps[2] = 10.0, 1  # an RL step measured at 10 s
    assert timing.eta(6, 3) == pytest.approx(4 * 10.0)
    sup = get_method("supervised")(C.load_config(overrides=[*TINY]), load_dataset(dataset), tmp_path / "r2")
    assert math.isnan(sup.timing.eta(0, 0))  # nothing measured yet: no guess


def test_long_epochs_print_progress(dataset: Path, tmp_path: Path, monkeypatch) -> None:
    torch.set_num_threads(1)
    monkeypatch.setattr(T, "PROGRESS_EVERY", 0.0)
    rep = Lines()
    cfg = C.load_config(overrides=[*TINY, "train.iterations=4", "train.steps_per_epoch=4"])
    get_method("supervised")(cfg, load_dataset(dataset), tmp_path / "run", reporter=rep).fit()
    inside = [ln for ln in rep.lines if ln.startswith("  epoch 1/1: step")]
    assert len(inside) == 3 and all("ETA" in ln for ln in inside), rep.lines


def test_every_setting_says_where_it_comes_from(capsys: pytest.CaptureFixture) -> None:
    """svldrl train --help lists every key with its origin, and docs/method.md's list of the method's keys by
    origin is the code's (the paper apart from ours)."""
    import re
    from pathlib import Path

    from svldrl import config as C
    from svldrl.cli import main

    assert {spec["origin"] for spec in C.SCHEMA.values()} <= set(C.ORIGINS)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = capsys.readouterr().out
    for key, spec in C.SCHEMA.items():
        assert re.search(rf"^  {re.escape(key)}=\S.*\[{spec['origin']}\]", help_text, re.M), key
    doc = (Path(__file__).parents[1] / "docs" / "method.md").read_text()
    section = doc.split("## Where each setting comes from", 1)[1].split("\n## ", 1)[0]
    listed = {}
    for origin, keys in re.findall(r"^- (\w+): (.*?)(?=^- |\Z)", section, re.M | re.S):
        for key in re.findall(r"`([\w.]+)`", keys):
            listed[key] = origin
    method_keys = {k: v["origin"] for k, v in C.SCHEMA.items() if k.split(".")[0] in ("rl", "nets", "infer")}
    assert listed == method_keys
    assert C.SCHEMA["rl.reward"]["origin"] == "ours" and C.SCHEMA["rl.action_space"]["origin"] == "paper"
