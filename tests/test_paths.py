"""Every command x every path argument, given wrong: one line naming the path, exit code 2, no traceback,
nothing written. The cases: a missing path, a file where a folder is expected (and back), a folder that
cannot be written (a read-only file system: root ignores folder permissions, so /sys stands in for it).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from svldrl import config as C
from svldrl.cli import main
from svldrl.runs import train
from tests.conftest import TINY

TINY_BENCH = Path(__file__).parent.parent / "benchmarks" / "tiny_test.yaml"
SETS = sum((["--set", s] for s in [*TINY, "train.iterations=2"]), [])


def _unwritable() -> Path | None:
    """A folder this process cannot create files in (a read-only or pseudo file system), if any."""
    for base in (Path("/sys"), Path("/proc/1")):
        probe = base / "svldrl_probe"
        try:
            probe.mkdir()
        except OSError:
            return base / "svldrl_out"
        probe.rmdir()
    return None


RO = _unwritable()


@pytest.fixture(scope="module")
def trained_run(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("paths_run")
    cfg = C.load_config(overrides=[*TINY, "train.iterations=2", "train.threads=1"])
    return train(phantom_root, "clean", root / "run", cfg)


# (argv with placeholders, the fragment the message must hold). {ds}: a dataset, {run}: a trained run,
# {file}: an existing file, {dir}: an existing empty folder, {missing}: a path that does not exist,
# {ro}: a folder that cannot be created, {out}: a fresh output path.
CASES = {
    "synth OUT is a file": (["synth", "{file}", "--cases", "1", "--size", "16"], "is a file"),
    "synth OUT unwritable": (["synth", "{ro}", "--cases", "1", "--size", "16"], "{ro}"),
    "noise DATASET missing": (["noise", "{missing}", "--protocol", "mt"], "dataset not found"),
    "noise DATASET is a file": (["noise", "{file}", "--protocol", "mt"], "expected a dataset folder"),
    "train DATASET missing": (["train", "{missing}", "--out", "{out}", *SETS], "dataset not found"),
    "train --out is a file": (["train", "{ds}", "--out", "{file}", *SETS], "is a file"),
    "train --out unwritable": (["train", "{ds}", "--out", "{ro}", *SETS], "{ro}"),
    "train --config missing": (["train", "{ds}", "--out", "{out}", "--config", "{missing}"], "not found"),
    "train --config is a folder": (["train", "{ds}", "--out", "{out}", "--config", "{dir}"], "not found"),
    "train malformed --set list": (
        ["train", "{ds}", "--out", "{out}", "--set", "nets.features=[4,8"],
        "malformed",
    ),
    "train --set list of words": (
        ["train", "{ds}", "--out", "{out}", "--set", "nets.features=[a,b]"],
        "nets.features",
    ),
    "predict RUN missing": (["predict", "{missing}", "{ds}/imagesTs", "{out}"], "not a run folder"),
    "predict RUN is a file": (["predict", "{file}", "{ds}/imagesTs", "{out}"], "not a run folder"),
    "predict INPUT missing": (["predict", "{run}", "{missing}", "{out}"], "input folder not found"),
    "predict INPUT is a file": (["predict", "{run}", "{file}", "{out}"], "input folder not found"),
    "predict OUTPUT is a file": (["predict", "{run}", "{ds}/imagesTs", "{file}"], "is a file"),
    "predict OUTPUT unwritable": (["predict", "{run}", "{ds}/imagesTs", "{ro}"], "{ro}"),
    "evaluate PRED missing": (["evaluate", "{missing}", "{ds}/labelsTs"], "prediction folder not found"),
    "evaluate REF missing": (["evaluate", "{ds}/labelsTs", "{missing}"], "reference folder not found"),
    "evaluate PRED is a file": (["evaluate", "{file}", "{ds}/labelsTs"], "prediction folder not found"),
    "evaluate --out is a folder": (
        ["evaluate", "{pred}", "{ds}/labelsTs", "--out", "{dir}"],
        "names a folder",
    ),
    "evaluate --out unwritable": (["evaluate", "{pred}", "{ds}/labelsTs", "--out", "{ro}/s.json"], "{ro}"),
    "audit RUN missing": (["audit", "{missing}", "{ds}", "--out", "{out}"], "not found"),
    "audit DATASET missing": (["audit", "{run}", "{missing}", "--out", "{out}"], "dataset not found"),
    "audit --out is a file": (["audit", "{run}", "{ds}", "--out", "{file}"], "a file"),
    "audit --out unwritable": (["audit", "{run}", "{ds}", "--out", "{ro}", "--disable-tta"], "{ro}"),
    "audit --runs missing": (
        ["audit", "{run}", "{ds}", "--out", "{out}", "--runs", "{missing}"],
        "{missing}",
    ),
    "demo --out is a file": (["demo", "--out", "{file}", "--quick"], "is a file"),
    "demo --out unwritable": (["demo", "--out", "{ro}", "--quick"], "{ro}"),
    "benchmark CONFIG missing": (["benchmark", "{missing}", "--out", "{out}"], "benchmark config not found"),
    "benchmark CONFIG is a folder": (["benchmark", "{dir}", "--out", "{out}"], "benchmark config not found"),
    "benchmark --out is a file": (["benchmark", str(TINY_BENCH), "--out", "{file}"], "is a file"),
    "benchmark --out unwritable": (["benchmark", str(TINY_BENCH), "--out", "{ro}"], "{ro}"),
    "benchmark --reuse missing": (
        ["benchmark", str(TINY_BENCH), "--out", "{out}", "--reuse", "{missing}"],
        "{missing}",
    ),
}


@pytest.mark.parametrize(("argv", "fragment"), CASES.values(), ids=CASES.keys())
def test_wrong_paths_exit_2_with_one_line(
    argv: list[str], fragment: str, dataset: Path, trained_run: Path, tmp_path: Path, capsys
) -> None:
    if "{ro}" in " ".join(argv) and RO is None:
        pytest.skip("no unwritable folder on this machine")
    pred = tmp_path / "pred"
    if "{pred}" in " ".join(argv):
        shutil.copytree(dataset / "labelsTs", pred)
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_dir").mkdir()
    names = {
        "{ds}": str(dataset),
        "{run}": str(trained_run),
        "{file}": str(tmp_path / "a_file"),
        "{dir}": str(tmp_path / "a_dir"),
        "{missing}": str(tmp_path / "missing"),
        "{ro}": str(RO),
        "{out}": str(tmp_path / "out"),
        "{pred}": str(pred),
    }

    def fill(text: str) -> str:
        for k, v in names.items():
            text = text.replace(k, v)
        return text

    before = sorted(p.name for p in tmp_path.iterdir())
    capsys.readouterr()
    code = main([fill(a) for a in argv] + ["--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("svldrl: error: ") and "Traceback" not in err, err
    assert fill(fragment) in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing created
    assert (tmp_path / "a_file").read_text() == "x" and not any((tmp_path / "a_dir").iterdir())
