"""Shared fixtures: a tiny phantom dataset (32^3) made once per session, and a tiny config."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread for every test: on a 2-core machine shared with other jobs, two threads spin
    against each other and a training step gets many times slower. A test that changes it gets it back."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY = [
    "train.patch=32",
    "train.batch=2",
    "train.steps_per_epoch=2",
    "train.iterations=6",
    "nets.features=[4,8,16,32]",
    "infer.sw_batch=1",
    "infer.overlap=0.0",
]


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from svldrl.data.synth import synthesize

    root = tmp_path_factory.mktemp("phantoms") / "Dataset001_Phantom"
    synthesize(root, cases=6, size=32, seed=3, test_cases=2)
    return root


@pytest.fixture()
def dataset(phantom_root: Path, tmp_path: Path) -> Path:
    """A private copy per test, so tests that write noisy masks or splits do not see each other."""
    dst = tmp_path / phantom_root.name
    shutil.copytree(phantom_root, dst)
    return dst


class Killed(Exception):
    """A simulated kill of a training run."""


def kill_at_second_validation(monkeypatch: pytest.MonkeyPatch, trainer_cls: type, start) -> None:
    """Run ``start()`` (a training of ``trainer_cls``) killed at its second validation, after the first epoch's
    checkpoint; ``trainer_cls.validate`` is itself again afterwards."""
    original, calls = trainer_cls.validate, {"n": 0}

    def crash_on_second_validation(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Killed
        return original(self)

    monkeypatch.setattr(trainer_cls, "validate", crash_on_second_validation)
    with pytest.raises(Killed):
        start()
    monkeypatch.setattr(trainer_cls, "validate", original)
