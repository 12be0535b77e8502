"""Nothing of the user's is lost: output folders are claimed before anything is written (svldrl.data.outputs).

Each command that writes results refuses a dataset's own image and mask folders always, refuses to replace
files it did not write unless ``--overwrite``, and may rerun into its own output. Files are created with the
permissions the user's umask gives.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch

from svldrl import config as C
from svldrl.cli import main
from svldrl.data.io import write_text
from svldrl.data.outputs import MARKER, dataset_folder_of
from svldrl.noise import run_noise
from svldrl.runs import train
from tests.conftest import TINY


@pytest.fixture(scope="module")
def trained_run(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("outputs_run")
    shutil.copytree(phantom_root, root / phantom_root.name)
    cfg = C.load_config(overrides=[*TINY, "train.iterations=2", "train.threads=1"])
    return train(root / phantom_root.name, "clean", root / "run", cfg)


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _run(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = main([*argv, "--quiet"])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("target", ["labelsTs", "labelsTr", "labelsTr_noisy/mt0.5", "imagesTr", "."])
@pytest.mark.parametrize("overwrite", [False, True])
def test_predict_never_writes_into_the_dataset(
    target: str, overwrite: bool, dataset: Path, trained_run: Path, capsys
) -> None:
    run_noise(dataset, "mt", 0.5, 0, name="mt0.5")
    before = _digest(dataset)
    argv = ["predict", str(trained_run), str(dataset / "imagesTs"), str(dataset / target)]
    code, err = _run(argv + (["--overwrite"] if overwrite else []), capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "never writes" in err, err
    assert _digest(dataset) == before  # every mask and image byte-identical, nothing added


def test_predict_refuses_foreign_files_unless_overwrite(
    dataset: Path, trained_run: Path, tmp_path, capsys
) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "phantom_006.nii.gz").write_bytes(b"a user's file")
    (out / "notes.txt").write_text("kept")
    argv = ["predict", str(trained_run), str(dataset / "imagesTs"), str(out)]
    code, err = _run(argv, capsys)
    assert code == 2 and "--overwrite" in err and "phantom_006.nii.gz" in err, err
    assert (out / "phantom_006.nii.gz").read_bytes() == b"a user's file"
    assert not (out / MARKER).exists()
    code, err = _run([*argv, "--overwrite"], capsys)
    assert code == 0, err
    assert (out / "phantom_006.nii.gz").read_bytes() != b"a user's file"
    assert (out / "notes.txt").read_text() == "kept"  # files it does not write stay untouched


def test_predict_reruns_into_its_own_output(dataset: Path, trained_run: Path, tmp_path, capsys) -> None:
    out = tmp_path / "pred"
    argv = ["predict", str(trained_run), str(dataset / "imagesTs"), str(out)]
    assert _run(argv, capsys)[0] == 0
    assert (out / MARKER).is_file()
    code, err = _run(argv, capsys)  # the same command again replaces its own predictions
    assert code == 0, err
    # A folder unrelated files only sit in (no name clash) is fine without --overwrite.
    other = tmp_path / "other"
    other.mkdir()
    (other / "readme.txt").write_text("x")
    assert _run(["predict", str(trained_run), str(dataset / "imagesTs"), str(other)], capsys)[0] == 0


def test_evaluate_out_is_checked(dataset: Path, trained_run: Path, tmp_path, capsys) -> None:
    pred = tmp_path / "pred"
    assert _run(["predict", str(trained_run), str(dataset / "imagesTs"), str(pred)], capsys)[0] == 0
    ref = str(dataset / "labelsTs")
    before = _digest(dataset)
    code, err = _run(
        ["evaluate", str(pred), ref, "--out", str(dataset / "labelsTs" / "summary.json")], capsys
    )
    assert code == 2 and "never writes" in err, err
    code, err = _run(["evaluate", str(pred), ref, "--out", str(tmp_path)], capsys)
    assert code == 2 and "names a folder" in err, err
    foreign = tmp_path / "summary.json"
    foreign.write_text("my notes")
    code, err = _run(["evaluate", str(pred), ref, "--out", str(foreign)], capsys)
    assert code == 2 and "not written by svldrl" in err and str(foreign) in err, err
    assert foreign.read_text() == "my notes"
    assert _run(["evaluate", str(pred), ref, "--out", str(foreign), "--overwrite"], capsys)[0] == 0
    assert _run(["evaluate", str(pred), ref, "--out", str(foreign)], capsys)[0] == 0  # its own summary now
    assert _digest(dataset) == before


def test_audit_out_is_checked(dataset: Path, trained_run: Path, tmp_path, capsys) -> None:
    out = tmp_path / "audit"
    out.mkdir()
    (out / "audit.csv").write_text("a user's table")
    argv = ["audit", str(trained_run), str(dataset), "--out", str(out), "--disable-tta"]
    code, err = _run(argv, capsys)
    assert code == 2 and "--overwrite" in err and "audit.csv" in err, err
    assert (out / "audit.csv").read_text() == "a user's table"
    code, err = _run([*argv, "--overwrite"], capsys)
    assert code == 0, err
    assert _run(argv, capsys)[0] == 0  # rerun into its own audit
    before = _digest(dataset)
    code, err = _run([*argv[:4], str(dataset / "labelsTs"), "--disable-tta", "--overwrite"], capsys)
    assert code == 2 and "never writes" in err, err
    assert _digest(dataset) == before


@pytest.mark.parametrize("target", ["labelsTr", "labelsTr_noisy/mt0.5", "imagesTs", "."])
def test_train_never_writes_its_run_folder_into_the_dataset(target: str, dataset: Path, capsys) -> None:
    run_noise(dataset, "mt", 0.5, 0, name="mt0.5")
    before = _digest(dataset)
    code, err = _run(["train", str(dataset), "--iterations", "2", "--out", str(dataset / target)], capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "dataset" in err, err
    assert _digest(dataset) == before


def test_synth_and_benchmark_refuse_dataset_folders(dataset: Path, tmp_path, capsys) -> None:
    before = _digest(dataset)
    shutil.rmtree(dataset / "labelsTs")
    (dataset / "labelsTs").mkdir()  # even an empty mask folder of a dataset is not synth's to fill
    before = _digest(dataset)
    code, err = _run(["synth", str(dataset / "labelsTs"), "--cases", "2", "--size", "16"], capsys)
    assert code == 2 and "never writes" in err, err
    config = Path(__file__).parent.parent / "benchmarks" / "tiny_test.yaml"
    code, err = _run(["benchmark", str(config), "--out", str(dataset)], capsys)
    assert code == 2 and "dataset folder" in err, err
    assert _digest(dataset) == before
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "results.md").write_text("my own results")
    code, err = _run(["benchmark", str(config), "--out", str(busy)], capsys)
    assert code == 2 and "results.md" in err and "--overwrite" not in err, err  # benchmark has no such flag
    assert (busy / "results.md").read_text() == "my own results"


def test_dataset_folders_are_recognised(dataset: Path, tmp_path: Path) -> None:
    assert dataset_folder_of(dataset / "labelsTs") == dataset / "labelsTs"
    assert dataset_folder_of(dataset / "labelsTs" / "sub" / "deeper") == dataset / "labelsTs"
    assert dataset_folder_of(dataset / "labelsTr_noisy" / "x") == dataset / "labelsTr_noisy" / "x"
    lone = tmp_path / "labelsTs"  # a user's folder that only shares the name
    lone.mkdir()
    assert dataset_folder_of(lone) is None


def test_files_get_the_umask_permissions(dataset: Path, trained_run: Path, tmp_path, capsys) -> None:
    old = os.umask(0o022)
    try:
        path = write_text(tmp_path / "a" / "b.txt", "x")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        out = tmp_path / "pred"
        assert _run(["predict", str(trained_run), str(dataset / "imagesTs"), str(out)], capsys)[0] == 0
        assert stat.S_IMODE((out / "phantom_006.nii.gz").stat().st_mode) == 0o644
        assert stat.S_IMODE((trained_run / "checkpoint_final.pt").stat().st_mode) == 0o644
        os.umask(0o077)
        private = write_text(tmp_path / "private.txt", "x")
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_noise_writes_only_its_own_set(dataset: Path, capsys) -> None:
    labels = _digest(dataset / "labelsTr")
    assert (
        _run(["noise", str(dataset), "--protocol", "mt", "--ratio", "0.5", "--name", "mine"], capsys)[0] == 0
    )
    first = _digest(dataset / "labelsTr_noisy" / "mine")
    code, err = _run(["noise", str(dataset), "--protocol", "mt", "--ratio", "1.0", "--name", "mine"], capsys)
    assert code == 2 and "other settings" in err, err
    for name in ("../labelsTr", ".hidden", "a/b"):
        code, err = _run(["noise", str(dataset), "--protocol", "mt", "--name", name], capsys)
        assert code == 2 and "invalid noisy-set name" in err, err
    assert _digest(dataset / "labelsTr_noisy" / "mine") == first
    assert _digest(dataset / "labelsTr") == labels
