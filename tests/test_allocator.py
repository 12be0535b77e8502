"""``train.keep_freed_memory``: large CPU tensors stop costing fresh page faults on every allocation."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
if sys.argv[1] == "keep":
    from svldrl.engine.allocator import keep_freed_memory
    assert keep_freed_memory() and keep_freed_memory()  # idempotent
for _ in range(10):  # 32 MiB blocks until the heap has grown to hold them
    torch.ones(8 * 1024 * 1024)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.ones(8 * 1024 * 1024)  # allocated, written, freed: an activation of a training step
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")
def test_keep_freed_memory_removes_the_page_faults_of_reallocation() -> None:
    system, kept = _faults("system"), _faults("keep")
    # 20 x 32 MiB = 160k pages: glibc maps and faults them in afresh each time; kept, they are reused
    assert system > 100_000
    assert kept < system / 20


def test_trainer_applies_it_on_cpu_only_when_configured(monkeypatch: pytest.MonkeyPatch, dataset) -> None:
    from svldrl import config as C
    from svldrl.data.dataset import load_dataset
    from svldrl.engine import trainer as T
    from tests.conftest import TINY

    calls = []
    monkeypatch.setattr(T, "keep_freed_memory", lambda: calls.append(1) or True)
    ds = load_dataset(dataset)
    for flag in (True, False):
        cfg = C.load_config(overrides=[*TINY, f"train.keep_freed_memory={str(flag).lower()}"])
        T.Trainer(cfg, ds, dataset / "run_unused")
    assert calls == [1]
