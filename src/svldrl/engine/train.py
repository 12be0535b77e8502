"""Entry point for training from Python: dataset path + config -> run folder."""

from __future__ import annotations

from pathlib import Path

from svldrl.data.dataset import load_dataset
from svldrl.methods import get_method
from svldrl.reporter import QUIET, Reporter


def train(
    dataset: str | Path,
    labels: str,
    out: str | Path,
    cfg: dict,
    resume: bool = False,
    reporter: Reporter = QUIET,
) -> Path:
    """Train ``cfg["method"]`` on ``dataset`` with the ``labels`` masks ("clean" or "noisy/NAME")."""
    ds = load_dataset(dataset, labels=labels)
    trainer_cls = get_method(cfg["method"])
    trainer = trainer_cls(cfg, ds, out, reporter=reporter, resume=resume)
    return trainer.fit()
