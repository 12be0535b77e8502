"""Bad input through the command line: exit code 2, one stderr line naming the file (or key) and the
problem, no traceback, no warning, and no output left behind.

tests/test_data.py checks the same inputs at library level; this is what a user of ``svldrl`` sees.
"""

from __future__ import annotations

import errno
import json
import pathlib
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from svldrl import config as C
from svldrl.cli import main
from svldrl.runs import train
from tests.conftest import TINY

AFFINE = np.array(
    [[1.0, 0, 0, -15.5], [0, 1.0, 0, -15.5], [0, 0, 1.5, -23.25], [0, 0, 0, 1]]
)  # the phantoms'
TRAIN_SETS = sum((["--set", s] for s in [*TINY, "train.threads=1"]), [])


@pytest.fixture(scope="module")
def trained_run(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-step run to predict with (each test copies it before editing it)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("run")
    shutil.copytree(phantom_root, root / phantom_root.name)
    cfg = C.load_config(overrides=[*TINY, "train.iterations=2", "train.threads=1"])
    return train(root / phantom_root.name, "clean", root / "run", cfg)


def _save(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def _label(ds: Path, case: str = "phantom_001") -> Path:
    return ds / "labelsTr" / f"{case}.nii.gz"


def _image(ds: Path, case: str = "phantom_002") -> Path:
    return ds / "imagesTr" / f"{case}_0000.nii.gz"


def _mask_array(ds: Path) -> np.ndarray:
    return np.asarray(nib.load(_label(ds)).dataobj).astype(np.uint8)


# Each case edits a fresh copy of the phantom dataset (and a copy of a trained run) and returns
# (command, what the message must name). ``{out}`` in a command is the output folder that must not appear.
Case = Callable[[Path, Path, Path], tuple[list[str], str]]


def _train(ds: Path | str, *extra: str) -> list[str]:
    return ["train", str(ds), "--out", "{out}", *TRAIN_SETS, *extra]


def _predict(run: Path, inputs: Path) -> list[str]:
    return ["predict", str(run), str(inputs), "{out}"]


def grid_mismatch(ds, run, tmp):
    _save(_label(ds), _mask_array(ds)[:, :, :-1])
    return _train(ds), str(_label(ds))


def affine_mismatch(ds, run, tmp):
    shifted = AFFINE.copy()
    shifted[0, 3] += 2.0
    _save(_label(ds), _mask_array(ds), shifted)
    return _train(ds), str(_label(ds))


def multi_label_mask(ds, run, tmp):
    m = _mask_array(ds)
    m[m > 0] = 2
    m[0, 0, 0] = 1
    _save(_label(ds), m)
    return _train(ds), str(_label(ds))


def non_integer_mask(ds, run, tmp):
    _save(_label(ds), _mask_array(ds).astype(np.float32) * 0.5)
    return _train(ds), str(_label(ds))


def every_mask_empty(ds, run, tmp):
    # one empty mask is an organ-absent case (a negative example); all of them is a mistake
    for case in sorted((ds / "labelsTr").glob("*.nii.gz")):
        _save(case, np.zeros_like(_mask_array(ds)))
    return _train(ds), str(ds)


def nan_image(ds, run, tmp):
    img = np.asarray(nib.load(_image(ds)).dataobj).astype(np.float32)
    img[3, 4, 5] = np.nan
    _save(_image(ds), img)
    return _train(ds), str(_image(ds))


def inf_image_to_predict(ds, run, tmp):
    inputs = tmp / "in"
    inputs.mkdir()
    img = np.asarray(nib.load(ds / "imagesTs" / "phantom_006_0000.nii.gz").dataobj).astype(np.float32)
    img[1, 1, 1] = np.inf
    _save(inputs / "a_case_0000.nii.gz", img)  # first in order: found before any prediction is written
    shutil.copy(ds / "imagesTs" / "phantom_007_0000.nii.gz", inputs)
    return _predict(run, inputs), str(inputs / "a_case_0000.nii.gz")


def image_2d(ds, run, tmp):
    _save(_image(ds), np.zeros((32, 32), np.int16))
    return _train(ds), str(_image(ds))


def image_4d(ds, run, tmp):
    _save(_image(ds), np.zeros((32, 32, 32, 2), np.int16))
    return _train(ds), str(_image(ds))


def image_2d_to_predict(ds, run, tmp):
    inputs = tmp / "in"
    inputs.mkdir()
    shutil.copy(ds / "imagesTs" / "phantom_006_0000.nii.gz", inputs)
    bad = _save(
        inputs / "z_case_0000.nii.gz", np.zeros((32, 32), np.float32)
    )  # last: caught before any write
    return _predict(run, inputs), str(bad)


def wrong_channel_suffix(ds, run, tmp):
    bad = _image(ds).with_name("phantom_002_0001.nii.gz")
    _image(ds).rename(bad)
    return _train(ds), str(bad)


def missing_dataset_json(ds, run, tmp):
    (ds / "dataset.json").unlink()
    return _train(ds), str(ds / "dataset.json")


def malformed_dataset_json(ds, run, tmp):
    (ds / "dataset.json").write_text('{"channel_names": {"0": "MR"}, "labels": ')
    return _train(ds), str(ds / "dataset.json")


def _datalist(ds: Path, entries: list[dict]) -> Path:
    path = ds / "list.json"
    path.write_text(json.dumps({"training": entries}))
    return path


def _entry(i: int) -> dict:
    return {"image": f"imagesTr/phantom_{i:03d}_0000.nii.gz", "label": f"labelsTr/phantom_{i:03d}.nii.gz"}


def duplicate_case_ids(ds, run, tmp):
    path = _datalist(ds, [_entry(0), _entry(1), _entry(1)])
    return _train(path), str(path)


def path_traversal(ds, run, tmp):
    path = _datalist(ds, [_entry(0), {**_entry(1), "label": "../../../etc/passwd"}])
    return _train(path), str(path)


def truncated_nifti(ds, run, tmp):
    data = _image(ds).read_bytes()
    _image(ds).write_bytes(data[: len(data) // 2])
    return _train(ds), str(_image(ds))


def zero_size_mask(ds, run, tmp):
    _label(ds).write_bytes(b"")
    return _train(ds), str(_label(ds))


def zero_size_image_to_predict(ds, run, tmp):
    inputs = tmp / "in"
    inputs.mkdir()
    shutil.copy(ds / "imagesTs" / "phantom_006_0000.nii.gz", inputs)
    (inputs / "z_case_0000.nii.gz").write_bytes(b"")
    return _predict(run, inputs), str(inputs / "z_case_0000.nii.gz")


def unknown_config_key(ds, run, tmp):
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump({"train": {"iterations": 2, "learning_rate": 0.1}}))
    return _train(ds, "--config", str(path)), str(path)


def malformed_config(ds, run, tmp):
    path = tmp / "cfg.yaml"
    path.write_text("train: {iterations: 2\n")
    return _train(ds, "--config", str(path)), str(path)


def value_out_of_range(ds, run, tmp):
    return _train(ds, "--set", "train.batch=0"), "train.batch"


def missing_fold(ds, run, tmp):
    return _train(ds, "--fold", "7"), "--fold 7"


def missing_noisy_set(ds, run, tmp):
    return _train(ds, "--labels", "noisy/never_made"), str(ds / "labelsTr_noisy" / "never_made")


def _edit_run_config(run: Path, section: str, key: str, value) -> None:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg[section][key] = value
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def checkpoint_of_other_backbone(ds, run, tmp):
    _edit_run_config(run, "nets", "backbone", "swinunetr")  # the checkpoint says unet
    _edit_run_config(run, "train", "patch", 64)  # a patch swinunetr accepts, so the backbone check is reached
    return _predict(run, ds / "imagesTs"), str(run / "checkpoint_final.pt")


def checkpoint_of_other_heads(ds, run, tmp):
    _edit_run_config(run, "nets", "heads", "light")  # the checkpoint says decoders
    return _predict(run, ds / "imagesTs"), str(run / "checkpoint_final.pt")


def checkpoint_of_other_size(ds, run, tmp):
    _edit_run_config(run, "nets", "features", [8, 16, 32, 64])  # the weights are [4, 8, 16, 32]
    return _predict(run, ds / "imagesTs"), str(run / "checkpoint_final.pt")


def disk_full_in_predict(ds, run, tmp):
    def save(img, filename):  # half a file, then the disk is full
        pathlib.Path(filename).write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device", str(filename))

    _PATCHES.append((nib, "save", save))
    return _predict(run, ds / "imagesTs"), "{out}/phantom_006.nii.gz"


def disk_full_in_train(ds, run, tmp):
    write_text = pathlib.Path.write_text

    def full(self, data, *a, **k):
        if self.name.startswith(".config.yaml."):
            write_text(self, data[:10], *a, **k)
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return write_text(self, data, *a, **k)

    _PATCHES.append((pathlib.Path, "write_text", full))
    return _train(ds), "{out}/config.yaml"


_PATCHES: list[tuple[object, str, object]] = []

CASES: dict[str, tuple[Case, str]] = {
    "image/mask grid mismatch": (grid_mismatch, "does not match mask grid"),
    "image/mask affine mismatch": (affine_mismatch, "origin/direction differ"),
    "multi-label mask where binary is expected": (multi_label_mask, "pass --foreground"),
    "non-integer mask": (non_integer_mask, "non-integer values"),
    "every training mask empty": (every_mask_empty, "every training mask of fold 0 is empty"),
    "NaN in a training image": (nan_image, "NaN or Inf"),
    "Inf in an image to predict": (inf_image_to_predict, "NaN or Inf"),
    "2D training image": (image_2d, "expected a 3D volume, got 2D"),
    "4D training image": (image_4d, "expected a 3D volume, got 4D"),
    "2D image to predict": (image_2d_to_predict, "expected a 3D volume, got 2D"),
    "wrong channel suffix": (wrong_channel_suffix, "wrong channel suffix _0001"),
    "missing dataset.json": (missing_dataset_json, "missing dataset.json"),
    "malformed dataset.json": (malformed_dataset_json, "malformed JSON"),
    "duplicate case ids": (duplicate_case_ids, "duplicate case id 'phantom_001'"),
    "path traversal in a datalist": (path_traversal, "points outside the datalist's folder"),
    "truncated .nii.gz": (truncated_nifti, "cannot read volume"),
    "zero-size mask": (zero_size_mask, "file is empty (0 bytes)"),
    "zero-size image to predict": (zero_size_image_to_predict, "file is empty (0 bytes)"),
    "unknown config key": (unknown_config_key, "unknown config key 'train.learning_rate'"),
    "malformed config file": (malformed_config, "malformed YAML"),
    "config value out of range": (value_out_of_range, "out of range"),
    "fold that does not exist": (missing_fold, "does not exist"),
    "noisy label set that does not exist": (missing_noisy_set, "noisy label set 'never_made' not found"),
    "checkpoint of another backbone": (checkpoint_of_other_backbone, "checkpoint is for backbone 'unet'"),
    "checkpoint of another head layout": (checkpoint_of_other_heads, "checkpoint is for heads 'decoders'"),
    "checkpoint weights of another size": (checkpoint_of_other_size, "checkpoint weights do not fit"),
    "disk full while predicting": (disk_full_in_predict, "disk full while writing"),
    "disk full while training": (disk_full_in_train, "disk full while writing"),
}


@pytest.mark.parametrize(("make", "problem"), CASES.values(), ids=CASES.keys())
def test_bad_input_exits_2_with_one_line(
    make: Case, problem: str, dataset: Path, trained_run: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    out = tmp_path / "out"
    _PATCHES.clear()
    argv, names = make(dataset, run, tmp_path)
    argv = [a.replace("{out}", str(out)) for a in argv] + ["--quiet"]
    names = names.replace("{out}", str(out))
    for obj, attr, value in _PATCHES:
        monkeypatch.setattr(obj, attr, value)
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(argv)
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("svldrl: error: "), err
    assert problem in lines[0] and names in lines[0], lines[0]
    assert "Traceback" not in err
    assert not [
        w for w in caught if not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning))
    ], [str(w.message) for w in caught]
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))


def test_foreign_checkpoint_through_the_real_command(
    trained_run: Path, phantom_root: Path, tmp_path: Path
) -> None:
    """The same contract from a shell: ``python -m svldrl`` prints one line, also when torch would warn."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    _edit_run_config(run, "nets", "backbone", "swinunetr")
    _edit_run_config(run, "train", "patch", 64)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "svldrl",
            "predict",
            str(run),
            str(phantom_root / "imagesTs"),
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"svldrl: error: {run / 'checkpoint_final.pt'}: "
        "checkpoint is for backbone 'unet', this run uses 'swinunetr'"
    ]
    assert not (tmp_path / "out").exists()
