"""Killed runs: SIGKILL in the middle of an epoch, of a checkpoint write and of ``svldrl noise``; then
``--resume`` / a rerun finishes with the log and the weights (or the bytes) of an uninterrupted run.
Also: ``--deterministic`` runs with one seed are identical."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from svldrl import config as C
from svldrl.cli import main
from svldrl.engine.checkpoint import load_checkpoint
from svldrl.runs import train
from tests.conftest import TINY

RUN = [*TINY, "train.threads=1", "train.deterministic=true"]

# Patches one point of the code to write a marker file and hang there, then runs the CLI. The test kills
# the process with SIGKILL once the marker appears: the kill lands exactly at that point.
DRIVER = """
import io, sys, time
from pathlib import Path

point, arg, marker, argv = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:]

def hold():
    marker.write_text("here")
    time.sleep(600)

if point == "step":  # before optimiser step `arg` (the global iteration index)
    from svldrl.engine.trainer import Trainer
    step = Trainer.train_step
    def train_step(self, batch):
        if self.iteration == arg:
            hold()
        return step(self, batch)
    Trainer.train_step = train_step
elif point == "checkpoint":  # half of checkpoint_latest for epoch `arg` is in its temporary file
    import torch
    save = torch.save
    def half_save(obj, f, *a, **k):
        name = getattr(f, "name", f)  # save_checkpoint hands torch.save an open file
        if isinstance(obj, dict) and obj.get("epoch") == arg and "checkpoint_latest" in str(name):
            buf = io.BytesIO()
            save(obj, buf, *a, **k)
            data = buf.getvalue()[: len(buf.getvalue()) // 2]
            if hasattr(f, "write"):
                f.write(data)
                f.flush()
            else:
                Path(f).write_bytes(data)
            hold()
        return save(obj, f, *a, **k)
    torch.save = half_save
elif point == "nifti":  # half of the `arg`-th NIfTI file written
    import nibabel
    save, calls = nibabel.save, []
    def half_save(img, f):
        calls.append(f)
        if len(calls) == arg:
            buf = io.BytesIO()
            save(img, f)
            data = Path(f).read_bytes()
            Path(f).write_bytes(data[: len(data) // 2])
            hold()
        return save(img, f)
    nibabel.save = half_save

from svldrl.cli import main
sys.exit(main(argv))
"""


@pytest.fixture(scope="module")
def reference(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted deterministic run (3 epochs of 2 steps)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ref")
    shutil.copytree(phantom_root, root / phantom_root.name)
    return train(root / phantom_root.name, "clean", root / "run", C.load_config(overrides=RUN))


def _train_argv(dataset: Path, out: Path, *extra: str) -> list[str]:
    argv = ["train", str(dataset), "--out", str(out), "--quiet", *extra]
    for s in RUN:
        argv += ["--set", s]
    return argv


def _kill_at(tmp_path: Path, point: str, arg: int, argv: list[str]) -> None:
    """Run the CLI in a subprocess, SIGKILL it when it reaches ``point``."""
    driver, marker, log = tmp_path / "driver.py", tmp_path / f"reached_{point}", tmp_path / f"{point}.log"
    driver.write_text(DRIVER)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, str(driver), point, str(arg), str(marker), *argv],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        deadline = time.monotonic() + 600
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail(
                    f"process ended (code {proc.returncode}) before {point}: {log.read_text()[-2000:]}"
                )
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"{point} not reached in time")
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def _rows(run: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(open(run / "metrics.csv")))


def _assert_same_run(run: Path, reference: Path) -> None:
    """The epochs 0, 1, 2 once each, the same logged values and the same final weights as the reference."""
    rows, ref_rows = _rows(run), _rows(reference)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    for a, b in zip(rows, ref_rows, strict=True):
        assert {k: v for k, v in a.items() if k != "epoch_time"} == {
            k: v for k, v in b.items() if k != "epoch_time"
        }
    a = load_checkpoint(run / "checkpoint_final.pt")["model"]
    b = load_checkpoint(reference / "checkpoint_final.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert not list(run.glob(".*.part*")), "temporaries of the killed write are left"


def test_kill_mid_epoch_then_resume_matches_uninterrupted(
    dataset: Path, tmp_path: Path, reference: Path
) -> None:
    run = tmp_path / "run"
    _kill_at(tmp_path, "step", 3, _train_argv(dataset, run))  # epoch 1 = steps 2 and 3: one step done
    assert load_checkpoint(run / "checkpoint_latest.pt")["epoch"] == 1
    assert [int(r["epoch"]) for r in _rows(run)] == [0] and not (run / "checkpoint_final.pt").exists()
    assert main(_train_argv(dataset, run, "--resume")) == 0
    _assert_same_run(run, reference)


def test_kill_mid_checkpoint_write_then_resume_matches_uninterrupted(
    dataset: Path, tmp_path: Path, reference: Path
) -> None:
    run = tmp_path / "run"
    _kill_at(tmp_path, "checkpoint", 2, _train_argv(dataset, run))  # writing the checkpoint after epoch 1
    assert list(run.glob(".checkpoint_latest.pt.*.part*")), "the kill did not land inside the write"
    assert load_checkpoint(run / "checkpoint_latest.pt")["epoch"] == 1  # the previous one, whole
    assert main(_train_argv(dataset, run, "--resume")) == 0
    _assert_same_run(run, reference)


def test_kill_noise_mid_write_then_rerun_is_byte_identical(phantom_root: Path, tmp_path: Path) -> None:
    argv = ["--protocol", "mt", "--ratio", "0.5", "--seed", "1", "--quiet"]
    ref_ds, ds = tmp_path / "ref" / phantom_root.name, tmp_path / "killed" / phantom_root.name
    shutil.copytree(phantom_root, ref_ds)
    shutil.copytree(phantom_root, ds)
    assert main(["noise", str(ref_ds), *argv]) == 0
    _kill_at(tmp_path, "nifti", 3, ["noise", str(ds), *argv])  # inside the third mask's write
    noisy = ds / "labelsTr_noisy"
    assert not (noisy / "mt0.5").exists() and (noisy / "mt0.5.partial").is_dir()
    assert main(["noise", str(ds), *argv]) == 0
    ref_files = {
        p.relative_to(ref_ds): p.read_bytes()
        for p in sorted((ref_ds / "labelsTr_noisy").rglob("*"))
        if p.is_file()
    }
    files = {p.relative_to(ds): p.read_bytes() for p in sorted(noisy.rglob("*")) if p.is_file()}
    assert files.keys() == ref_files.keys() and len(files) > 3
    assert all(files[k] == ref_files[k] for k in files)


def test_deterministic_runs_with_one_seed_are_identical(
    dataset: Path, tmp_path: Path, reference: Path
) -> None:
    same = train(dataset, "clean", tmp_path / "same", C.load_config(overrides=RUN))
    a = load_checkpoint(same / "checkpoint_final.pt")["model"]
    b = load_checkpoint(reference / "checkpoint_final.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in b)
    other = train(dataset, "clean", tmp_path / "other", C.load_config(overrides=[*RUN, "seed=1"]))
    c = load_checkpoint(other / "checkpoint_final.pt")["model"]
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the seed does reach the weights


@pytest.mark.parametrize(
    ("shape", "overlap", "mode", "batch"),
    [
        ((70, 45, 37), 0.25, "gaussian", 2),
        ((40, 33, 10), 0.5, "gaussian", 3),
        ((12, 50, 50), 0.0, "constant", 1),
    ],
)
def test_slab_stitched_prediction_equals_monai_full_volume(shape, overlap, mode, batch) -> None:
    """``svldrl predict`` stitches windows slab by slab (bounded memory) and still gives MONAI's labels,
    also for volumes thinner than the window (padded) and with several windows per batch."""
    from monai.inferers import sliding_window_inference

    from svldrl.engine.predict import sliding_window_labels

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv3d(1, 3, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv3d(3, 2, 3, padding=1)
    )
    image = torch.rand(shape, generator=torch.Generator().manual_seed(1)).numpy()
    with torch.no_grad():
        full = sliding_window_inference(
            torch.from_numpy(image)[None, None], (16, 16, 16), batch, net, overlap=overlap, mode=mode
        )
    labels = sliding_window_labels(image, (16, 16, 16), batch, net, overlap, mode, torch.device("cpu"))
    assert labels.dtype == np.uint8 and labels.shape == shape
    np.testing.assert_array_equal(labels, full.argmax(1)[0].numpy())
