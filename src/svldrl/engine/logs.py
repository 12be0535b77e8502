"""Run logs: the metric history (CSV, rewritten atomically from the history kept in checkpoints),
TensorBoard events, ``progress.png`` and the progress line of each epoch."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from svldrl.data.io import atomic_write, write_text
from svldrl.reporter import fmt_number, fmt_seconds


def write_history_csv(path: Path, history: list[dict[str, Any]]) -> None:
    """One row per epoch; columns are the union of keys in first-seen order."""
    columns: list[str] = []
    for row in history:
        for key in row:
            if key not in columns:
                columns.append(key)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, restval="")
    writer.writeheader()
    for row in history:
        writer.writerow({k: fmt_number(v) if isinstance(v, float) else v for k, v in row.items()})
    write_text(path, buf.getvalue())


def plot_progress(
    path: Path, history: list[dict[str, Any]], title: str, val_masks: str = "given masks"
) -> None:
    """Loss and validation Dice against epoch (nnU-Net's progress.png); ``val_masks``: what validation measured
    against, for the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.plot(epochs, [r.get("train_loss", math.nan) for r in history], color="tab:blue", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    val = [(r["epoch"], r["val_dice"]) for r in history if _isnum(r.get("val_dice"))]
    if val:
        ax2.plot(*zip(*val), color="tab:green", marker="o", ms=3, label=f"val Dice ({val_masks})")
    ax2.set_ylabel("validation Dice")
    ax2.set_ylim(0, 1)
    stages = [(r["epoch"], r["stage"]) for r in history if "stage" in r]
    for (e0, s0), (_, s1) in zip(stages, stages[1:]):
        if s1 != s0:
            ax.axvline(e0 + 0.5, color="grey", ls="--", lw=0.8)
            ax.text(e0 + 0.6, ax.get_ylim()[1], f"stage {s1}", va="top", fontsize=8, color="grey")
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="lower left", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def _isnum(v: Any) -> bool:
    return isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))


class TensorBoard:
    """Scalars to TensorBoard; on resume, events after the restored iteration are purged so curves do not fork."""

    def __init__(self, log_dir: Path, purge_step: int | None = None, enabled: bool = True) -> None:
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def scalars(self, values: dict[str, Any], step: int) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            if _isnum(value):
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


def write_epoch_logs(
    out: Path, history: list[dict[str, Any]], iteration: int, tb: TensorBoard, title: str, val_masks: str
) -> None:
    """After an epoch (its row last in ``history``, ``iteration`` steps done): ``metrics.csv``, ``progress.png``
    and its TensorBoard scalars."""
    write_history_csv(out / "metrics.csv", history)
    plot_progress(out / "progress.png", history, title, val_masks)
    tb.scalars({k: v for k, v in history[-1].items() if k not in ("epoch", "iteration")}, iteration)


def epoch_line(
    row: dict[str, Any], epoch: int, epochs: int, iteration: int, iterations: int, eta: float
) -> str:
    """The progress line of epoch ``epoch`` (0-based) that ended with ``row``."""
    vd = row["val_dice"]
    return (
        f"epoch {epoch + 1}/{epochs}  it {iteration}/{iterations}  "
        f"loss {row.get('train_loss', math.nan):.4f}  "
        f"val Dice{' (trusted)' if 'val_masks' in row else ''} {'-' if math.isnan(vd) else f'{vd:.4f}'}"
        + (f"  stage {row['stage']}" if "stage" in row else "")
        + f"  ETA {fmt_seconds(eta)}"
    )
