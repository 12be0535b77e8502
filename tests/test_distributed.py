"""Scale-out: two gloo ranks on CPU against one process; throughput knobs (amp, compile, cache, workers)."""

from __future__ import annotations

import csv
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from svldrl import config as C
from svldrl.data.dataset import load_dataset
from svldrl.engine.checkpoint import load_checkpoint
from svldrl.engine.device import memory_format
from svldrl.methods import get_method
from svldrl.runs import predict_folder, train
from tests.conftest import TINY

# The run of the tests below without the batch size, which each test sets.
# float32: two ranks equal one process exactly only without bf16 autocast (its rounding depends on the batch)
RUN = [s for s in TINY if not s.startswith("train.batch=")] + ["train.threads=1", "train.amp=false"]

# Runs ``svldrl.cli.main`` once per argv list under torchrun, then saves this rank's weights, so that the
# test can compare the replicas (rank 0's checkpoint alone would not show a diverged rank 1).
DRIVER = """
import json, sys
import torch
from svldrl.cli import main
from svldrl.engine import distributed as D
from svldrl.engine.trainer import Trainer

fit = Trainer.fit

def fit_and_dump(self):
    out = fit(self)
    state = dict(D.unwrap(self.network).state_dict())
    if getattr(self, "reward_conv", None) is not None:  # SVL-DRL's reward kernel K, learned with the network
        state.update({"reward_conv." + k: v for k, v in self.reward_conv.state_dict().items()})
    torch.save(state, f"{sys.argv[2]}/{self.out.name}.rank{self.rank}.pt")
    return out

Trainer.fit = fit_and_dump
for argv in json.loads(sys.argv[1]):
    if main(argv):
        sys.exit(1)
"""


def _rows(run: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(open(run / "metrics.csv")))


def _argv(dataset: Path, out: Path, method: str, *sets: str, quiet: bool = True) -> list[str]:
    argv = ["train", str(dataset), "--out", str(out), "--method", method, "--deterministic"]
    argv += ["--quiet"] if quiet else []
    for s in (*RUN, *sets):
        argv += ["--set", s]
    return argv


def test_two_ranks_match_one_process_with_the_same_global_batch(dataset: Path, tmp_path: Path) -> None:
    """2 ranks x batch 2 = 1 process x batch 4: the ranks crop disjoint halves of the same global batch.

    DDP (supervised), the explicit all-reduce (svldrl, whose heads change with the stage) and both together
    (tloss: DDP for the network, all-reduce for ``nu``) keep the replicas bitwise identical. The supervised
    run stops after 2 epochs and resumes to 3 on both ranks. Against one process the weights agree to float
    rounding (sums over the batch and across ranks are ordered differently); SGD keeps that rounding at
    1e-8. AdamW is not used for this comparison because its first steps turn rounding noise in near-zero
    gradient components into full learning-rate steps.
    """
    sup = ["train.batch=2", "train.optimizer=sgd", "train.scheduler=constant"]  # constant: stop and extend
    runs = {
        "sup": _argv(dataset, tmp_path / "sup", "supervised", *sup, "train.iterations=4", quiet=False),
        "sup-resumed": _argv(dataset, tmp_path / "sup", "supervised", *sup)
        + ["--resume", "--iterations", "6"],
        "rl": _argv(dataset, tmp_path / "rl", "svldrl", "train.batch=2"),
        "tloss": _argv(dataset, tmp_path / "tloss", "tloss", "train.batch=2"),
    }
    (tmp_path / "driver.py").write_text(DRIVER)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd = [*torchrun, str(tmp_path / "driver.py"), json.dumps(list(runs.values())), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]

    for name in ("sup", "rl", "tloss"):
        r0, r1 = (torch.load(tmp_path / f"{name}.rank{r}.pt") for r in (0, 1))
        assert all(torch.equal(r0[k], r1[k]) for k in r0), f"{name}: replicas diverged"
        final = load_checkpoint(tmp_path / name / "checkpoint_final.pt")["model"]
        assert all(torch.equal(final[k], r0[k]) for k in final), name
        assert [int(r["epoch"]) for r in _rows(tmp_path / name)] == [0, 1, 2]
    assert any(k.startswith("reward_conv.") for k in torch.load(tmp_path / "rl.rank0.pt"))
    # Progress and files come from rank 0 alone: one line per epoch, one TensorBoard event file per fit.
    assert proc.stderr.count("epoch 1/2 ") == 1 and "2 ranks x batch 2" in proc.stderr
    assert len(list((tmp_path / "sup" / "tensorboard").iterdir())) == 2

    cfg = C.load_config(overrides=[*RUN, *sup, "train.batch=4", "train.deterministic=true"])
    single = train(dataset, "clean", tmp_path / "single", cfg)
    one = load_checkpoint(single / "checkpoint_final.pt")["model"]
    two = torch.load(tmp_path / "sup.rank0.pt")
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=0, atol=1e-6, msg=k)
    for a, b in zip(_rows(single), _rows(tmp_path / "sup"), strict=True):
        for key in ("train_loss", "val_dice", "lr"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-5, abs=1e-6), key


# ------------------------------------------------------------------------------------ throughput knobs


def test_amp_bf16_trains_on_cpu(dataset: Path, tmp_path: Path) -> None:
    run = train(
        dataset, "clean", tmp_path / "amp", C.load_config(overrides=[*RUN, "train.batch=2", "train.amp=true"])
    )
    losses = [float(r["train_loss"]) for r in _rows(run)]
    assert all(0 < v < 10 for v in losses) and losses[-1] < losses[0]
    weights = load_checkpoint(run / "checkpoint_final.pt")["model"]
    assert all(v.dtype == torch.float32 for v in weights.values() if v.is_floating_point())


def test_memory_format_auto_is_channels_last_only_on_a_cpu_under_bf16() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert memory_format("auto", cpu, amp=True) == torch.channels_last_3d
    assert memory_format("auto", cpu, amp=False) == torch.contiguous_format
    assert memory_format("auto", cuda, amp=True) == torch.contiguous_format
    assert memory_format("channels_last", cuda, amp=False) == torch.channels_last_3d
    assert memory_format("contiguous", cpu, amp=True) == torch.contiguous_format


def _layouts(net: torch.nn.Module) -> set[bool]:
    """Whether each 3x3x3 convolution with several input channels holds its weights channels_last (for
    one input channel or a 1x1x1 kernel both layouts are the same strides)."""
    weights = [m.weight for m in net.modules() if isinstance(m, torch.nn.Conv3d)]
    return {
        w.is_contiguous(memory_format=torch.channels_last_3d) and not w.is_contiguous()
        for w in weights
        if w.shape[1] > 1 and w.shape[2] > 1
    }


@pytest.mark.parametrize(("method", "other"), [("coteaching", "peer"), ("mtcl", "teacher")])
def test_memory_format_reaches_every_network_of_a_method(
    dataset: Path, tmp_path: Path, method: str, other: str
) -> None:
    for fmt, channels_last in (("channels_last", True), ("contiguous", False)):
        cfg = C.load_config(
            overrides=[*RUN, "train.batch=2", f"method={method}", f"train.memory_format={fmt}"]
        )
        trainer = get_method(method)(cfg, load_dataset(dataset), tmp_path / fmt)
        assert _layouts(trainer.network) == _layouts(getattr(trainer, other)) == {channels_last}


def test_channels_last_trains_what_contiguous_trains(dataset: Path, tmp_path: Path) -> None:
    """The layout changes the kernels' summation order, not the model: same losses, same weights (float32)."""
    runs = {
        fmt: train(
            dataset,
            "clean",
            tmp_path / fmt,
            C.load_config(overrides=[*RUN, "train.batch=2", f"train.memory_format={fmt}"]),
        )
        for fmt in ("contiguous", "channels_last")
    }
    for ra, rb in zip(*(_rows(run) for run in runs.values()), strict=True):
        assert float(ra["train_loss"]) == pytest.approx(float(rb["train_loss"]), rel=1e-5)
    a, b = (load_checkpoint(run / "checkpoint_final.pt")["model"] for run in runs.values())
    diff = torch.cat([(a[k] - b[k]).abs().flatten() for k in a if a[k].is_floating_point()])
    # AdamW's first steps move a weight by up to lr (3e-3) whatever its gradient's size, so a gradient near 0
    # that rounds differently moves a few weights apart by a fraction of lr; the rest differ by rounding alone
    assert diff.max() < 2e-3 and (diff > 1e-4).float().mean() < 0.01


def test_compile_trains_and_saves_plain_weights(dataset: Path, tmp_path: Path, monkeypatch) -> None:
    """``train.compile`` wraps the network in torch.compile; checkpoints keep the plain parameter names.

    Inductor's C++ code generation takes about 90 s on two shared cores, so this test traces with the
    ``aot_eager`` backend (same graph capture, no code generation); ``test_compile_with_inductor`` runs
    the real backend when ``SVLDRL_TEST_INDUCTOR=1``.
    """
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    cfg = C.load_config(overrides=[*RUN, "train.batch=2", "train.compile=true", "train.iterations=2"])
    run = train(dataset, "clean", tmp_path / "compiled", cfg)
    weights = load_checkpoint(run / "checkpoint_final.pt")["model"]
    assert not any("_orig_mod" in k or k.startswith("module.") for k in weights)
    assert predict_folder(run, dataset / "imagesTs", tmp_path / "pred")


@pytest.mark.skipif(
    os.environ.get("SVLDRL_TEST_INDUCTOR") != "1", reason="inductor compiles for ~90 s on CPU"
)
def test_compile_with_inductor(dataset: Path, tmp_path: Path) -> None:
    cfg = C.load_config(overrides=[*RUN, "train.batch=2", "train.compile=true", "train.iterations=2"])
    run = train(dataset, "clean", tmp_path / "compiled", cfg)
    assert float(_rows(run)[-1]["train_loss"]) > 0


def test_workers_and_uncached_images_train_the_same_weights(dataset: Path, tmp_path: Path) -> None:
    """Patches are drawn from per-patch seeds, so DataLoader workers and reading images per access
    (``data.cache: none``) change where a patch is made, not which patch."""
    base = [*RUN, "train.batch=2", "train.iterations=4", "train.deterministic=true"]
    ref = train(dataset, "clean", tmp_path / "ref", C.load_config(overrides=base))
    a = load_checkpoint(ref / "checkpoint_final.pt")["model"]
    for name, extra in (("workers", "data.workers=1"), ("uncached", "data.cache=none")):
        run = train(dataset, "clean", tmp_path / name, C.load_config(overrides=[*base, extra]))
        b = load_checkpoint(run / "checkpoint_final.pt")["model"]
        assert all(torch.equal(a[k], b[k]) for k in a), name
